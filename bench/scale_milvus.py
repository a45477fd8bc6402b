"""Search throughput of a search replica against a real Milvus server, against the in-process store.

Starts a Milvus standalone server on this machine (the PyPI package ``milvus``, 2.3.5; see the ``dev`` extra),
fills one collection of 64-bit codes with ``--n`` random codes, then measures single-query searches (k=10):

* ``replica, BIN_FLAT``: :class:`index.milvus_replica.ReplicaStore.search` -- what a search replica runs:
  exact, ties resolved (``k + tie_margin`` candidates from Milvus, band fetches when a tie band overflows);
* ``raw Milvus, BIN_FLAT``: one pymilvus ``search`` per query, k=10, no tie resolution;
* ``raw Milvus, BIN_IVF_FLAT``: the same collection re-indexed with ``nlist`` clusters, at several ``nprobe``,
  with its recall@10 against the exact result (distance-aware: a hit at the k-th distance counts);
* ``in-process store``: :class:`index.store.HashStore` (FAISS backend: MIH + the compiled scan) with the same
  codes, single queries on one thread (the service's default);
* ``1 / 2 / 3 replicas``: as many processes, each running the replica's search loop against the one server,
  for the same wall time: their summed q/s.

Everything (Milvus's server included) shares the machine's cores; run it under ``with-training-paused``.

Usage::

    python bench/scale_milvus.py --n 1000000 --seconds 10
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from index import HashStore
from index.exact import brute_force_search
from index.milvus_replica import ReplicaStore
from index.milvus_store import collection_name

BITS = 64
K = 10


def start_server(base: Path):  # noqa: ANN201
    from milvus import MilvusServer

    server = MilvusServer()
    server.set_base_dir(str(base))
    t0 = time.perf_counter()
    server.start()
    print(f"Milvus {server.config.get('proxy_port')} started in {time.perf_counter() - t0:.1f} s", flush=True)
    return server


def fill(uri: str, codes: np.ndarray) -> None:
    """One BIN_FLAT collection ``cmah_points_64`` holding ``codes`` with ids 1..n, as the indexer makes it."""
    from pymilvus import Collection, DataType, MilvusClient, connections

    c = MilvusClient(uri)
    name = collection_name("points", BITS)
    if c.has_collection(name):
        c.drop_collection(name)
    schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("code", DataType.BINARY_VECTOR, dim=BITS)
    c.create_collection(name, schema=schema, consistency_level="Strong")
    t0 = time.perf_counter()
    connections.connect("bench-fill", uri=uri)
    coll = Collection(name, using="bench-fill")  # column-wise inserts: ~10x faster than MilvusClient's rows
    for s in range(0, len(codes), 250_000):
        chunk = codes[s : s + 250_000]
        coll.insert([list(range(s + 1, s + 1 + len(chunk))), [row.tobytes() for row in chunk]])
    c.flush(name)
    print(f"inserted {len(codes):,} codes in {time.perf_counter() - t0:.1f} s", flush=True)
    index(c, name, "BIN_FLAT", {})
    c.close()


def index(c, name: str, kind: str, params: dict) -> None:  # noqa: ANN001
    t0 = time.perf_counter()
    c.release_collection(name)
    for idx in c.list_indexes(name):
        c.drop_index(name, idx)
    p = c.prepare_index_params()
    p.add_index(field_name="code", index_type=kind, metric_type="HAMMING", params=params)
    c.create_index(name, p, sync=True)
    c.load_collection(name)
    print(f"{kind} {params} built and loaded in {time.perf_counter() - t0:.1f} s", flush=True)


def rate(fn, queries: np.ndarray, seconds: float) -> float:  # noqa: ANN001
    fn(queries[0])  # warm
    n, t0 = 0, time.perf_counter()
    while (time.perf_counter() - t0) < seconds:
        fn(queries[n % len(queries)])
        n += 1
    return n / (time.perf_counter() - t0)


def _replica_loop(uri: str, queries: np.ndarray, seconds: float, start: float, out) -> None:  # noqa: ANN001
    store = ReplicaStore(uri)
    while time.time() < start:
        time.sleep(0.01)
    out.put(rate(lambda q: store.search("points", q, BITS, K), queries, seconds))
    store.close()


def replicas(uri: str, queries: np.ndarray, seconds: float, n: int) -> float:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start = time.time() + 8  # every process connected before the clock starts
    procs = [ctx.Process(target=_replica_loop, args=(uri, queries, seconds, start, out)) for _ in range(n)]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=seconds + 120) for _ in procs)
    for p in procs:
        p.join()
    return total


def recall(found_d: np.ndarray, exact_d: np.ndarray) -> float:
    """Distance-aware recall@k: hits within the k-th exact distance, over k (per query, averaged)."""
    kth = exact_d[:, -1:]
    return float(np.mean(np.minimum((found_d <= kth).sum(axis=1), K) / K))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, nargs="*", default=[8, 32, 128], help="none: no BIN_IVF_FLAT")
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--skip-local", action="store_true", help="no in-process store (its fill is slow at 10M)")
    ap.add_argument("--check", type=int, default=20, help="queries checked against brute force")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(args.n, BITS // 8), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(args.queries, BITS // 8), dtype=np.uint8)
    print(f"{args.n:,} random {BITS}-bit codes, {args.queries} queries, k={K}, {os.cpu_count()} cores", flush=True)
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        if not args.skip_local:
            rows.append(local(tmpdir, codes, queries, args.seconds))
        server = start_server(tmpdir / "milvus")
        try:
            uri = f"http://127.0.0.1:{server.listen_port}"
            fill(uri, codes)
            measure_milvus(uri, codes, queries, args, rows)
        finally:
            server.stop()
    print(f"\n| search (k={K}, one query per call) | q/s | result |\n| --- | --- | --- |")
    for what, qps, res in rows:
        print(f"| {what} | {qps:,.0f} | {res} |")


def local(tmpdir: Path, codes: np.ndarray, queries: np.ndarray, seconds: float) -> tuple[str, float, str]:
    with HashStore(tmpdir / "store") as store:  # the in-process reference point
        t0 = time.perf_counter()
        for s in range(0, len(codes), 100_000):
            chunk = codes[s : s + 100_000]
            store.add([{"modality": "points", "name": "x", "codes": {BITS: c}} for c in chunk])
        store.search("points", queries[0], BITS, K)
        print(f"in-process store filled in {time.perf_counter() - t0:.1f} s", flush=True)
        return ("in-process store (MIH + scan, 1 thread)",
                rate(lambda q: store.search("points", q, BITS, K), queries, seconds), "exact")


def measure_milvus(uri: str, codes: np.ndarray, queries: np.ndarray, args: argparse.Namespace, rows: list) -> None:
    rep = ReplicaStore(uri)
    ids = np.arange(1, len(codes) + 1)
    exact_d = []
    for q in queries[: args.check]:
        exact = brute_force_search(q, codes, ids, K)
        assert np.array_equal(rep.search("points", q, BITS, K)[0], exact[0]), "the replica's search is not exact"
        exact_d.append(exact[0][0])
    rows.append(("replica, BIN_FLAT (exact, ties resolved)",
                 rate(lambda q: rep.search("points", q, BITS, K), queries, args.seconds), "exact"))
    client = rep._client
    name = collection_name("points", BITS)

    def raw(params: dict, consistency: str = "Strong"):  # noqa: ANN202
        return lambda q: client.search(name, data=[q.tobytes()], anns_field="code", limit=K,
                                       search_params={"metric_type": "HAMMING", "params": params},
                                       consistency_level=consistency)

    for level in ("Strong", "Bounded", "Eventually"):
        rows.append((f"raw Milvus, BIN_FLAT, consistency {level}", rate(raw({}, level), queries, args.seconds),
                     "exact"))
    for n in args.replicas:
        rows.append((f"{n} replica process(es), BIN_FLAT, summed", replicas(uri, queries, args.seconds, n), "exact"))
    if args.nprobe:
        index(client, name, "BIN_IVF_FLAT", {"nlist": args.nlist})
        checked = queries[: len(exact_d)]
        for nprobe in args.nprobe:
            found = np.array([[h["distance"] for h in raw({"nprobe": nprobe})(q)[0]] for q in checked])
            rows.append((f"raw Milvus, BIN_IVF_FLAT nlist={args.nlist} nprobe={nprobe}",
                         rate(raw({"nprobe": nprobe}), queries, args.seconds),
                         f"recall@10 {recall(found, np.stack(exact_d)):.3f}"))
    rep.close()


if __name__ == "__main__":
    main()
