"""Filtered search at scale: a selective filter (1 % of the items) and a broad one (50 %) against the
unfiltered search, measured in the same run on the same store.

It fills one :class:`index.store.HashStore` (in-process backend, the defaults: MIH in front of the
compiled scan kernel) with ``--n`` point items with random 16-, 32- and 64-bit codes; 1 % of them have
the label ``sel`` (the selective filter ``labels=["sel"]``), half of them, independently, the source
``job:half`` (the broad filter ``sources=["job:half"]``). For every code length it times single-query
searches (one query per call, as the HTTP service makes them), ``k`` = 10, cycling over ``--queries``
random query codes:

* ``backend``: the backend's own unfiltered search, without the store (what the numba/MIH paths cost);
* ``unfiltered``: ``HashStore.search`` without filters (the baseline of the ratios);
* ``selective`` / ``broad``: with the label / source filter (allowed ids from the in-memory posting
  lists, rows found, then the kernel scans just those rows' codes);
* ``selective + distinct``: the selective filter with ``distinct="name"`` (every name twice);
* ``max_distance``: unfiltered with ``max_distance`` = bits / 4 (a cut of the exact result).

Each figure is the median of ``--rounds`` rounds of mean microseconds per query. The one-time cost of
building the label / source posting lists (the first filtered search) is reported too.

Usage::

    with-training-paused .venv/bin/python bench/search_filters.py            # 1M items, ~3 minutes
    python bench/search_filters.py --n 100000 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np

from index import HashStore
from index.codes import BITS_CHOICES


def fill(store: HashStore, n: int, rng: np.random.Generator, batch: int = 100_000) -> None:
    """``n`` point items: random codes, 1 % labelled ``sel``, half from ``job:half``, every name twice."""
    for start in range(0, n, batch):
        m = min(batch, n - start)
        codes = {bits: rng.integers(0, 256, size=(m, bits // 8), dtype=np.uint8) for bits in BITS_CHOICES}
        selective = rng.random(m) < 0.01
        broad = rng.random(m) < 0.5
        store.add([
            {"modality": "points", "name": f"shape-{(start + j) // 2}", "label": "sel" if selective[j] else "other",
             "source": "job:half" if broad[j] else "demo", "codes": {b: codes[b][j] for b in BITS_CHOICES}}
            for j in range(m)
        ])


def per_query_us(fn: Callable[[np.ndarray], object], queries: np.ndarray, rounds: int, seconds: float) -> float:
    """Median over ``rounds`` of the mean microseconds per call of ``fn(query)``, each round running for
    about ``seconds`` (at least once over every query)."""
    fn(queries[0])  # warm-up
    means = []
    for _ in range(rounds):
        calls, t0 = 0, time.perf_counter()
        while calls < len(queries) or time.perf_counter() - t0 < seconds:
            fn(queries[calls % len(queries)])
            calls += 1
        means.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(means)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="items (default 1M)")
    ap.add_argument("--queries", type=int, default=200, help="distinct random query codes")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per figure (median reported)")
    ap.add_argument("--seconds", type=float, default=1.0, help="least duration of one round")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp, HashStore(tmp, scan="numba", snapshot_every=0) as store:
        t0 = time.perf_counter()
        fill(store, args.n, rng)
        print(f"{args.n:,} items stored in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        store.search("points", np.zeros(2, dtype=np.uint8), 16, 1, labels=["sel"])
        print(f"first filtered search (builds the label/source posting lists): {time.perf_counter() - t0:.2f} s")
        n_sel = store.search("points", np.zeros(8, np.uint8), 64, args.n, labels=["sel"])[1].__ge__(0).sum()
        print(f"selective filter: {n_sel:,} items ({n_sel / args.n:.1%}); broad filter: source job:half (~50 %)")
        k = args.k
        cases: dict[str, Callable[[int], Callable[[np.ndarray], object]]] = {
            "backend (no store)": lambda b: lambda q: store.backend.search("points", b, q[None], k),
            "unfiltered": lambda b: lambda q: store.search("points", q, b, k),
            "selective (1 %)": lambda b: lambda q: store.search("points", q, b, k, labels=["sel"]),
            "broad (50 %)": lambda b: lambda q: store.search("points", q, b, k, sources=["job:half"]),
            "selective + distinct": lambda b: lambda q: store.search("points", q, b, k, labels=["sel"],
                                                                     distinct="name"),
            "max_distance bits/4": lambda b: lambda q: store.search("points", q, b, k, max_distance=b // 4),
        }
        rows: dict[str, dict[int, float]] = {name: {} for name in cases}
        for bits in BITS_CHOICES:
            queries = rng.integers(0, 256, size=(args.queries, bits // 8), dtype=np.uint8)
            for name, make in cases.items():
                rows[name][bits] = per_query_us(make(bits), queries, args.rounds, args.seconds)
        print(f"\nsingle-query search, k = {k}, {args.n:,} items, microseconds per query "
              "(ratio to `unfiltered` of the same run)\n")
        print("| search | " + " | ".join(f"{b} bits" for b in BITS_CHOICES) + " |")
        print("|---|" + "---|" * len(BITS_CHOICES))
        for name, by_bits in rows.items():
            cells = [f"{by_bits[b]:,.0f} ({by_bits[b] / rows['unfiltered'][b]:.2f}x)" for b in BITS_CHOICES]
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
