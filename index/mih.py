"""Exact sub-linear k-NN search in Hamming space by multi-index hashing (MIH).

Method (Norouzi, Punjani & Fleet, "Fast exact search in Hamming space with multi-index hashing",
CVPR 2012 / TPAMI 2014). Every ``bits``-bit code is split into ``m = bits / 16`` disjoint 16-bit
substrings (m = 1, 2, 4 for 16-, 32-, 64-bit codes). For each substring ``j`` a bucket table maps
each of the 65,536 substring values to the rows whose substring ``j`` has that value (CSR: the rows
sorted by substring value, stable in storage order, plus an offsets array).

Search visits "steps" ``(a, j)`` in the order ``a = 0, 1, ..., 16`` and, for each ``a``,
``j = 0, ..., m - 1``: step ``(a, j)`` probes every bucket of table ``j`` whose value is at Hamming
distance exactly ``a`` from the query's substring ``j``. **After step (a, j) every item within
distance r' = m * a + j of the query has been found** (pigeonhole, with the ``r mod m``
refinement): an item missed so far has distance >= a + 1 on substrings 0..j and >= a on substrings
j+1..m-1, i.e. >= (j + 1)(a + 1) + (m - j - 1) a = m a + j + 1 in total. The full distance of each
candidate is verified with a popcount. An item is counted only by the first step that can find it
(the step ``(min_j d_j, first argmin)`` of its substring distances ``d_j``), so candidates never
repeat and no set is needed for deduplication. Candidates farther than the k-th smallest distance
found so far are dropped first (they can neither be in the result nor decide the stop). For 16-bit
codes (m = 1) the substring is the whole code: a bucket at substring distance a holds items at
distance a, nothing needs verifying.

The search stops as soon as at least ``k`` found items are within ``r'``: then *all* items within
``r'`` have been found, so the first ``k`` of them by ``(distance, id)`` are the exact result of
:mod:`index.exact`, ties at the k-th distance included. Steps are grouped into chunks of at least
:data:`CHUNK` candidates (the stop test runs after each chunk) to keep the Python overhead low.

**Fallback.** Each query has a budget of ``budget_factor x ntotal x scan_ns`` (the estimated cost of
a flat scan; ``scan_ns`` defaults to :data:`SCAN_NS`, FAISS's cost per code). Before each level and
each chunk the estimated cost of the work done so far plus the next piece (:data:`CHUNK_NS` per
chunk, :data:`BUCKET_NS` per probed bucket, :data:`CANDIDATE_NS` per candidate; calibrated on one
core, see ``docs/benchmarks-search.md``) is compared with the budget; when it would exceed it, the
query is handed back to the caller, which runs the flat scan. This happens for very clustered codes
(huge buckets), large ``k`` and long codes whose k-th neighbour is far (large radii: the number of
probed buckets grows as C(16, a)).
So a query never costs much more than ``1 + budget_factor`` scans.

**Memory** (on top of FAISS), per item: the id (8 bytes), one row index per substring (int32; int64
beyond 2**31 items) and, for m > 1, one copy of the code per substring stored in bucket order (so
that candidates are read sequentially, not by random access); plus ``m x 65,537`` int64 offsets.
At 1M items: 12.5 MB for 16-bit codes, 25 MB for 32-bit, 58 MB for 64-bit (FAISS itself holds
12, 12 and 16 MB).

The structure is immutable once built; :class:`index.flat.FaissFlatIndex` rebuilds it after changes.
"""

from __future__ import annotations

import numpy as np

from index.codes import WORD_DTYPES, popcount
from index.exact import KEY_SHIFT, empty_result

SUB_BITS = 16
NBUCKETS = 1 << SUB_BITS
_VALUES = np.arange(NBUCKETS, dtype=np.int64)
_WEIGHTS = popcount(_VALUES.astype(np.uint16))
#: ``MASKS[a]``: every 16-bit value with exactly ``a`` bits set (XOR with a substring -> the values at distance a).
MASKS: list[np.ndarray] = [_VALUES[np.equal(_WEIGHTS, a)] for a in range(SUB_BITS + 1)]

