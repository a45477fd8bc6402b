"""Retrieval metrics for binary hash codes (Hamming ranking), pure numpy.

Codes are packed sign bits as :mod:`index.codes` makes them: ``uint8 [N, ceil(bits / 8)]``, the last
byte padded with zero bits (which never changes a Hamming distance as long as queries and database use
the same length); the distances themselves come from :func:`index.codes.hamming_words`. Labels are
integer class ids ``[N]``; a database item is *relevant* to a query iff it has the same label.

Ranking convention (every function here): the database is sorted by Hamming distance to the query,
ascending, and items at equal distance keep database order (a stable sort). ``map_at_k_tie_aware``
instead averages exactly over a uniformly random order inside each tie group.

Top-K convention (DJSRH / DeepHash): ``AP@K = (1 / R_K) * sum_{r < K, item r relevant} P(r)`` where
``P(r)`` is the precision of the top ``r + 1`` items and ``R_K`` the number of relevant items among the
top K; a query with ``R_K = 0`` scores 0 and still counts in the mean. ``K > N`` is treated as ``K = N``.

All functions work on chunks of queries so that memory stays at ``O(chunk * N)``; the whole ModelNet40
protocol (1,600 queries x 8,243 database items) takes well under a second per code length.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np

from index.codes import code_words, hamming_words

logger = logging.getLogger(__name__)

#: Queries per chunk; a chunk holds a few ``[chunk, N]`` arrays (~10-20 MB at N = 8,243).
DEFAULT_CHUNK = 256

__all__ = [
    "average_precision_at_k",
    "average_precision_at_k_tie_aware",
    "hamming_matrix",
    "map_at_k",
    "map_at_k_tie_aware",
    "precision_at_k_curve",
    "precision_recall_by_radius",
]


# --------------------------------------------------------------------------------------------- helpers
def _check_codes(q_codes: np.ndarray, db_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(q_codes)
    db = np.asarray(db_codes)
    if q.ndim != 2 or db.ndim != 2:
        raise ValueError(f"codes must be 2-D packed uint8 arrays, got shapes {q.shape} and {db.shape}")
    if q.dtype != np.uint8 or db.dtype != np.uint8:
        raise ValueError(f"codes must be np.packbits output (uint8), got {q.dtype} and {db.dtype}")
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"query and database code lengths differ: {q.shape[1]} vs {db.shape[1]} bytes")
    return q, db


def _check_labels(labels: np.ndarray, n: int, what: str) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"{what} labels must have shape [{n}], got {lab.shape}")
    return lab


def _check_k(k: int | None, n_db: int) -> int:
    if n_db < 1:
        raise ValueError("the database is empty")
    if k is None:
        return n_db
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return min(k, n_db)


def _chunks(n: int, chunk: int) -> Iterator[slice]:
    chunk = max(1, int(chunk))
    for start in range(0, n, chunk):
        yield slice(start, min(start + chunk, n))


def _iter_blocks(
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    q_labels: np.ndarray,
    db_labels: np.ndarray,
    chunk: int,
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Yield ``(query slice, dist int32 [q, N], relevant bool [q, N])`` per chunk of queries."""
    q, db = _check_codes(q_codes, db_codes)
    ql = _check_labels(q_labels, q.shape[0], "query")
    dl = _check_labels(db_labels, db.shape[0], "database")
    qw, dw = code_words(q), code_words(db)
    for sl in _chunks(q.shape[0], chunk):
        yield sl, hamming_words(qw[sl], dw), ql[sl, None] == dl[None, :]


def _n_bits(codes: np.ndarray) -> int:
    return 8 * codes.shape[1]


