"""Search throughput of the hash store vs raw FAISS vs the memory-bandwidth bound.

For every code length (16/32/64 bits) it fills a :class:`index.store.HashStore` with ``--n`` random
items, then measures queries per second, one query per call ("single") and ``--batch`` queries per
call ("batched"), for

* the store's ``search`` (validation, locking, exact tie resolution included) with its default
  path, exact multi-index hashing (:mod:`index.mih`, sub-linear: it falls back to the scan for
  queries where probing would cost more), and with MIH turned off (the flat scan),
* a raw ``faiss.IndexBinaryFlat`` holding the same codes (its native code size), with FAISS's
  default OpenMP thread count and with one thread,
* the bound: ``copy bandwidth / bytes of codes scanned per query`` (``n * bits / 8``), where the
  bandwidth is measured in the same run by a large ``numpy.copyto`` (bytes copied per second).

A batched call may beat the per-query bound because the scan is blocked over queries (the codes are
read once per block of queries, from cache). MIH reads only a few buckets instead of all codes, so
its ratio to this full-scan bound can exceed 1.0 by far: the bound is the limit of a *scan*.

Usage::

    nice -n 10 python bench/search.py            # 1M items, ~3-5 minutes on 2 cores
    python bench/search.py --n 100000 --seconds 0.5
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index import HashStore  # noqa: E402
from index.codes import BITS_CHOICES  # noqa: E402
from index.flat import FaissFlatIndex  # noqa: E402


def cpu_model() -> str:
    """``lscpu`` model name and core count (falls back to ``platform``)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def copy_bandwidth(nbytes: int = 512 << 20, repeats: int = 5) -> float:
    """Best-of-``repeats`` ``np.copyto`` bandwidth in bytes copied per second."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def rate(fn: Callable[[int], int], seconds: float) -> float:
    """Queries per second of ``fn(i) -> queries done``, called until ``seconds`` have passed (best of 3)."""
    fn(0)  # warm-up
    best = 0.0
    for _ in range(3):
        done, calls, t0 = 0, 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds / 3 or calls < 2:
            done += fn(calls)
            calls += 1
        best = max(best, done / elapsed)
    return best


def make_codes(rng: np.random.Generator, data: str, n: int, bits: int, seed: int = 0) -> np.ndarray:
    """``n`` random codes, or codes of 100 fixed clusters with 3% of the bits flipped."""
    if data == "random":
        return rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
    centres = np.random.default_rng(seed + bits).integers(0, 2, size=(100, bits), dtype=np.uint8)
    noisy = centres[rng.integers(0, 100, size=n)] ^ (rng.random((n, bits)) < 0.03)
    return np.packbits(noisy, axis=1)


def fill_store(store: HashStore, codes: dict[int, np.ndarray], chunk: int = 50_000) -> None:
    """Add ``len`` items of modality ``image`` carrying all three code lengths."""
    n = len(codes[64])
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        store.add(
            [
                {"modality": "image", "name": f"i{j}", "codes": {b: codes[b][j] for b in BITS_CHOICES}}
                for j in range(start, stop)
            ]
        )


def measure(
    store: HashStore,
    raw: faiss.IndexBinaryFlat,
    flat: FaissFlatIndex,
    q: np.ndarray,
    bits: int,
    size: int,
    k: int,
    seconds: float,
    threads: int,
) -> tuple[float, float, float, float, float, float]:
    """(store q/s with MIH, store q/s scanning, raw FAISS q/s, raw FAISS q/s on 1 thread,
    share of MIH queries handed to the scan, share of scanned queries needing the tie band fetch)."""
    nq = len(q) // size * size

    def ours(i: int) -> int:
        s = i * size % nq
        store.search("image", q[s : s + size], bits, k)
        return size

    def faiss_raw(i: int) -> int:
        s = i * size % nq
        raw.search(q[s : s + size], k)
        return size

    def one_pass() -> None:
        for i in range(nq // size):
            ours(i)

    flat.mih_enabled = True
    mih_qps = rate(ours, seconds)
    flat.mih_queries = flat.mih_fallbacks = 0
    one_pass()
    mih_fallback = flat.mih_fallbacks / nq
    flat.mih_enabled = False
    scan_qps = rate(ours, seconds)
    flat.band_fallbacks = 0
    one_pass()  # share of queries whose k-th distance band overflowed the candidates
    tie_fallback = flat.band_fallbacks / nq
    flat.mih_enabled = True
    raw_qps = rate(faiss_raw, seconds)
    faiss.omp_set_num_threads(1)
    raw1_qps = rate(faiss_raw, seconds)
    faiss.omp_set_num_threads(threads)
    return mih_qps, scan_qps, raw_qps, raw1_qps, mih_fallback, tie_fallback


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="items per code length (default 1M)")
    parser.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--batch", type=int, default=64, help="queries per batched call (default 64)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per cell (default 3)")
    parser.add_argument(
        "--threads", type=int, default=1, help="store's OpenMP threads for batches (default 1, 0 = all cores)"
    )
    parser.add_argument(
        "--data",
        choices=("random", "clustered"),
        default="random",
        help="random codes, or 100 clusters with 3%% bit flips (like trained hash codes: many ties)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--bandwidth",
        type=float,
        default=0.0,
        help="copy bandwidth in GB/s for the bound instead of the measured one (e.g. an idle-machine figure)",
    )
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    threads = faiss.omp_get_max_threads()
    bandwidth = copy_bandwidth()
    measured_bandwidth = bandwidth
    if args.bandwidth > 0:
        bandwidth = args.bandwidth * 1e9
    print(
        f"machine: {cpu_model()}; python {platform.python_version()}, numpy {np.__version__}, "
        f"faiss {faiss.__version__} (OpenMP threads {faiss.omp_get_max_threads()})"
    )
    print(
        f"copy bandwidth (np.copyto 512 MiB, bytes copied/s): {measured_bandwidth / 1e9:.2f} GB/s measured, "
        f"{bandwidth / 1e9:.2f} GB/s used for the bound"
    )
    print(f"n = {args.n:,} {args.data} items, k = {args.k}, batch = {args.batch}, store threads = {args.threads}\n")

    codes = {b: make_codes(rng, args.data, args.n, b) for b in BITS_CHOICES}
    if args.data == "random":
        queries = {b: rng.integers(0, 256, size=(1024, b // 8), dtype=np.uint8) for b in BITS_CHOICES}
    else:  # queries from the same distribution as the database
        queries = {b: make_codes(rng, args.data, 1024, b, seed=args.seed) for b in BITS_CHOICES}
    rows = []
    with tempfile.TemporaryDirectory(prefix="cmah-bench-") as tmp:
        t0 = time.perf_counter()
        with HashStore(Path(tmp), snapshot_every=0, threads=args.threads) as store:
            fill_store(store, codes)
            print(f"filled the store in {time.perf_counter() - t0:.1f} s")
            for bits in BITS_CHOICES:
                q, nb = queries[bits], bits // 8
                raw = faiss.IndexBinaryFlat(bits)
                raw.add(codes[bits])
                flat = store.backend.flat_index("image", bits)  # type: ignore[attr-defined]
                builds = []
                for _ in range(3):  # build time of the MIH tables from the FAISS index (ids + codes copied)
                    t0 = time.perf_counter()
                    tables = flat.refresh_mih()
                    builds.append(time.perf_counter() - t0)
                print(
                    f"  {bits}-bit MIH tables: {tables.nbytes / 1e6:.1f} MB, built in {min(builds) * 1e3:.0f} ms "
                    f"(best of 3; {', '.join(f'{b * 1e3:.0f}' for b in builds)} ms)",
                    flush=True,
                )
                bound = bandwidth / (args.n * nb)
                for mode, size in (("single", 1), ("batched", args.batch)):
                    cell = measure(store, raw, flat, q, bits, size, args.k, args.seconds, threads)
                    rows.append((bits, mode, *cell, bound))
                    print(
                        f"  {bits}-bit {mode}: store {cell[0]:,.0f} q/s (MIH), {cell[1]:,.0f} q/s (scan), "
                        f"raw FAISS {cell[2]:,.0f} q/s ({cell[3]:,.0f} q/s on 1 thread)",
                        flush=True,
                    )
                del raw

    print(
        f"\n| bits | mode | store q/s (MIH) | store q/s (scan) | raw FAISS q/s ({threads} thr / 1 thr) | bound q/s "
        "| MIH / bound | scan / bound | best raw / bound | MIH / scan | MIH fallbacks | tie fallbacks (scan) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for bits, mode, mih_qps, scan_qps, raw_qps, raw1_qps, mih_fb, tie_fb, bound in rows:
        label = mode if mode == "single" else f"batched ({args.batch})"
        best = max(raw_qps, raw1_qps)
        print(
            f"| {bits} | {label} | {mih_qps:,.0f} | {scan_qps:,.0f} | {raw_qps:,.0f} / {raw1_qps:,.0f} | {bound:,.0f} "
            f"| **{mih_qps / bound:.2f}** | {scan_qps / bound:.2f} | {best / bound:.2f} | {mih_qps / scan_qps:.1f} "
            f"| {mih_fb:.1%} | {tie_fb:.1%} |"
        )


if __name__ == "__main__":
    main()