#: cost model in nanoseconds, fitted (least squares, best-of-5 times of 240 queries, 1M items, 16/32/64
#: bits, random and clustered) on the shared 2-core benchmark machine (docs/benchmarks-search.md):
#: flat scan per stored code (FAISS, one thread, k + tie margin heap: 0.7-1.2 ns measured; the compiled
#: scan of index.scan_kernel is cheaper, index.flat passes its own figure as ``scan_ns``) ...
SCAN_NS = 1.0
#: ... fixed cost of one chunk of steps (two dozen numpy calls; ~65 us fitted on the busy machine) ...
CHUNK_NS = 50_000.0
#: ... per probed bucket (offset look-ups) ...
BUCKET_NS = 12.0
#: ... and per candidate (range expansion, sequential gather, popcount, distance filter).
CANDIDATE_NS = 12.0
#: a chunk gathers the buckets of consecutive tables until it holds at least this many candidates.
CHUNK = 4096
#: a query falls back to the scan when its estimated MIH cost would exceed this many scans.
DEFAULT_BUDGET_FACTOR = 1.0


def complete_radius(a: int, j: int, m: int) -> int:
    """Radius within which all items have been found after step ``(a, j)`` (module docstring)."""
    return m * a + j


class MultiIndexHash:
    """Immutable MIH tables over ``ids int64 [N]`` and codes ``uint8 [N, >= bits / 8]`` (padding ignored)."""

    def __init__(
        self,
        bits: int,
        ids: np.ndarray,
        codes: np.ndarray,
        *,
        budget_factor: float = DEFAULT_BUDGET_FACTOR,
        scan_ns: float = SCAN_NS,
    ):
        if bits % SUB_BITS:
            raise ValueError(f"MIH needs a multiple of {SUB_BITS} bits, got {bits}")
        self.bits = bits
        self.m = m = bits // SUB_BITS
        self.budget_factor = float(budget_factor)
        #: estimated cost (ns) per stored code of the scan that answers the fallbacks
        self.scan_ns = float(scan_ns)
        n = len(ids)
        self.ntotal = n
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        if codes.shape[0] != n:
            raise ValueError(f"{n} ids for {codes.shape[0]} codes")
        subs = np.ascontiguousarray(codes[:, : bits // 8]).view(np.uint16)  # [N, m]
        words = subs.view(WORD_DTYPES[2 * m])[:, 0]
        #: ``rows[t * N : (t + 1) * N]``: table t, the rows sorted by substring t (stable)
        self.rows = np.empty(m * n, dtype=np.int32 if n < 1 << 31 else np.int64)
        #: ``offsets[t * 65536 + v] .. offsets[t * 65536 + v + 1]``: the slice of ``rows`` of bucket v of table t
        self.offsets = np.empty(m * NBUCKETS + 1, dtype=np.int64)
        #: the codes as words (``uint32/64``) in the order of ``rows`` (m > 1 only): candidates are read
        #: sequentially, bucket by bucket, instead of by random access
        self.words = np.empty(m * n if m > 1 else 0, dtype=WORD_DTYPES[2 * m])
        for t in range(m):
            col = np.ascontiguousarray(subs[:, t])
            order = np.argsort(col, kind="stable")  # radix sort for uint16
            self.rows[t * n : (t + 1) * n] = order
            if m > 1:
                np.take(words, order, out=self.words[t * n : (t + 1) * n])
            self.offsets[t * NBUCKETS] = t * n
            ends = self.offsets[t * NBUCKETS + 1 : (t + 1) * NBUCKETS + 1]
            np.cumsum(np.bincount(col, minlength=NBUCKETS), out=ends)
            ends += t * n
        #: ``_step_tables[t][v] = popcount(v) * m + t``: rank of the step of table t that finds substring value v
        ranks = _WEIGHTS.astype(np.uint8)[None, :] * np.uint8(m)
        self._step_tables = ranks + np.arange(m, dtype=np.uint8)[:, None]
        self._huge_ids = bool(n and self.ids.max() >= 1 << KEY_SHIFT)
        self._table_base = np.arange(m, dtype=np.int64) * NBUCKETS

    @property
    def nbytes(self) -> int:
        """Memory held by the tables (codes copy, ids, row indexes, offsets)."""
        return self.words.nbytes + self.ids.nbytes + self.rows.nbytes + self.offsets.nbytes

    @property
    def budget_ns(self) -> float:
        """Estimated cost (ns) above which a query falls back to the scan."""
        return self.budget_factor * self.ntotal * self.scan_ns

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Exact top-``k`` for ``queries uint8 [Q, >= bits / 8]``.

        Returns:
            ``(distances int32 [Q, k], ids int64 [Q, k], fallback rows int64, mean cost in scans)``:
            rows listed in ``fallback`` are left padded and must be answered by a scan; the mean cost
            is the estimated MIH cost per query in units of one scan (a fallback counts what it
            spent plus the scan it still needs).
        """
        nq = queries.shape[0]
        out_d, out_i = empty_result(nq, k)
        qsubs = np.ascontiguousarray(queries[:, : self.bits // 8]).view(np.uint16)
        fallback: list[int] = []
        spent_total = 0.0
        for r in range(nq):
            res, spent = self._search_one(qsubs[r], k)
            spent_total += spent
            if res is None:
                fallback.append(r)
                continue
            d, i = res
            out_d[r, : d.size] = d
            out_i[r, : i.size] = i
        scan = self.ntotal * self.scan_ns
        cost = (spent_total / scan + len(fallback)) / nq if nq and scan > 0 else 0.0
        return out_d, out_i, np.asarray(fallback, dtype=np.int64), cost

    def _search_one(self, qsub: np.ndarray, k: int) -> tuple[tuple[np.ndarray, np.ndarray] | None, float]:
        """One query: ``((distances, ids) | None for a fallback, estimated cost in ns)``."""
        m, n, bits = self.m, self.ntotal, self.bits
        if n == 0:
            return (np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64)), 0.0
        offsets = self.offsets
        budget = self.budget_ns
        qvals = qsub.astype(np.int64)
        qword = qsub.view(WORD_DTYPES[2 * m])[0]
        bound = bits  # k-th smallest distance among the items found so far (an upper bound of the result's)
        hist = np.zeros(bits + 1, dtype=np.int64)  # found items per full distance
        parts_r: list[np.ndarray] = []
        parts_d: list[np.ndarray | int] = []  # distances, or one distance for the whole part
        found = 0
        spent = 0.0
        for a in range(SUB_BITS + 1):
            masks = MASKS[a]
            spent += masks.size * m * BUCKET_NS
            if spent > budget:
                return None, spent
            idx = (masks[None, :] ^ qvals[:, None]) + self._table_base[:, None]  # [m, C] bucket numbers
            starts = offsets[idx]
            lens = offsets[idx + 1] - starts
            per_table = lens.sum(axis=1).tolist()
            j = 0
            while j < m:
                j1, total = j, per_table[j]
                while total < CHUNK and j1 + 1 < m:
                    j1 += 1
                    total += per_table[j1]
                spent += CHUNK_NS + total * CANDIDATE_NS
                if spent > budget:
                    return None, spent
                if total:
                    pos = self._positions(starts[j : j1 + 1].ravel(), lens[j : j1 + 1].ravel(), total)
                    if m == 1:  # the substring is the whole code: every candidate is at distance a
                        parts_r.append(self.rows[pos])
                        parts_d.append(a)
                        hist[a] += total
                        found += total
                    else:
                        x = self.words[pos] ^ qword
                        d = popcount(x)
                        # items farther than `bound` can never be in the result nor decide the stop
                        near = np.flatnonzero(d <= bound)
                        pos = near + pos.start if isinstance(pos, slice) else pos[near]
                        x, d = x[near], d[near].astype(np.int64)
                        if j1 == j:
                            new = self._first_step(x, a * m + j)
                        else:
                            new = self._first_step(x, np.repeat(self._steps(a, j, j1), per_table[j : j1 + 1])[near])
                        rows, d = self.rows[pos[new]], d[new]
                        if rows.size:
                            parts_r.append(rows)
                            parts_d.append(d)
                            hist += np.bincount(d, minlength=bits + 1)
                            found += rows.size
                            if found >= k:
                                bound = int(np.searchsorted(np.cumsum(hist), k))  # k-th smallest distance found
                radius = complete_radius(a, j1, m)
                if found >= n or (found >= k and int(hist[: radius + 1].sum()) >= k):
                    return self._finish(parts_r, parts_d, radius, k, found < n), spent
                j = j1 + 1
        raise AssertionError("MIH visited every bucket without finding every item")  # pragma: no cover

    def _steps(self, a: int, j: int, j1: int) -> np.ndarray:
        """Ranks ``a * m + t`` of the steps ``(a, t)`` for tables ``t = j .. j1``."""
        return np.arange(a * self.m + j, a * self.m + j1 + 1, dtype=np.uint8)

    def _first_step(self, x: np.ndarray, steps: int | np.ndarray) -> np.ndarray:
        """Mask of the candidates (``x`` = code XOR query) that no earlier step could have found.

        The first step that finds an item is ``(min_t d_t, first t reaching it)`` over its substring
        distances ``d_t``, i.e. the smallest rank ``d_t * m + t``; a candidate produced by step
        ``(a, j)`` (rank ``steps = a * m + j``, or one rank per candidate for a chunk of tables) is new
        iff that is its first step.
        """
        sub = x.view(np.uint16).reshape(x.size, self.m)
        first = self._step_tables[0][sub[:, 0]]
        for t in range(1, self.m):
            np.minimum(first, self._step_tables[t][sub[:, t]], out=first)
        return first == steps

    @staticmethod
    def _positions(starts: np.ndarray, lens: np.ndarray, total: int) -> np.ndarray | slice:
        """Positions in ``rows`` of the buckets ``[starts[b], starts[b] + lens[b])``, concatenated."""
        if starts.size > 1:
            nz = lens > 0
            starts, lens = starts[nz], lens[nz]
        if starts.size == 1:
            s = int(starts[0])
            return slice(s, s + total)
        shift = starts - (np.cumsum(lens) - lens)  # position in rows minus position in the output
        return np.arange(total) + np.repeat(shift, lens)

    def _finish(
        self, parts_r: list[np.ndarray], parts_d: list[np.ndarray | int], radius: int, k: int, cut: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """First ``k`` found items by ``(distance, id)``, keeping only distances <= ``radius`` if ``cut``."""
        if not parts_r:
            return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64)
        dists = [np.full(r.size, x) if isinstance(x, int) else x for r, x in zip(parts_r, parts_d, strict=True)]
        rows = np.concatenate(parts_r) if len(parts_r) > 1 else parts_r[0]
        d = (np.concatenate(dists) if len(dists) > 1 else dists[0]).astype(np.int64, copy=False)
        if cut:
            keep = d <= radius
            rows, d = rows[keep], d[keep]
        ids = self.ids[rows]
        if self._huge_ids:
            order = np.lexsort((ids, d))[:k]
            return d[order].astype(np.int32), ids[order]
        key = (d << KEY_SHIFT) | ids
        if key.size > k:
            key = np.partition(key, k - 1)[:k]
        key.sort()
        return (key >> KEY_SHIFT).astype(np.int32), key & ((1 << KEY_SHIFT) - 1)