def _distance_histograms(dist: np.ndarray, rel: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, count all / relevant database items at each distance.

    dist int [q, N] in ``[0, n_bins)``, rel bool [q, N] -> (n int64 [q, n_bins], m int64 [q, n_bins]).
    """
    nq = dist.shape[0]
    idx = dist.astype(np.int64) + n_bins * np.arange(nq, dtype=np.int64)[:, None]
    n = np.bincount(idx.ravel(), minlength=nq * n_bins).reshape(nq, n_bins)
    m = np.bincount(idx[rel], minlength=nq * n_bins).reshape(nq, n_bins)
    return n, m


def _stable_order(dist: np.ndarray, k: int) -> np.ndarray:
    """dist int [q, N] -> int64 [q, k]: database indices of the top k, ties in database order."""
    small = dist.astype(np.uint8) if dist.max(initial=0) < 256 else dist  # uint8 -> radix sort
    return np.argsort(small, axis=1, kind="stable")[:, :k]


# ------------------------------------------------------------------------------------------- distances
def hamming_matrix(q_codes: np.ndarray, db_codes: np.ndarray, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Hamming distances between packed codes.

    Args:
        q_codes: uint8 [Q, B] packed query codes.
        db_codes: uint8 [N, B] packed database codes.
        chunk: queries per block (bounds temporary memory to ``O(chunk * N)``).

    Returns:
        int32 [Q, N], ``popcount(q XOR db)``.
    """
    q, db = _check_codes(q_codes, db_codes)
    out = np.empty((q.shape[0], db.shape[0]), dtype=np.int32)
    qw, dw = code_words(q), code_words(db)
    for sl in _chunks(q.shape[0], chunk):
        out[sl] = hamming_words(qw[sl], dw)
    return out


# ------------------------------------------------------------------------------------------------- mAP
def average_precision_at_k(
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    q_labels: np.ndarray,
    db_labels: np.ndarray,
    k: int | None,
    chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """AP@K of every query under Hamming ranking with ties in database order.

    Args:
        q_codes: uint8 [Q, B]; db_codes: uint8 [N, B]; q_labels: [Q]; db_labels: [N].
        k: cut-off; ``None`` or ``k > N`` means ``N``.

    Returns:
        float64 [Q]; 0 for a query with no relevant item in its top K.
    """
    n_db = _check_codes(q_codes, db_codes)[1].shape[0]
    kk = _check_k(k, n_db)
    out = np.zeros(np.asarray(q_codes).shape[0], dtype=np.float64)
    ranks = np.arange(1, kk + 1, dtype=np.float64)
    db_labels = np.asarray(db_labels)
    for sl, dist, _rel in _iter_blocks(q_codes, db_codes, q_labels, db_labels, chunk):
        order = _stable_order(dist, kk)  # [q, K]
        rel = db_labels[order] == np.asarray(q_labels)[sl, None]  # bool [q, K]
        hits = np.cumsum(rel, axis=1)  # relevant items up to each rank
        n_rel = hits[:, -1]
        prec_sum = np.sum((hits / ranks) * rel, axis=1)
        out[sl] = np.divide(prec_sum, n_rel, out=np.zeros_like(prec_sum), where=n_rel > 0)
    return out


def map_at_k(
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    q_labels: np.ndarray,
    db_labels: np.ndarray,
    k: int | None,
    chunk: int = DEFAULT_CHUNK,
) -> float:
    """mAP@K: the mean over all queries of :func:`average_precision_at_k` (zero-AP queries count)."""
    ap = average_precision_at_k(q_codes, db_codes, q_labels, db_labels, k, chunk=chunk)
    return float(ap.mean()) if ap.size else 0.0


def _harmonic(n: int) -> np.ndarray:
    """float64 [n + 1]: ``H[t] = sum_{i=1..t} 1/i`` (H[0] = 0)."""
    h = np.zeros(n + 1, dtype=np.float64)
    h[1:] = np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64))
    return h


def _expected_precision_sum(
    n: np.ndarray, m: np.ndarray, s: np.ndarray, a: np.ndarray, h_span: np.ndarray
) -> np.ndarray:
    """Expected sum of precisions at the relevant positions of a uniformly shuffled block.

    A block of ``n`` items, ``m`` of them relevant, occupies ranks ``s .. s+n-1`` (0-based), after ``a``
    relevant items. With ``h_span = H(s+n) - H(s)``:

        E = sum_{j<n} P(j relevant) * (a + 1 + E[relevant before j | j relevant]) / (s + j + 1)
          = sum_{j<n} (m/n) * (a + 1 + j (m-1)/(n-1)) / (s + j + 1)
          = (m/n) * [ (a+1) * h_span + (m-1)/(n-1) * (n - (s+1) * h_span) ]

    using ``sum_j j/(s+j+1) = n - (s+1) h_span``; the second term is 0 when ``n <= 1``.
    All inputs broadcast; ``n = 0`` gives 0.
    """
    n = n.astype(np.float64)
    m = m.astype(np.float64)
    safe_n = np.where(n > 0, n, 1.0)
    pair = np.where(n > 1, (m - 1.0) / np.where(n > 1, n - 1.0, 1.0), 0.0)
    val = (m / safe_n) * ((a + 1.0) * h_span + pair * (n - (s + 1.0) * h_span))
    return np.where((n > 0) & (m > 0), val, 0.0)


