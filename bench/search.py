"""Search throughput of the hash store vs raw FAISS vs the memory-bandwidth bound.

For every code length (16/32/64 bits) it fills a :class:`index.store.HashStore` with ``--n`` random
items, then measures queries per second, one query per call ("single") and ``--batch`` queries per
call ("batched"), for

* the store's ``search`` (validation, locking, exact tie resolution included) with its default
  path: exact multi-index hashing (:mod:`index.mih`, sub-linear) in front of the compiled scan
  kernel (:mod:`index.scan_kernel`; MIH answers a query when it is expected, then measured, to be
  faster), and with MIH turned off (the kernel alone); then the same two with FAISS's flat scan
  instead of the kernel (``scan="faiss"``, the fallback when numba is missing),
* the raw kernel (:func:`index.scan_kernel.search` on the store's arrays, no store overhead) on all
  of numba's threads and on one thread,
* a raw ``faiss.IndexBinaryFlat`` holding the same codes (its native code size), with FAISS's
  default OpenMP thread count and with one thread,
* the bound: ``copy bandwidth / bytes of codes scanned per query`` (``n * bits / 8``), where the
  bandwidth is measured in the same run by a large ``numpy.copyto`` (bytes copied per second).

A batched call may beat the per-query bound because the scan is blocked over queries (the codes are
read once per block of queries, from cache). MIH reads only a few buckets instead of all codes, so
its ratio to this full-scan bound can exceed 1.0 by far: the bound is the limit of a *scan*.

The store's kernel runs on ``--threads`` threads (default 1, the store's default; 0 = all cores):
it splits single queries over database chunks and batches over groups of queries.

Usage::

    nice -n 10 python bench/search.py            # 1M items, ~5-8 minutes on 2 cores
    python bench/search.py --n 100000 --seconds 0.5
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from index import HashStore
from index.codes import BITS_CHOICES, WORD_DTYPES
from index.flat import FaissFlatIndex, load_scan_kernel

KERNEL = load_scan_kernel()


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


@dataclass
class Cell:
    """Queries per second of one (code length, mode) and the path shares; ``nan`` where not measured."""

    default: float = math.nan  # store defaults: MIH in front of the kernel
    kernel: float = math.nan  # store, MIH off: the kernel alone
    mih_faiss: float = math.nan  # store, MIH in front of FAISS's scan
    faiss_scan: float = math.nan  # store, MIH off: FAISS's scan + tie resolution
    raw_kernel: float = math.nan  # index.scan_kernel.search, all numba threads
    raw_kernel1: float = math.nan  # ... on one thread
    raw_faiss: float = math.nan  # faiss.IndexBinaryFlat, FAISS's default threads
    raw_faiss1: float = math.nan  # ... on one thread
    mih_share: float = math.nan  # share of the queries MIH answered with the defaults
    mih_fallback: float = math.nan  # share of MIH queries handed to the scan (MIH + FAISS)
    tie_fallback: float = math.nan  # share of FAISS-scanned queries needing the tie band fetch


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
) -> Cell:
    """Every column of one (code length, mode) cell; ``size`` queries per call."""
    nq = len(q) // size * size
    cell = Cell()

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

    def store_path(scan: str, mih: bool) -> float:
        flat.scan = scan
        flat.mih_enabled = mih
        return rate(ours, seconds)

    if KERNEL is not None:
        cell.default = store_path("numba", True)
        flat.mih_queries = flat.mih_fallbacks = 0
        one_pass()
        cell.mih_share = flat.mih_queries / nq
        cell.kernel = store_path("numba", False)
        words, ids = kernel_arrays(flat)
        qw = np.ascontiguousarray(q[:, : bits // 8]).view(WORD_DTYPES[bits // 8])[:, 0]

        def kernel_raw(n_threads: int) -> Callable[[int], int]:
            def run(i: int) -> int:
                s = i * size % nq
                KERNEL.search(words, ids, qw[s : s + size], k, ascending=True, threads=n_threads)
                return size

            return run

        cell.raw_kernel = rate(kernel_raw(KERNEL.max_threads()), seconds)
        cell.raw_kernel1 = rate(kernel_raw(1), seconds)
    cell.mih_faiss = store_path("faiss", True)
    flat.mih_queries = flat.mih_fallbacks = 0
    one_pass()
    cell.mih_fallback = flat.mih_fallbacks / max(1, flat.mih_queries + flat.mih_fallbacks)
    cell.faiss_scan = store_path("faiss", False)
    flat.band_fallbacks = 0
    one_pass()  # share of queries whose k-th distance band overflowed the candidates
    cell.tie_fallback = flat.band_fallbacks / nq
    flat.scan, flat.mih_enabled = "auto", True
    cell.raw_faiss = rate(faiss_raw, seconds)
    faiss.omp_set_num_threads(1)
    cell.raw_faiss1 = rate(faiss_raw, seconds)
    faiss.omp_set_num_threads(threads)
    return cell


def kernel_arrays(flat: FaissFlatIndex) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the codes (as words) and ids of a flat index, in storage order."""
    words = flat.codes().view(WORD_DTYPES[flat.code_bytes])[:, 0].copy()
    return words, flat.ids()


