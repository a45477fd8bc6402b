"""One in-memory FAISS flat binary index (one modality, one code length) with exact tie order.

Codes live in a ``faiss.IndexBinaryFlat`` wrapped by ``faiss.IndexBinaryIDMap2``, so items keep
their stable int64 ids (the SQLite row ids) and can be removed. Search is an exhaustive Hamming scan
(exact), post-processed by :func:`index.exact.resolve_ties` into the package's deterministic order.

16-bit codes are stored zero-padded to 32 bits: FAISS has no specialised Hamming kernel for 2-byte
codes and its generic path is ~7x slower than the 4-byte one (see ``docs/benchmarks-search.md``);
padding both database and query codes with the same zero bytes leaves every distance unchanged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import faiss
import numpy as np

from index.codes import as_codes, check_bits
from index.exact import BandFetcher, check_k, empty_result, resolve_ties

logger = logging.getLogger(__name__)

_DEFAULT_THREADS = faiss.omp_get_max_threads()
_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")
_WORD = {4: np.uint32, 8: np.uint64}
_SCAN_CHUNK = 1 << 16

#: bytes per code as stored in FAISS, per code length.
FAISS_CODE_BYTES: dict[int, int] = {16: 4, 32: 4, 64: 8}

#: extra candidates fetched per query so that the k-th distance band usually fits (see index.exact).
#: A larger heap costs FAISS next to nothing (k = 10 + 512 scans as fast as k = 42).
DEFAULT_TIE_MARGIN = 128
#: the margin doubles (up to this) while more than a quarter of the rows of a search overflow.
MAX_TIE_MARGIN = 1024

#: below this many (query, item) comparisons a search runs on one OpenMP thread: FAISS only
#: parallelises over queries, and on a busy machine waking a team of threads costs milliseconds.
PARALLEL_MIN_WORK = 1 << 22


@contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Run FAISS calls of the current thread with ``n`` OpenMP threads (a per-thread setting)."""
    before = faiss.omp_get_max_threads()
    if n == before:
        yield
        return
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class Accelerator(Protocol):
    """Optional GPU scan used instead of the CPU FAISS scan (see :mod:`index.gpu`)."""

    #: True when ``search`` already returns the exact ``(distance, id)`` order (no tie fix needed).
    exact: bool
    #: largest candidate count ``search`` supports.
    max_k: int

    def rebuild(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Load the database: ``ids int64 [N]`` and padded ``codes uint8 [N, B]``."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, ids)`` ``[Q, k]`` for padded ``queries uint8 [Q, B]``; missing ids are -1.

        An exact accelerator returns the final result (order and padding of :mod:`index.exact`).
        """


def pad_codes(codes: np.ndarray, width: int) -> np.ndarray:
    """Append zero bytes to ``uint8 [N, B]`` codes up to ``width`` bytes (Hamming distances unchanged)."""
    if codes.shape[1] == width:
        return np.ascontiguousarray(codes)
    out = np.zeros((codes.shape[0], width), dtype=np.uint8)
    out[:, : codes.shape[1]] = codes
    return out


class FaissFlatIndex:
    """Exact Hamming search over the codes of one (modality, code length) pair.

    Not thread-safe by itself: :class:`index.store.HashStore` serialises writers and lets searches
    run concurrently (FAISS searches are read-only).
    """

    def __init__(
        self,
        bits: int,
        *,
        index: faiss.IndexBinaryIDMap2 | None = None,
        tie_margin: int = DEFAULT_TIE_MARGIN,
        max_tie_margin: int = MAX_TIE_MARGIN,
        accelerator: Accelerator | None = None,
        threads: int | None = None,
    ) -> None:
        self.bits = check_bits(bits)
        self.code_bytes = self.bits // 8
        self.faiss_bytes = FAISS_CODE_BYTES[self.bits]
        if index is None:
            index = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(self.faiss_bytes * 8))
        elif index.d != self.faiss_bytes * 8:
            raise ValueError(f"FAISS index has d={index.d}, expected {self.faiss_bytes * 8} for {bits}-bit")
        self._index = index
        self.tie_margin = max(1, int(tie_margin))
        self.max_tie_margin = max(self.tie_margin, int(max_tie_margin))
        self.accelerator = accelerator
        self._accel_stale = accelerator is not None
        self._accel_lock = threading.Lock()  # concurrent searches may race to refresh the device copy
        #: OpenMP threads used for large batches of queries (default: FAISS's, i.e. all cores).
        self.max_threads = max(1, int(threads)) if threads else _DEFAULT_THREADS
        #: number of query rows whose k-th distance band overflowed the candidates.
        self.band_fallbacks = 0
        ids = self.ids()
        #: rows stored in ascending id order (true unless an existing id was re-added, e.g. by an
        #: upsert): enables the early-stopping band scan.
        self._rows_in_id_order = bool(np.all(ids[1:] > ids[:-1])) and _HAS_BITWISE_COUNT
        self._max_id = int(ids.max()) if ids.size else -1

    def set_accelerator(self, accelerator: Accelerator | None) -> None:
        """Use (or stop using, with ``None``) a GPU scan; its copy is refreshed on the next search."""
        with self._accel_lock:
            self.accelerator = accelerator
            self._accel_stale = accelerator is not None

    # ------------------------------------------------------------------ contents
    @property
    def ntotal(self) -> int:
        """Number of indexed items."""
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Add items. ``ids`` must not be present already (the store guarantees it)."""
        arr = as_codes(codes, self.bits)
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if ids.size != arr.shape[0]:
            raise ValueError(f"{ids.size} ids for {arr.shape[0]} codes")
        if ids.size:
            self._index.add_with_ids(pad_codes(arr, self.faiss_bytes), ids)
            self._accel_stale = self.accelerator is not None
            self._rows_in_id_order &= bool(ids[0] > self._max_id and np.all(ids[1:] > ids[:-1]))
            self._max_id = max(self._max_id, int(ids.max()))

    def remove(self, ids: np.ndarray) -> int:
        """Remove items by id (unknown ids are ignored); returns how many were removed."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0 or self.ntotal == 0:
            return 0
        removed = int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))
        if removed:
            self._accel_stale = self.accelerator is not None
        return removed

    def ids(self) -> np.ndarray:
        """Ids in storage order (``int64 [N]``, a copy)."""
        return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)

    def padded_codes(self) -> np.ndarray:
        """Stored (padded) codes in storage order (``uint8 [N, faiss_bytes]``, a copy)."""
        flat = faiss.downcast_IndexBinary(self._index.index)
        return faiss.vector_to_array(flat.xb).reshape(-1, self.faiss_bytes)

    def codes(self) -> np.ndarray:
        """Codes in storage order, without padding (``uint8 [N, bits // 8]``, a copy)."""
        return np.ascontiguousarray(self.padded_codes()[:, : self.code_bytes])

    # ------------------------------------------------------------------ search
    def search(self, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k``: ``(distances int32 [Q, k], ids int64 [Q, k])``, order of :mod:`index.exact`."""
        k = check_k(k)
        q = pad_codes(as_codes(query_codes, self.bits, name="query_codes"), self.faiss_bytes)
        n = self.ntotal
        if n == 0 or q.shape[0] == 0:
            return empty_result(q.shape[0], k)
        kc = min(n, k + self.tie_margin)
        accel = self._ready_accelerator(kc)
        if accel is not None and accel.exact:
            return accel.search(q, k)
        threads = 1 if len(q) == 1 or len(q) * n < PARALLEL_MIN_WORK else self.max_threads
        with omp_threads(threads):
            d, i = accel.search(q, kc) if accel is not None else self._index.search(q, kc)
            out_d, out_i, n_overflow = resolve_ties(d, i, k, n, self._fetch_band(q))
        if n_overflow:
            self.band_fallbacks += n_overflow
            logger.debug("%d-bit search: %d/%d rows needed a range search", self.bits, n_overflow, len(q))
            if 4 * n_overflow > len(q) and self.tie_margin < self.max_tie_margin:
                self.tie_margin = min(self.max_tie_margin, 2 * self.tie_margin)
        return out_d, out_i

    def _fetch_band(self, q: np.ndarray) -> BandFetcher:
        """Band fetcher for :func:`resolve_ties` (see :meth:`_band_prefix_scan` and :meth:`_band_range`)."""

        def fetch(rows: np.ndarray, band_dist: np.ndarray, need: np.ndarray) -> list[np.ndarray]:
            if not self._rows_in_id_order:
                return self._band_range(q, rows, band_dist)
            return [self._band_prefix_scan(q[r], int(d), int(m)) for r, d, m in zip(rows, band_dist, need, strict=True)]

        return fetch

    def _band_prefix_scan(self, query: np.ndarray, band_dist: int, need: int) -> np.ndarray:
        """Rows are in ascending id order: scan them in order and stop at the ``need``-th band member.

        Trained hash codes are clustered, so the k-th distance band often holds thousands of items
        and a full second scan would double the cost; the first band members appear early.
        """
        flat = faiss.downcast_IndexBinary(self._index.index)
        n = self.ntotal
        # zero-copy views of FAISS's storage; valid because writers are excluded during searches
        xb = faiss.rev_swig_ptr(flat.xb.data(), n * self.faiss_bytes).view(_WORD[self.faiss_bytes])
        id_map = faiss.rev_swig_ptr(self._index.id_map.data(), n)
        qword = query.view(_WORD[self.faiss_bytes])[0]
        found: list[np.ndarray] = []
        total = 0
        for start in range(0, n, _SCAN_CHUNK):
            dist = np.bitwise_count(xb[start : start + _SCAN_CHUNK] ^ qword)
            hits = np.flatnonzero(dist == band_dist)
            if hits.size:
                found.append(id_map[start + hits[: need - total]].copy())
                total += min(hits.size, need - total)
                if total >= need:
                    break
        return np.concatenate(found) if found else np.empty(0, dtype=np.int64)

    def _band_range(self, q: np.ndarray, rows: np.ndarray, band_dist: np.ndarray) -> list[np.ndarray]:
        """FAISS range search (distance <= band distance), one call per distinct band distance."""
        out: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * rows.size
        for radius in np.unique(band_dist):
            sel = np.flatnonzero(band_dist == radius)
            lims, dist, ids = self._index.range_search(q[rows[sel]], int(radius) + 1)
            for j, pos in enumerate(sel):
                lo, hi = lims[j], lims[j + 1]
                out[pos] = ids[lo:hi][dist[lo:hi] == radius]
        return out

    def _ready_accelerator(self, kc: int) -> Accelerator | None:
        if self.accelerator is None or kc > self.accelerator.max_k:
            return None
        with self._accel_lock:
            if self._accel_stale:
                self.accelerator.rebuild(self.ids(), self.padded_codes())
                self._accel_stale = False
        return self.accelerator

    # ------------------------------------------------------------------ serialisation
    def serialize(self) -> bytes:
        """The FAISS index as bytes (``faiss.serialize_index_binary``)."""
        return faiss.serialize_index_binary(self._index).tobytes()

    @classmethod
    def deserialize(cls, bits: int, payload: bytes, **kwargs: object) -> FaissFlatIndex:
        """Inverse of :meth:`serialize`; raises ``ValueError`` if ``payload`` is not a matching index."""
        try:
            index = faiss.deserialize_index_binary(np.frombuffer(payload, dtype=np.uint8))
        except RuntimeError as exc:
            raise ValueError(f"not a FAISS binary index: {exc}") from exc
        if not isinstance(index, faiss.IndexBinaryIDMap2):
            raise ValueError(f"expected IndexBinaryIDMap2, got {type(index).__name__}")
        flat = faiss.downcast_IndexBinary(index.index)
        if not isinstance(flat, faiss.IndexBinaryFlat):
            raise ValueError(f"expected an inner IndexBinaryFlat, got {type(flat).__name__}")
        if index.id_map.size() != index.ntotal or flat.ntotal != index.ntotal:
            raise ValueError("inconsistent FAISS index (id map and code counts differ)")
        return cls(bits, index=index, **kwargs)  # type: ignore[arg-type]
