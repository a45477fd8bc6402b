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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import faiss
import numpy as np

from index.codes import as_codes, check_bits
from index.exact import check_k, empty_result, resolve_ties

logger = logging.getLogger(__name__)

_DEFAULT_THREADS = faiss.omp_get_max_threads()

#: bytes per code as stored in FAISS, per code length.
FAISS_CODE_BYTES: dict[int, int] = {16: 4, 32: 4, 64: 8}

#: extra candidates fetched per query so that the k-th distance band usually fits (see index.exact).
DEFAULT_TIE_MARGIN = 32

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
        accelerator: Accelerator | None = None,
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
        self.accelerator = accelerator
        self._accel_stale = accelerator is not None
        #: OpenMP threads used for batches of queries (FAISS's default: all cores).
        self.max_threads = _DEFAULT_THREADS
        #: number of query rows whose k-th distance band overflowed the candidates (range search).
        self.band_fallbacks = 0

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
        return out_d, out_i

    def _fetch_band(self, q: np.ndarray):
        """Band fetcher for :func:`resolve_ties`: FAISS range search, one call per distinct radius."""

        def fetch(rows: np.ndarray, max_dist: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
            out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0), np.empty(0))] * rows.size
            for radius in np.unique(max_dist):
                sel = np.flatnonzero(max_dist == radius)
                lims, dist, ids = self._index.range_search(q[rows[sel]], int(radius) + 1)
                for j, pos in enumerate(sel):
                    lo, hi = lims[j], lims[j + 1]
                    out[pos] = (dist[lo:hi].astype(np.int64), ids[lo:hi])
            return out

        return fetch

    def _ready_accelerator(self, kc: int) -> Accelerator | None:
        if self.accelerator is None or kc > self.accelerator.max_k:
            return None
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
