"""One in-memory FAISS flat binary index (one modality, one code length) with exact tie order.

Codes live in a ``faiss.IndexBinaryFlat`` wrapped by ``faiss.IndexBinaryIDMap2``, so items keep
their stable int64 ids (the SQLite row ids) and can be removed. Search is an exhaustive Hamming scan
(exact), post-processed by :func:`index.exact.resolve_ties` into the package's deterministic order.

**Multi-index hashing (default CPU path).** Queries are first answered by an exact sub-linear
multi-index-hashing search (:mod:`index.mih`) over bucket tables built from the stored codes; a
query whose estimated MIH cost would exceed about one scan (very clustered codes, large ``k``,
long codes at large radii) falls back to the scan, so the result is always exact. The tables are
rebuilt lazily after changes (see :meth:`FaissFlatIndex._ready_mih`); ``mih=False`` turns it off.

**Compiled scan (default when numba is installed).** The scan itself is :mod:`index.scan_kernel`:
a numba kernel (XOR + popcount over code words, exact ``(distance, id)`` top-k without sorting, no
tie resolution needed) reading FAISS's storage in place (for 16-bit codes a compact ``uint16`` copy,
rebuilt after changes). ``scan="faiss"`` selects FAISS's ``IndexBinaryFlat`` scan followed by
:func:`index.exact.resolve_ties` (also the fallback when numba is missing); ``scan="auto"`` (default)
takes the kernel when numba imports. The kernel is compiled (or loaded from numba's on-disk cache)
when the index is created, not by a query: ``"numba"`` waits for it, ``"auto"`` does it in a
background thread and scans with FAISS until it is ready.

16-bit codes are stored zero-padded to 32 bits: FAISS has no specialised Hamming kernel for 2-byte
codes and its generic path is ~7x slower than the 4-byte one (see ``docs/benchmarks-search.md``);
padding both database and query codes with the same zero bytes leaves every distance unchanged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Protocol

import faiss
import numpy as np

from index.codes import WORD_DTYPES, as_codes, check_bits, popcount
from index.exact import BandFetcher, brute_force_search, check_k, empty_result, resolve_ties
from index.filters import id_row_table, subset_rows
from index.mih import DEFAULT_BUDGET_FACTOR, SCAN_NS, MultiIndexHash

logger = logging.getLogger(__name__)

_DEFAULT_THREADS = faiss.omp_get_max_threads()
_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")
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

#: below this many items the scan is cheaper than MIH's per-query Python overhead (~50 us per chunk).
MIH_MIN_ITEMS = 65_536
#: with a GPU accelerator, only batches up to this size use MIH (the GPU scans large batches faster).
MIH_SMALL_BATCH = 8
#: while MIH is expected to be slower than the scan, every this-many-th search still tries it, to
#: notice when the data or the queries change.
MIH_REPROBE = 16
#: once both paths are timed, the other path is re-timed every MIH_REPROBE x (its slowdown, at most
#: this) searches
MIH_REPROBE_MAX_FACTOR = 16
MIH_REBUILD = ("amortized", "eager")

#: ``scan=`` choices: ``auto`` (the compiled kernel when numba imports, else FAISS), ``numba``, ``faiss``
SCAN_CHOICES = ("auto", "numba", "faiss")
#: estimated cost per stored code (ns, one thread, k = 10, per-call overhead included) of the compiled
#: scan at 1M items, measured on the shared 2-core machine (docs/benchmarks-search.md); it replaces
#: FAISS's index.mih.SCAN_NS in the MIH budget and in the choice between MIH and the scan.
KERNEL_SCAN_NS: dict[int, float] = {16: 0.2, 32: 0.3, 64: 0.45}

_kernel_module: ModuleType | None = None
_kernel_error: str | None = None


def _batch_kind(nq: int) -> int:
    """Index of the timing slot of a search of ``nq`` queries: 0 single query, 1 batch."""
    return 0 if nq == 1 else 1


def _update_mean(means: list[float], nq: int, seconds: float) -> None:
    """Fold the CPU time of one search of ``nq`` queries into the moving mean of seconds per query.

    Timing noise only ever adds time (other processes, page faults, cold caches), so the mean falls
    fast (weight >= 1/2) and rises slowly, a sample counting at most 4x the current mean: one slow
    search must not decide the path for the next hundreds of searches.
    """
    kind, per_query = _batch_kind(nq), seconds / nq
    mean = means[kind]
    if mean == 0:
        means[kind] = per_query
    else:
        weight = min(1.0, max(nq, 4) / 16)
        means[kind] = mean + (min(per_query, 4 * mean) - mean) * (max(weight, 0.5) if per_query < mean else weight)


def load_scan_kernel() -> ModuleType | None:
    """:mod:`index.scan_kernel`, or ``None`` when numba cannot be imported (the reason is logged once)."""
    global _kernel_module, _kernel_error
    if _kernel_module is None and _kernel_error is None:
        try:
            import index.scan_kernel as kernel
        except ImportError as exc:
            _kernel_error = f"{type(exc).__name__}: {exc}"
            logger.info("numba is not available (%s): searches scan with FAISS", _kernel_error)
        else:
            _kernel_module = kernel
    return _kernel_module


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
        mih: bool = True,
        mih_min_items: int = MIH_MIN_ITEMS,
        mih_rebuild: str = "amortized",
        mih_budget: float = DEFAULT_BUDGET_FACTOR,
        scan: str = "auto",
    ) -> None:
        """See the module docstring.

        Args:
            mih: answer queries by multi-index hashing when expected faster (falls back to the scan).
            mih_min_items: smaller indexes always scan.
            mih_rebuild: ``"amortized"`` (default): after a change, queries scan until the time
                spent scanning reaches the last build time of the tables, then the tables are
                rebuilt (ski rental: a stream of writes never costs more than twice the scans);
                ``"eager"``: rebuild on the first search after a change.
            mih_budget: a query falls back to the scan once its estimated MIH cost would exceed
                this many scans.
            scan: the full scan (see :data:`SCAN_CHOICES`); ``"numba"`` raises ``ValueError`` when
                numba is not installed. Settable later through :attr:`scan`.
        """
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
        #: upsert): enables the early-stopping band scan and the kernel's tie cut-off.
        self._rows_in_id_order = bool(np.all(ids[1:] > ids[:-1]))
        self._max_id = int(ids.max()) if ids.size else -1
        if mih_rebuild not in MIH_REBUILD:
            raise ValueError(f"mih_rebuild must be one of {MIH_REBUILD}, got {mih_rebuild!r}")
        self.mih_enabled = bool(mih)
        self.mih_min_items = int(mih_min_items)
        self.mih_rebuild = mih_rebuild
        self.mih_budget = float(mih_budget)
        self._mih: MultiIndexHash | None = None
        self._mih_stale = True
        self._mih_lock = threading.Lock()  # one rebuild at a time; other searches scan meanwhile
        self._mih_scan_debt = 0.0  # seconds spent scanning since the tables went stale
        #: seconds the last build of the MIH tables took
        self.mih_build_seconds = 0.0
        self._mih_cost = 0.0  # moving mean of MIH's estimated cost per query in scans (fallbacks: +1)
        self._mih_skips = 0
        #: queries answered by MIH / handed back by MIH to the scan
        self.mih_queries = 0
        self.mih_fallbacks = 0
        # measured seconds per query (moving means) of MIH and of the scan, [single, batch]
        self._mih_seconds = [0.0, 0.0]
        self._scan_seconds = [0.0, 0.0]
        self._kernel: ModuleType | None = None
        self._kernel_pending: ModuleType | None = None  # warming up in the background
        self._kernel_db: tuple[np.ndarray, np.ndarray] | None = None  # see _kernel_arrays (None: stale)
        self._id_rows: tuple[np.ndarray | None] | None = None  # (id -> row table or None), None: stale
        self.scan = scan

    @property
    def scan(self) -> str:
        """The full scan in use: ``"numba"`` (:mod:`index.scan_kernel`) or ``"faiss"``.

        Set it to one of :data:`SCAN_CHOICES`. ``"numba"`` compiles (or loads from numba's cache)
        the kernel at once, waiting for it; ``"auto"`` does so in a background thread unless it is
        ready already, and searches scan with FAISS until it is (so neither opening an index nor a
        query ever waits for a compilation).
        """
        return "faiss" if self._kernel is None else "numba"

    @scan.setter
    def scan(self, choice: str) -> None:
        if choice not in SCAN_CHOICES:
            raise ValueError(f"scan must be one of {SCAN_CHOICES}, got {choice!r}")
        kernel = None if choice == "faiss" else load_scan_kernel()
        if kernel is None and choice == "numba":
            raise ValueError(f"scan='numba' needs the numba package ({_kernel_error})")
        self._kernel_pending = None
        if kernel is not None:
            word, parallel = WORD_DTYPES[self.code_bytes], min(self.max_threads, kernel.max_threads()) > 1
            if choice == "numba" or kernel.is_ready(word, parallel=parallel):
                kernel.warm_up(word, parallel=parallel)
            else:  # "auto": compile / load in the background; FAISS scans until the kernel is ready
                kernel.warm_up_in_background(word, parallel=parallel)
                self._kernel_pending, kernel = kernel, None
        self._set_kernel(kernel)

    def _set_kernel(self, kernel: ModuleType | None) -> None:
        self._kernel = kernel
        if self._mih is not None:
            self._mih.scan_ns = self.scan_ns
        self._mih_cost = 0.0  # the moving means were of the previous scan
        self._mih_seconds[:] = self._scan_seconds[:] = [0.0, 0.0]

    def _check_pending_kernel(self) -> None:
        """Switch to the kernel once its background warm-up (``scan="auto"``) is done."""
        kernel = self._kernel_pending
        parallel = kernel is not None and min(self.max_threads, kernel.max_threads()) > 1
        if kernel is not None and kernel.is_ready(WORD_DTYPES[self.code_bytes], parallel=parallel):
            self._kernel_pending = None
            self._set_kernel(kernel)
            logger.debug("%d-bit index: compiled scan kernel ready", self.bits)

    @property
    def scan_ns(self) -> float:
        """Estimated cost of the current scan per stored code (ns, one thread)."""
        return SCAN_NS if self._kernel is None else KERNEL_SCAN_NS[self.bits]

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
            self._mih_stale = True
            self._kernel_db = self._id_rows = None
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
            self._mih_stale = True
            self._kernel_db = self._id_rows = None
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
    def search(
        self, query_codes: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k``: ``(distances int32 [Q, k], ids int64 [Q, k])``, order of :mod:`index.exact`.

        ``allowed``: sorted ids; when given, only those items answer (:meth:`_subset_search`).
        """
        k = check_k(k)
        q = pad_codes(as_codes(query_codes, self.bits, name="query_codes"), self.faiss_bytes)
        if self.ntotal == 0 or q.shape[0] == 0:
            return empty_result(q.shape[0], k)
        if self._kernel_pending is not None:
            self._check_pending_kernel()
        if allowed is not None:
            return self._subset_search(q, k, allowed)
        nq = len(q)
        mih = self._ready_mih(nq)
        if self._kernel is not None and self._kernel_db is None:
            self._kernel_arrays()  # (re)built after a change: not part of any path's time
        # path timings for the MIH/scan choice are CPU times of this thread (the kernel's calling
        # thread takes its share of a parallel scan): time lost to other processes is no path's cost
        t0, c0 = time.perf_counter(), time.thread_time()
        if mih is None:
            out = self._scan(q, k)
            if self._mih_stale:
                self._mih_scan_debt += time.perf_counter() - t0
            elif self._mih is not None:
                _update_mean(self._scan_seconds, nq, time.thread_time() - c0)
            return out
        out_d, out_i, todo, cost = mih.search(q, k)
        self.mih_queries += nq - len(todo)
        self._mih_cost += (cost - self._mih_cost) * min(1.0, nq / 16)
        if todo.size:
            self.mih_fallbacks += int(todo.size)
            out_d[todo], out_i[todo] = self._scan(q[todo], k)
        _update_mean(self._mih_seconds, nq, time.thread_time() - c0)
        return out_d, out_i

    def _subset_search(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` among the rows holding ``allowed`` ids (:func:`index.filters.subset_rows`): the
        compiled kernel (else numpy) scans a copy of just those rows' codes."""
        if self._kernel is not None:
            words, ids = self._kernel_arrays()
        else:
            words, ids = None, self.ids()
        if self._id_rows is None:  # built after a change, by the first filtered search
            self._id_rows = (id_row_table(ids),)
        rows = subset_rows(ids, allowed, self._rows_in_id_order, self._id_rows[0])
        if rows.size == 0:
            return empty_result(len(q), k)
        if words is None:
            return brute_force_search(q[:, : self.code_bytes], self.codes()[rows], ids[rows], k)
        queries = np.ascontiguousarray(q[:, : self.code_bytes]).view(words.dtype)[:, 0]
        return self._kernel.search(  # type: ignore[union-attr]
            words[rows], ids[rows], queries, k, ascending=self._rows_in_id_order, threads=self.max_threads
        )

    def _scan(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` of padded queries by a full scan: the accelerator, else the compiled kernel,
        else FAISS + tie resolution."""
        n = self.ntotal
        kc = min(n, k + self.tie_margin)
        accel = self._ready_accelerator(kc)
        if accel is not None and accel.exact:
            return accel.search(q, k)
        if accel is None and self._kernel is not None:
            return self._kernel_scan(q, k)
        threads = self._scan_threads(len(q))
        with omp_threads(threads):
            d, i = accel.search(q, kc) if accel is not None else self._index.search(q, kc)
            out_d, out_i, n_overflow = resolve_ties(d, i, k, n, self._fetch_band(q))
        if n_overflow:
            self.band_fallbacks += n_overflow
            logger.debug("%d-bit search: %d/%d rows needed a range search", self.bits, n_overflow, len(q))
            if 4 * n_overflow > len(q) and self.tie_margin < self.max_tie_margin:
                self.tie_margin = min(self.max_tie_margin, 2 * self.tie_margin)
        return out_d, out_i

    def _scan_threads(self, nq: int) -> int:
        return 1 if nq == 1 or nq * self.ntotal < PARALLEL_MIN_WORK else self.max_threads

    def _scan_parallelism(self, nq: int) -> int:
        """Threads the scan of ``nq`` queries runs on (the kernel also splits single queries)."""
        if self._kernel is None or self.accelerator is not None:
            return self._scan_threads(nq)
        if nq * self.ntotal < self._kernel.PARALLEL_MIN_WORK:
            return 1
        return max(1, min(self.max_threads, self._kernel.max_threads()))

    def _kernel_scan(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` of padded queries by :func:`index.scan_kernel.search` over the stored codes."""
        words, ids = self._kernel_arrays()
        queries = np.ascontiguousarray(q[:, : self.code_bytes]).view(words.dtype)[:, 0]
        return self._kernel.search(words, ids, queries, k, ascending=self._rows_in_id_order, threads=self.max_threads)

    def _kernel_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(codes as words [N], ids int64 [N])`` in storage order for the kernel, kept until a change.

        Zero-copy views of FAISS's storage (valid while nothing is added or removed: writers are
        excluded during searches), except for 16-bit codes, which FAISS stores padded to 4 bytes:
        those are copied into a compact ``uint16`` array.
        """
        arrays = self._kernel_db
        n = self.ntotal
        if arrays is None or arrays[1].size != n:
            ids = faiss.rev_swig_ptr(self._index.id_map.data(), n)
            if self.code_bytes == self.faiss_bytes:
                flat = faiss.downcast_IndexBinary(self._index.index)
                words = faiss.rev_swig_ptr(flat.xb.data(), n * self.faiss_bytes).view(WORD_DTYPES[self.code_bytes])
            else:
                words = np.ascontiguousarray(self.padded_codes()[:, : self.code_bytes]).view(np.uint16)[:, 0]
            arrays = self._kernel_db = (words, ids)
        return arrays

    # ------------------------------------------------------------------ multi-index hashing
    def _use_mih(self, nq: int) -> bool:
        """MIH is expected to be faster than the scan for ``nq`` queries.

        Once both paths have been timed on this kind of search (single queries, or batches; when
        only one has, the next search takes the other), the faster by measured CPU time per query
        wins (moving means, see :func:`_update_mean`; an MIH search's time includes its fallback
        scans), and the other path is re-timed every :data:`MIH_REPROBE` x (its slowdown, at most
        :data:`MIH_REPROBE_MAX_FACTOR`) searches. Until then, MIH's *estimated* moving mean cost per
        query (in scans, fallbacks included; 0 before the first use) must be below what one query
        costs in a scan of ``nq`` queries spread over the scan's threads (FAISS scans a single query
        on one thread, the compiled kernel splits it), and every :data:`MIH_REPROBE`-th search takes
        the other path. With a GPU accelerator only small batches use MIH.
        """
        if not self.mih_enabled or self.ntotal < self.mih_min_items:
            return False
        if self.accelerator is not None and nq > MIH_SMALL_BATCH:
            return False
        kind = _batch_kind(nq)
        mih_seconds, scan_seconds = self._mih_seconds[kind], self._scan_seconds[kind]
        every = MIH_REPROBE
        if mih_seconds > 0 and scan_seconds > 0:  # both measured on this kind of search: compare
            prefer = mih_seconds < scan_seconds
            # the slower the other path, the rarer its re-measurement (its cost stays under 1/16)
            slowdown = max(mih_seconds, scan_seconds) / min(mih_seconds, scan_seconds)
            every = MIH_REPROBE * min(MIH_REPROBE_MAX_FACTOR, max(1, int(slowdown)))
        elif mih_seconds > 0 and not self._mih_stale:  # time the scan once (stale tables: not timed)
            return False
        elif scan_seconds > 0 and self._mih is not None and not self._mih_stale:  # time MIH once
            return True
        else:
            prefer = self._mih_cost * self._scan_parallelism(nq) < 1.0
        self._mih_skips += 1
        if self._mih_skips % every == 0:
            return not prefer  # now and then, the other path (keeps both measurements current)
        return prefer

    def _ready_mih(self, nq: int) -> MultiIndexHash | None:
        """The MIH tables if this search should use them, rebuilt first if needed and due.

        Rebuilds never make other searches wait: a search that finds a rebuild in progress scans.
        Writers are excluded by :class:`index.store.HashStore` while searches run, so the tables
        cannot go stale during a search.
        """
        if not self._use_mih(nq):
            return None
        if not self._mih_stale:
            return self._mih
        if self.mih_rebuild == "amortized" and self._mih_scan_debt < self.mih_build_seconds:
            return None
        if not self._mih_lock.acquire(blocking=False):
            return None
        try:
            if self._mih_stale:
                self.refresh_mih()
        finally:
            self._mih_lock.release()
        return self._mih

    def refresh_mih(self) -> MultiIndexHash:
        """Build the MIH tables from the current contents now (caller excludes writers)."""
        t0 = time.perf_counter()
        self._mih = MultiIndexHash(
            self.bits, self.ids(), self.padded_codes(), budget_factor=self.mih_budget, scan_ns=self.scan_ns
        )
        self.mih_build_seconds = time.perf_counter() - t0
        self._mih_stale = False
        self._mih_scan_debt = 0.0
        logger.debug(
            "%d-bit MIH tables: %d items, %.1f MB, built in %.3f s",
            self.bits,
            self._mih.ntotal,
            self._mih.nbytes / 1e6,
            self.mih_build_seconds,
        )
        return self._mih

    @property
    def mih_tables(self) -> MultiIndexHash | None:
        """The current MIH tables (``None`` before the first build; may be stale)."""
        return self._mih

    def _fetch_band(self, q: np.ndarray) -> BandFetcher:
        """Band fetcher for :func:`resolve_ties` (see :meth:`_band_prefix_scan` and :meth:`_band_range`)."""

        def fetch(rows: np.ndarray, band_dist: np.ndarray, need: np.ndarray) -> list[np.ndarray]:
            if not (self._rows_in_id_order and _HAS_BITWISE_COUNT):
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
        xb = faiss.rev_swig_ptr(flat.xb.data(), n * self.faiss_bytes).view(WORD_DTYPES[self.faiss_bytes])
        id_map = faiss.rev_swig_ptr(self._index.id_map.data(), n)
        qword = query.view(WORD_DTYPES[self.faiss_bytes])[0]
        found: list[np.ndarray] = []
        total = 0
        for start in range(0, n, _SCAN_CHUNK):
            dist = popcount(xb[start : start + _SCAN_CHUNK] ^ qword)
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
