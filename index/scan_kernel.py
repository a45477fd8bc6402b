"""Exact Hamming top-k by a compiled full scan (numba): XOR + popcount over code words.

The codes of an index are one unsigned word per item (``uint16`` / ``uint32`` / ``uint64`` for 16-,
32- and 64-bit codes, :data:`index.codes.WORD_DTYPES`), the ids an ``int64`` array in the same
order. For every query the kernel returns the first ``k`` items by ``(hamming distance, id)``, the
contract of :mod:`index.exact` (ties by ascending id, padding ``-1``), without sorting the database.

**Per query** the kernel keeps a small candidate buffer (distances and ids) and a threshold key
``(tau, tid)``: an item is a candidate iff ``(d, id) < (tau, tid)``. When the buffer is full it is
*compacted* to the ``k`` smallest keys: a histogram of the candidates' distances (at most 65 bins)
gives the ``k``-th distance ``tau``; candidates closer than ``tau`` stay, and of those at ``tau``
only the smallest ids (one sort of that band), the largest of them becoming ``tid``. At the end the
same selection plus a sort of the ``k`` survivors by ``(distance, id)`` gives the result.

**The hot loop never branches per item.** Rows are read in blocks of :data:`SUB` words; for each
block one vectorised pass ORs together ``popcount(word ^ query) - limit`` computed *in the word
type* (so LLVM packs 16 / 8 / 4 lanes per AVX2 register and lowers popcount to ``vpshufb``): the
subtraction wraps, so the top bit of the OR is set iff some item is closer than ``limit``. Only such
blocks are looked at again, in groups of :data:`GROUP` rows with the same test, and only the items
of a hit group one by one. ``limit`` is ``tau + 1`` in general, or ``tau`` when the rows are
stored in ascending id order (then an item at distance ``tau`` always has a larger id than ``tid``
and can never enter). A limit of 1 is tested as equality (no popcount). With ascending rows a
query stops scanning as soon as ``k`` items at distance 0 are in (the buffer is compacted at that
moment, not only when full), which keeps exact-duplicate clusters (thousands of items at the k-th
distance, as trained hash codes have) cheap. The threshold tightens after every :data:`MIN_SLACK`
(or ``k``, if larger) new candidates, so few items ever reach the per-item code.

**Threads** (``numba.prange``; the count is a per-call argument): a batch is split into contiguous
groups of queries, one task per thread, and each task walks the database in blocks of about
:data:`BLOCK_BYTES` (L2-sized) and runs all of its queries over a block before moving on, so every
code is read from memory once per task instead of once per query (batched search is compute-bound).
A single query (or fewer queries than threads) is split over the database instead: each task scans
one chunk of rows and the per-chunk top-k lists are merged.

The functions are compiled on first use and cached on disk (``cache=True``: in ``NUMBA_CACHE_DIR`` when
set, as in the Docker images, else in ``__pycache__`` here or numba's user cache directory; loading them
takes about a second, compiling them 10-20 s per word type on a busy 2-core machine); everything they
call is in this file, whose time stamp numba checks. :func:`warm_up` compiles (or loads) them for one
word type so that the first query does not wait, :func:`warm_up_in_background` does it in a daemon
thread (:func:`is_ready` tells when it is done). They release the GIL.
With numba's ``workqueue`` threading layer (no OpenMP or TBB runtime found), which must not be
entered by two threads at once, a parallel call that finds another one running runs serially.
"""

from __future__ import annotations

import logging
import threading
import time

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

logger = logging.getLogger(__name__)

#: rows per block of the vectorised filter
SUB = 512
#: rows per group of the second filter level (inside a block with a hit)
GROUP = 32
#: bytes of codes per database block in a task (all queries of the task run over one block in turn)
BLOCK_BYTES = 1 << 17
#: free buffer slots per query beyond ``k`` (at least ``k``): the buffer is compacted when full
MIN_SLACK = 32
#: below this many (query, item) pairs a search runs on one thread (waking threads costs more)
PARALLEL_MIN_WORK = 1 << 18

_WORD_TYPES = (np.uint16, np.uint32, np.uint64)
# per-query state columns
_CNT, _TAU, _TID, _LIM, _ZEROS = 0, 1, 2, 3, 4
_NO_ID = np.iinfo(np.int64).max


# ---------------------------------------------------------------------------------------- intrinsics
@intrinsic
def _popcount_minus(typingctx, word, query, limit):
    """``popcount(word ^ query) - limit`` computed (and wrapping) in the word type."""
    if not (isinstance(word, types.Integer) and word == query == limit):
        return None

    def codegen(context, builder, signature, args):
        w, q, lim = args
        return builder.sub(builder.ctpop(builder.xor(w, q)), lim)

    return word(word, query, limit), codegen