def average_precision_at_k_tie_aware(
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    q_labels: np.ndarray,
    db_labels: np.ndarray,
    k: int | None,
    chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Exact expected AP@K per query over a uniformly random order inside each tie group.

    Definition: ``E[AP@K]`` where the database is sorted by Hamming distance and the items at each
    distance are put in an independent, uniformly random order (AP@K as in :func:`average_precision_at_k`,
    0 when nothing relevant is in the top K). This is the exact expectation of the ratio, not a ratio
    of expectations, computed in closed form:

    * Tie groups lying entirely inside the top K contribute a fixed number of relevant items ``m_g``
      and an expected precision sum given by :func:`_expected_precision_sum` (precision at a relevant
      position only depends on relevant counts, and the group's count before it is fixed).
    * The one group that contains rank K-1, spanning ranks ``[s, e)`` with ``n`` items, ``m``
      relevant, puts ``X ~ Hypergeometric(n, m, L = K - s)`` relevant items into the top K; given
      ``X = x`` those ``x`` are uniformly placed among the ``L`` top-K slots, so its expected
      precision sum is the same formula with ``(n, m) -> (L, x)``. Groups beyond K do not matter.
    * With ``C`` = relevant items in the full groups and ``G`` their expected precision sum,
      ``E[AP@K] = sum_x P(X = x) * (G + S(x)) / (C + x)`` (terms with ``C + x = 0`` are 0); the
      denominator is constant given ``x``, so linearity of expectation applies inside each term.

    Equals :func:`average_precision_at_k` whenever there are no ties (all groups of size 1).

    Returns:
        float64 [Q].
    """
    q_arr = np.asarray(q_codes)
    n_db = _check_codes(q_codes, db_codes)[1].shape[0]
    kk = _check_k(k, n_db)
    out = np.zeros(q_arr.shape[0], dtype=np.float64)
    if q_arr.shape[0] == 0:
        return out
    n_bins = _n_bits(q_arr) + 1
    harm = _harmonic(n_db)
    log_fact = np.array([math.lgamma(t + 1.0) for t in range(n_db + 1)], dtype=np.float64)

    for sl, dist, rel in _iter_blocks(q_codes, db_codes, q_labels, db_labels, chunk):
        n, m = _distance_histograms(dist, rel, n_bins)  # [q, D]
        end = np.cumsum(n, axis=1)  # exclusive end rank of each group
        start = end - n
        a = np.cumsum(m, axis=1) - m  # relevant items before each group
        rows = np.arange(n.shape[0])
        # the group holding rank K-1: first distance whose cumulative count reaches K
        g_star = np.argmax(end >= kk, axis=1)  # [q]
        full = np.arange(n_bins)[None, :] < g_star[:, None]  # groups entirely within the top K
        h_span = harm[end] - harm[start]
        g_sum = np.sum(np.where(full, _expected_precision_sum(n, m, start, a, h_span), 0.0), axis=1)
        c = a[rows, g_star].astype(np.float64)  # relevant items in the full groups
        s_star = start[rows, g_star]
        n_star = n[rows, g_star]
        m_star = m[rows, g_star]
        length = kk - s_star  # L: slots of the straddling group inside the top K (>= 1)
        # hypergeometric P(X = x), x = 0..max m over the chunk
        x = np.arange(int(m_star.max()) + 1)[None, :]  # [1, X]
        lo = np.maximum(0, length - (n_star - m_star))[:, None]
        hi = np.minimum(m_star, length)[:, None]
        valid = (x >= lo) & (x <= hi)
        xs = np.where(valid, x, 0)

        def lf(v: np.ndarray) -> np.ndarray:
            return log_fact[np.clip(v, 0, n_db)]

        log_p = (
            lf(m_star[:, None])
            - lf(xs)
            - lf(m_star[:, None] - xs)
            + lf((n_star - m_star)[:, None])
            - lf(length[:, None] - xs)
            - lf((n_star - m_star)[:, None] - length[:, None] + xs)
            - (lf(n_star) - lf(length) - lf(n_star - length))[:, None]
        )
        p = np.where(valid, np.exp(np.where(valid, log_p, 0.0)), 0.0)  # [q, X]
        h_top = (harm[kk] - harm[s_star])[:, None]
        s_x = _expected_precision_sum(length[:, None], xs, s_star[:, None], c[:, None], h_top)
        denom = c[:, None] + xs
        term = np.divide(g_sum[:, None] + s_x, denom, out=np.zeros_like(s_x), where=valid & (denom > 0))
        out[sl] = np.sum(p * term, axis=1)
    return out


def map_at_k_tie_aware(
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    q_labels: np.ndarray,
    db_labels: np.ndarray,
    k: int | None,
    chunk: int = DEFAULT_CHUNK,
) -> float:
    """Tie-aware mAP@K: mean over queries of :func:`average_precision_at_k_tie_aware`.

    Since the mean is linear and the tie orders of different queries are independent, this is exactly
    the expected mAP@K over random tie-breaking.
    """
    ap = average_precision_at_k_tie_aware(q_codes, db_codes, q_labels, db_labels, k, chunk=chunk)
    return float(ap.mean()) if ap.size else 0.0


# -------------------------------------------------------------------------------------- curves
def precision_at_k_curve(
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    q_labels: np.ndarray,
    db_labels: np.ndarray,
    ks: Sequence[int] | np.ndarray,
    chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Mean precision of the top K (ties in database order) for each K in ``ks``.

    Args:
        q_codes: uint8 [Q, B]; db_codes: uint8 [N, B]; q_labels: [Q]; db_labels: [N].
        ks: cut-offs (each >= 1); a K above N is evaluated at N (precision of the whole database).

    Returns:
        float64 [len(ks)], ``mean_q (relevant in top K) / K``.
    """
    n_db = _check_codes(q_codes, db_codes)[1].shape[0]
    ks_arr = np.array([_check_k(int(k), n_db) for k in ks], dtype=np.int64)
    n_q = np.asarray(q_codes).shape[0]
    total = np.zeros(len(ks_arr), dtype=np.float64)
    if n_q == 0 or len(ks_arr) == 0:
        return total
    k_max = int(ks_arr.max())
    db_labels = np.asarray(db_labels)
    for sl, dist, _rel in _iter_blocks(q_codes, db_codes, q_labels, db_labels, chunk):
        order = _stable_order(dist, k_max)
        hits = np.cumsum(db_labels[order] == np.asarray(q_labels)[sl, None], axis=1)  # [q, k_max]
        total += hits[:, ks_arr - 1].sum(axis=0) / ks_arr
    return total / n_q


def precision_recall_by_radius(
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    q_labels: np.ndarray,
    db_labels: np.ndarray,
    max_radius: int | None = None,
    empty: Literal["exclude", "zero"] = "exclude",
    chunk: int = DEFAULT_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Hamming-radius retrieval: precision and recall for radius r = 0..max_radius.

    At radius r a query retrieves every database item at distance <= r.

    * precision[r]: mean over queries of ``relevant retrieved / retrieved``. A query that retrieves
      nothing has no precision: with ``empty="exclude"`` (default) it is left out of the mean (and
      ``precision[r]`` is NaN when no query retrieves anything), with ``empty="zero"`` it counts as 0.
    * recall[r]: mean over queries of ``relevant retrieved / relevant in the database``; queries with
      no relevant item in the database are left out (NaN if there is none at all).

    Args:
        max_radius: largest radius, default (and at most meaningful) the code length in bits.

    Returns:
        (precision float64 [max_radius + 1], recall float64 [max_radius + 1]).
    """
    if empty not in ("exclude", "zero"):
        raise ValueError(f"empty must be 'exclude' or 'zero', got {empty!r}")
    q_arr = np.asarray(q_codes)
    n_bins = _n_bits(q_arr) + 1 if q_arr.ndim == 2 else 1
    r_max = n_bins - 1 if max_radius is None else int(max_radius)
    if r_max < 0:
        raise ValueError(f"max_radius must be >= 0, got {r_max}")
    prec_sum = np.zeros(r_max + 1)
    prec_cnt = np.zeros(r_max + 1)
    rec_sum = np.zeros(r_max + 1)
    rec_cnt = 0
    for _sl, dist, rel in _iter_blocks(q_codes, db_codes, q_labels, db_labels, chunk):
        n, m = _distance_histograms(dist, rel, n_bins)
        retrieved = np.cumsum(n, axis=1)  # [q, D]
        hit = np.cumsum(m, axis=1)
        idx = np.minimum(np.arange(r_max + 1), n_bins - 1)  # radius beyond the code length = all
        retrieved, hit = retrieved[:, idx], hit[:, idx]
        has = retrieved > 0
        prec = np.divide(hit, retrieved, out=np.zeros(hit.shape), where=has)
        prec_sum += prec.sum(axis=0)
        prec_cnt += has.sum(axis=0) if empty == "exclude" else hit.shape[0]
        n_rel = m.sum(axis=1)
        ok = n_rel > 0
        rec_sum += (hit[ok] / n_rel[ok, None]).sum(axis=0)
        rec_cnt += int(ok.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(prec_cnt > 0, prec_sum / np.maximum(prec_cnt, 1), np.nan)
        recall = rec_sum / rec_cnt if rec_cnt > 0 else np.full(r_max + 1, np.nan)
    return precision, recall