def fmt(x: float, spec: str = ",.0f") -> str:
    return "-" if math.isnan(x) else format(x, spec)


def ratio(x: float, bound: float) -> str:
    return "-" if math.isnan(x) else f"{x / bound:.2f}"


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
    if KERNEL is not None:
        import numba

        KERNEL.warm_up(np.uint64, parallel=KERNEL.max_threads() > 1)  # starts numba's thread pool
        kernel_info = f"numba {numba.__version__} (threads {KERNEL.max_threads()}, layer {KERNEL.threading_layer()})"
    else:
        kernel_info = "numba not installed: no kernel columns"
    print(
        f"machine: {cpu_model()}; python {platform.python_version()}, numpy {np.__version__}, "
        f"faiss {faiss.__version__} (OpenMP threads {faiss.omp_get_max_threads()}), {kernel_info}"
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
                    rows.append((bits, mode, cell, bound))
                    print(
                        f"  {bits}-bit {mode}: store {fmt(cell.default)} q/s (defaults: MIH + kernel, "
                        f"MIH {fmt(cell.mih_share, '.0%')}), {fmt(cell.kernel)} (kernel), "
                        f"{fmt(cell.mih_faiss)} (MIH + FAISS), {fmt(cell.faiss_scan)} (FAISS scan); "
                        f"raw kernel {fmt(cell.raw_kernel)} / {fmt(cell.raw_kernel1)} (1 thread), "
                        f"raw FAISS {fmt(cell.raw_faiss)} / {fmt(cell.raw_faiss1)} (1 thread)",
                        flush=True,
                    )
                del raw

    kthreads = KERNEL.max_threads() if KERNEL is not None else 0
    print(
        "\n| bits | mode | store q/s (defaults: MIH + kernel) | store q/s (kernel) | store q/s (MIH + FAISS) "
        f"| store q/s (FAISS scan) | raw kernel q/s ({kthreads} thr / 1 thr) | raw FAISS q/s ({threads} thr / 1 thr) "
        "| bound q/s | defaults / bound | kernel / bound | MIH + FAISS / bound | FAISS scan / bound "
        "| best raw kernel / bound | MIH share | MIH fallbacks (FAISS) | tie fallbacks (FAISS scan) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for bits, mode, c, bound in rows:
        label = mode if mode == "single" else f"batched ({args.batch})"
        best_kernel = max(c.raw_kernel, c.raw_kernel1) if KERNEL is not None else math.nan
        print(
            f"| {bits} | {label} | {fmt(c.default)} | {fmt(c.kernel)} | {fmt(c.mih_faiss)} | {fmt(c.faiss_scan)} "
            f"| {fmt(c.raw_kernel)} / {fmt(c.raw_kernel1)} | {fmt(c.raw_faiss)} / {fmt(c.raw_faiss1)} | {bound:,.0f} "
            f"| **{ratio(c.default, bound)}** | {ratio(c.kernel, bound)} | {ratio(c.mih_faiss, bound)} "
            f"| {ratio(c.faiss_scan, bound)} | {ratio(best_kernel, bound)} | {fmt(c.mih_share, '.0%')} "
            f"| {fmt(c.mih_fallback, '.1%')} | {fmt(c.tie_fallback, '.1%')} |"
        )


if __name__ == "__main__":
    main()