@intrinsic
def _word_or(typingctx, a, b):
    """``a | b`` in the word type (numba's ``|`` would widen small integers to int64 lanes)."""
    if not (isinstance(a, types.Integer) and a == b):
        return None

    def codegen(context, builder, signature, args):
        return builder.or_(args[0], args[1])

    return a(a, b), codegen


@intrinsic
def _as_word(typingctx, value, like):
    """``value`` (any integer) converted to the type of ``like``."""
    if not (isinstance(value, types.Integer) and isinstance(like, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[0], signature.args[0], signature.args[1])

    return like(value, like), codegen


@intrinsic
def _equal_mask(typingctx, word, query):
    """All bits set (in the word type) if ``word == query``, else 0."""
    if not (isinstance(word, types.Integer) and word == query):
        return None

    def codegen(context, builder, signature, args):
        return builder.sext(builder.icmp_unsigned("==", args[0], args[1]), args[0].type)

    return word(word, query), codegen


@intrinsic
def _distance(typingctx, word, query):
    """``popcount(word ^ query)`` as an int64."""
    if not (isinstance(word, types.Integer) and word == query):
        return None

    def codegen(context, builder, signature, args):
        count = builder.ctpop(builder.xor(args[0], args[1]))
        return context.cast(builder, count, word, types.int64)

    return types.int64(word, query), codegen


# ---------------------------------------------------------------------------------------- one query
@njit(cache=True, nogil=True)
def _any_closer(words, lo, hi, qw, lim, limw, top):
    """True iff some row in ``[lo, hi)`` is at distance < ``lim`` from ``qw`` (vectorised).

    ``limw`` is ``lim`` in the word type, ``top`` its highest bit. Distance < 1 is equality, a
    cheaper test (no popcount): the usual case of 16-bit codes at 1M items.
    """
    block = words[lo:hi]
    acc = _as_word(0, qw)
    if lim == 1:
        for j in range(block.size):
            acc = _word_or(acc, _equal_mask(block[j], qw))
    else:
        for j in range(block.size):
            acc = _word_or(acc, _popcount_minus(block[j], qw, limw))
    return acc >= top


@njit(cache=True, nogil=True)
def _compact(bd, bi, cnt, k, hist, band):
    """Keep the ``k`` smallest ``(distance, id)`` of ``bd[:cnt], bi[:cnt]`` (``cnt > k``), unordered.

    Returns ``(k, tau, tid)``: the largest kept key, i.e. the threshold of later candidates.
    """
    hist[:] = 0
    for j in range(cnt):
        hist[bd[j]] += 1
    below = 0
    tau = 0
    while below + hist[tau] < k:
        below += hist[tau]
        tau += 1
    need = k - below
    nb = 0
    for j in range(cnt):
        if bd[j] == tau:
            band[nb] = bi[j]
            nb += 1
    tid = np.sort(band[:nb])[need - 1]  # the need-th smallest id of the band
    w = 0
    for j in range(cnt):
        d = bd[j]
        if d < tau or (d == tau and bi[j] <= tid):
            bd[w] = d
            bi[w] = bi[j]
            w += 1
    return w, np.int64(tau), tid


@njit(cache=True, nogil=True)
def _finish(bd, bi, cnt, k, hist, band, out_d, out_i):
    """Write the first ``min(cnt, k)`` candidates by ``(distance, id)`` to ``out_*``, pad the rest; count."""
    if cnt > k:
        cnt = _compact(bd, bi, cnt, k, hist, band)[0]
    order = np.argsort(bi[:cnt])  # ids are distinct: any sort is stable enough
    hist[:] = 0
    for j in range(cnt):
        hist[bd[j]] += 1
    start = 0
    for d in range(hist.size):  # counting sort by distance, ids ascending inside each distance
        c = hist[d]
        hist[d] = start
        start += c
    for j in range(cnt):
        r = order[j]
        pos = hist[bd[r]]
        hist[bd[r]] = pos + 1
        out_d[pos] = bd[r]
        out_i[pos] = bi[r]
    out_d[cnt:] = -1
    out_i[cnt:] = -1
    return cnt


@njit(cache=True, nogil=True)
def _scan_rows(words, ids, lo, hi, qw, k, ascending, state, bd, bi, hist, band):
    """Add the candidates among rows ``[lo, hi)`` to one query's buffer.

    ``state``: candidates buffered, threshold ``(tau, tid)``, filter limit, candidates at distance 0.
    """
    lim = state[_LIM]
    if lim == 0:
        return
    cnt, tau, tid, zeros = state[_CNT], state[_TAU], state[_TID], state[_ZEROS]
    cap = bd.size
    top = _as_word(1 << (words.itemsize * 8 - 1), qw)
    limw = _as_word(lim, qw)
    for s in range(lo, hi, SUB):
        e = min(s + SUB, hi)
        if not _any_closer(words, s, e, qw, lim, limw, top):
            continue
        for g in range(s, e, GROUP):
            ge = min(g + GROUP, e)
            if not _any_closer(words, g, ge, qw, lim, limw, top):
                continue
            for r in range(g, ge):
                d = _distance(words[r], qw)
                if d < tau or (d == tau and ids[r] < tid):
                    bd[cnt] = d
                    bi[cnt] = ids[r]
                    cnt += 1
                    zeros += d == 0
                    # compact when full, or (ascending rows) as soon as k items at distance 0 are in:
                    # then nothing can enter any more
                    if (cnt == cap or (ascending and zeros >= k)) and cnt > k:
                        cnt, tau, tid = _compact(bd, bi, cnt, k, hist, band)
                        zeros = min(zeros, k)
                        lim = tau if ascending else tau + 1
                        limw = _as_word(lim, qw)
                        if lim == 0:
                            state[_CNT], state[_TAU], state[_TID], state[_LIM] = cnt, tau, tid, lim
                            return
    state[_CNT], state[_TAU], state[_TID], state[_LIM], state[_ZEROS] = cnt, tau, tid, lim, zeros


@njit(cache=True, nogil=True)
def _run_task(words, ids, queries, q0, q1, lo, hi, k, ascending, block, part_d, part_i, part_n, c):
    """Top-``k`` of queries ``[q0, q1)`` over rows ``[lo, hi)`` into ``part_*[q, c]``, block by block."""
    nqt = q1 - q0
    bits = words.itemsize * 8
    cap = min(k + max(k, MIN_SLACK), max(hi - lo, 1))
    bd = np.empty((nqt, cap), dtype=np.uint8)
    bi = np.empty((nqt, cap), dtype=np.int64)
    state = np.empty((nqt, 5), dtype=np.int64)
    state[:, _CNT] = 0
    state[:, _ZEROS] = 0
    state[:, _TAU] = bits + 1  # no threshold yet: every item is a candidate
    state[:, _TID] = _NO_ID
    state[:, _LIM] = bits + 1
    hist = np.empty(bits + 2, dtype=np.int64)
    band = np.empty(cap, dtype=np.int64)
    for b in range(lo, hi, block):
        be = min(b + block, hi)
        for j in range(nqt):
            _scan_rows(words, ids, b, be, queries[q0 + j], k, ascending, state[j], bd[j], bi[j], hist, band)
    for j in range(nqt):
        part_n[q0 + j, c] = _finish(bd[j], bi[j], state[j, _CNT], k, hist, band, part_d[q0 + j, c], part_i[q0 + j, c])


@njit(cache=True, nogil=True, parallel=True)
def _search_parallel(words, ids, queries, k, ascending, block, tasks, part_d, part_i, part_n):
    """Run every task (row: q0, q1, lo, hi, chunk) on numba's thread pool."""
    for t in prange(tasks.shape[0]):
        q0, q1, lo, hi, c = tasks[t, 0], tasks[t, 1], tasks[t, 2], tasks[t, 3], tasks[t, 4]
        _run_task(words, ids, queries, q0, q1, lo, hi, k, ascending, block, part_d, part_i, part_n, c)


@njit(cache=True, nogil=True)
def _search_serial(words, ids, queries, k, ascending, block):
    """All queries over all rows on the calling thread: ``(distances [Q, 1, k], ids [Q, 1, k])``."""
    nq = queries.size
    out_d = np.empty((nq, 1, k), dtype=np.int32)
    out_i = np.empty((nq, 1, k), dtype=np.int64)
    out_n = np.empty((nq, 1), dtype=np.int64)
    _run_task(words, ids, queries, 0, nq, 0, words.size, k, ascending, block, out_d, out_i, out_n, 0)
    return out_d, out_i


@njit(cache=True, nogil=True)
def _merge(part_d, part_i, part_n, k, out_d, out_i):
    """Merge the per-chunk top-``k`` lists of every query into ``out_*`` (order of index.exact)."""
    nq, nchunks = part_n.shape
    total = nchunks * k
    bd = np.empty(total, dtype=np.uint8)
    bi = np.empty(total, dtype=np.int64)
    hist = np.empty(66, dtype=np.int64)
    band = np.empty(total, dtype=np.int64)
    for q in range(nq):
        cnt = 0
        for c in range(nchunks):
            for j in range(part_n[q, c]):
                bd[cnt] = part_d[q, c, j]
                bi[cnt] = part_i[q, c, j]
                cnt += 1
        _finish(bd, bi, cnt, k, hist, band, out_d[q], out_i[q])


# ---------------------------------------------------------------------------------------- Python API
def max_threads() -> int:
    """Threads numba may use in this process (``NUMBA_NUM_THREADS``, by default the CPU count)."""
    return int(numba.config.NUMBA_NUM_THREADS)


def plan_tasks(nq: int, n: int, threads: int) -> np.ndarray:
    """Tasks ``[T, 5]`` (q0, q1, lo, hi, chunk) for ``nq`` queries over ``n`` rows on ``threads`` threads.

    With at least as many queries as threads: one group of consecutive queries per thread, over all
    rows (chunk 0). With fewer: every query is split into ``ceil(threads / nq)`` chunks of rows
    (multiples of :data:`SUB` rows, at most one chunk per :data:`SUB` rows).
    """
    if threads <= 1:
        return np.array([[0, nq, 0, n, 0]], dtype=np.int64)
    if nq >= threads:
        bounds = [nq * g // threads for g in range(threads + 1)]
        return np.array([[bounds[g], bounds[g + 1], 0, n, 0] for g in range(threads)], dtype=np.int64)
    nchunks = min(_ceil_div(threads, nq), max(1, n // SUB))
    step = _ceil_div(_ceil_div(n, nchunks), SUB) * SUB  # rows per chunk, whole blocks
    rows = [[q, q + 1, lo, min(lo + step, n), c] for q in range(nq) for c, lo in enumerate(range(0, n, step))]
    return np.array(rows, dtype=np.int64)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def block_rows(word_dtype: np.dtype | type) -> int:
    """Rows per database block of a task for codes of this word type."""
    return max(SUB, BLOCK_BYTES // np.dtype(word_dtype).itemsize // SUB * SUB)


_BLOCK_ROWS = {np.dtype(t).itemsize: block_rows(t) for t in _WORD_TYPES}
_parallel_lock = threading.Lock()
_warm_lock = threading.Lock()
_warm: set[tuple[str, bool]] = set()  # (word type, parallel) compiled or loaded in this process
_started: set[tuple[str, bool]] = set()  # background warm-ups started
_started_lock = threading.Lock()


def threading_layer() -> str:
    """numba's threading layer (``omp``, ``tbb`` or ``workqueue``), or ``unknown`` before any parallel run."""
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel function has run yet
        return "unknown"


def search(
    words: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    ascending: bool = False,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of every query by ``(distance, id)``.

    Args:
        words: ``uint16/32/64 [N]`` codes as words.
        ids: ``int64 [N]`` distinct non-negative ids of the rows.
        queries: ``[Q]`` query codes as words of the same type.
        k: results per query (>= 1).
        ascending: the rows are stored in strictly ascending id order (enables the tie cut-off).
        threads: at most this many threads (1: the calling thread only); small searches (fewer than
            :data:`PARALLEL_MIN_WORK` query-item pairs) always run on the calling thread.

    Returns:
        ``(distances int32 [Q, k], ids int64 [Q, k])``, padded with -1 (:mod:`index.exact`).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    words = np.ascontiguousarray(words)
    if words.dtype.type not in _WORD_TYPES:
        raise ValueError(f"codes must be one of {[t.__name__ for t in _WORD_TYPES]} words, got {words.dtype}")
    queries = np.ascontiguousarray(queries, dtype=words.dtype)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, nq = words.size, queries.size
    if ids.size != n:
        raise ValueError(f"{ids.size} ids for {n} codes")
    if n == 0 or nq == 0:
        return np.full((nq, k), -1, dtype=np.int32), np.full((nq, k), -1, dtype=np.int64)
    kk = min(k, n)
    block = _BLOCK_ROWS[words.dtype.itemsize]
    if threads > 1:
        threads = 1 if nq * n < PARALLEL_MIN_WORK else min(int(threads), max_threads())
    found = None
    if threads > 1:
        _warm_up(words.dtype, True)
        found = _search_threads(words, ids, queries, kk, bool(ascending), block, threads)
    if found is None:
        part_d, part_i = _search_serial(words, ids, queries, kk, bool(ascending), block)
        found = part_d.reshape(nq, kk), part_i.reshape(nq, kk)
    if kk == k:
        return found
    out_d = np.full((nq, k), -1, dtype=np.int32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    out_d[:, :kk], out_i[:, :kk] = found
    return out_d, out_i


def _search_threads(
    words: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, ascending: bool, block: int, threads: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`search` on ``threads`` threads; ``None`` when numba's workqueue layer is busy (run serially)."""
    nq = queries.size
    tasks = plan_tasks(nq, words.size, threads)
    nchunks = int(tasks[-1, 4]) + 1
    part_d = np.empty((nq, nchunks, k), dtype=np.int32)
    part_i = np.empty((nq, nchunks, k), dtype=np.int64)
    part_n = np.empty((nq, nchunks), dtype=np.int64)
    args = (words, ids, queries, k, ascending, block, tasks, part_d, part_i, part_n)
    if threading_layer() != "workqueue":
        numba.set_num_threads(threads)  # a per-thread setting
        _search_parallel(*args)
    elif _parallel_lock.acquire(blocking=False):  # workqueue is not re-entrant: one parallel call at a time
        try:
            numba.set_num_threads(threads)
            _search_parallel(*args)
        finally:
            _parallel_lock.release()
    else:
        return None
    if nchunks == 1:
        return part_d.reshape(nq, k), part_i.reshape(nq, k)
    out_d = np.empty((nq, k), dtype=np.int32)
    out_i = np.empty((nq, k), dtype=np.int64)
    _merge(part_d, part_i, part_n, k, out_d, out_i)
    return out_d, out_i


def is_ready(word_dtype: np.dtype | type, *, parallel: bool = False) -> bool:
    """The kernels a search with these settings may call are compiled (or loaded) in this process."""
    name = np.dtype(word_dtype).name
    return (name, False) in _warm and (not parallel or (name, True) in _warm)


def warm_up_in_background(word_dtype: np.dtype | type, *, parallel: bool = False) -> None:
    """:func:`warm_up` in a daemon thread (once per word type and mode); see :func:`is_ready`.

    A failure is logged (the callers keep scanning with FAISS).
    """
    dtype = _check_word_type(word_dtype)
    key = (dtype.name, parallel)
    with _started_lock:
        if key in _started or is_ready(dtype, parallel=parallel):
            return
        _started.add(key)

    def run() -> None:
        try:
            _warm_up(dtype, parallel)
        except Exception:
            logger.warning("compiling the %s scan kernel failed; searches keep FAISS's scan", dtype.name, exc_info=True)

    threading.Thread(target=run, name=f"scan-kernel-{dtype.name}", daemon=True).start()


def _check_word_type(word_dtype: np.dtype | type) -> np.dtype:
    dtype = np.dtype(word_dtype)
    if dtype.type not in _WORD_TYPES:
        raise ValueError(f"no scan kernel for {dtype}; word types are {[t.__name__ for t in _WORD_TYPES]}")
    return dtype


def warm_up(word_dtype: np.dtype | type, *, parallel: bool = False) -> None:
    """Compile (or load from numba's on-disk cache) the kernels for one word type.

    The single-thread kernel always; with ``parallel`` also the multi-threaded driver and the merge
    (only needed by searches with ``threads > 1``; compiling it takes longest). Later calls return
    at once; a call while another thread compiles waits for it.
    """
    _warm_up(_check_word_type(word_dtype), parallel)


def _warm_up(dtype: np.dtype, parallel: bool) -> None:
    if (dtype.name, parallel) in _warm:
        return
    with _warm_lock:
        words = np.arange(2 * SUB, dtype=dtype)
        ids = np.arange(words.size, dtype=np.int64)
        for key in [(dtype.name, False), (dtype.name, True)][: 1 + parallel]:  # serial always, parallel too
            if key in _warm:
                continue
            t0 = time.perf_counter()
            if key[1]:  # one query in two chunks: the parallel driver and the merge
                _search_threads(words, ids, words[:1], 2, False, block_rows(dtype), 2)
            else:
                _search_serial(words, ids, words[:1], 2, False, block_rows(dtype))
            _warm.add(key)
            logger.debug(
                "scan kernel for %s words (%s) ready in %.2f s; numba threading layer: %s",
                dtype.name,
                "parallel" if key[1] else "serial",
                time.perf_counter() - t0,
                threading_layer(),
            )
