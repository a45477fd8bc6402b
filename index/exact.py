"""Exact top-k semantics shared by every search path.

**Result order (the contract of every ``search`` in this package).** For each query the result row
is the first ``k`` items of the database sorted by the key ``(hamming_distance, item_id)``, both
ascending. So ties are ordered by ascending id, and when the ``k``-th distance has more ties than fit
in the row, the smallest ids win. Rows with fewer than ``k`` items are padded with
``id = PAD_ID (-1)`` and ``distance = PAD_DISTANCE (-1)``.

FAISS (and Milvus) return *a* correct k-nearest set but make no promise about which of several
equally distant items they keep. :func:`resolve_ties` turns such a candidate list into the exact
result: the backend is asked for ``k + margin`` candidates; if the last candidate of a row is
strictly farther than the ``k``-th, the whole ``k``-th distance band is among the candidates and a
sort by ``(distance, id)`` is exact. Otherwise ("band overflow") every item closer than the ``k``-th
distance ``d`` is still among the candidates (there are fewer than ``k`` of them), and the backend
is asked for the ``need`` smallest ids at distance exactly ``d``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from index.codes import as_codes, hamming_distances

PAD_ID = -1
PAD_DISTANCE = -1

_BIG_DISTANCE = np.iinfo(np.int32).max
_BIG_ID = np.iinfo(np.int64).max
_BIG_KEY = np.iinfo(np.int64).max
KEY_SHIFT = 47  # ids below 2**47 share an int64 sort key with distances up to 64

#: ``fetch_band(query_rows, band_distance, need) -> [ids per row]``: for query ``query_rows[i]``,
#: ids of items at distance exactly ``band_distance[i]`` that include the ``need[i]`` smallest such
#: ids (more may be returned; they are sorted and cut by the caller).
BandFetcher = Callable[[np.ndarray, np.ndarray, np.ndarray], list[np.ndarray]]


def check_k(k: int) -> int:
    """Return ``k`` as an int, raising ``ValueError`` unless it is an integer >= 1."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or int(k) < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def empty_result(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(distances, ids)`` of shape ``[nq, k]`` filled with the padding values."""
    return np.full((nq, k), PAD_DISTANCE, dtype=np.int32), np.full((nq, k), PAD_ID, dtype=np.int64)


def _sort_rows(dist: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort every row by ``(distance, id)``, invalid entries (``id < 0``) last; int64 results."""
    valid = ids >= 0
    if ids.size and ids.max() >= 1 << KEY_SHIFT:  # huge ids: two-key sort
        d = np.where(valid, dist, _BIG_DISTANCE).astype(np.int64)
        i = np.where(valid, ids, _BIG_ID)
        order = np.lexsort((i, d), axis=-1)
        return np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)
    # one int64 key per entry (distance <= 64 in the high bits, id below): a single plain sort
    key = np.where(valid, (dist.astype(np.int64) << KEY_SHIFT) | ids, _BIG_KEY)
    key.sort(axis=1)
    missing = key == _BIG_KEY
    d = np.where(missing, _BIG_DISTANCE, key >> KEY_SHIFT)
    i = np.where(missing, _BIG_ID, key & ((1 << KEY_SHIFT) - 1))
    return d, i


def _finish(d: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Truncate/pad sorted rows to ``k`` columns and put the padding values in place."""
    nq, width = d.shape
    out_d, out_i = empty_result(nq, k)
    w = min(width, k)
    valid = i[:, :w] != _BIG_ID
    out_d[:, :w] = np.where(valid, d[:, :w], PAD_DISTANCE)
    out_i[:, :w] = np.where(valid, i[:, :w], PAD_ID)
    return out_d, out_i


def resolve_ties(
    cand_dist: np.ndarray,
    cand_ids: np.ndarray,
    k: int,
    ntotal: int,
    fetch_band: BandFetcher,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Turn exact k-NN candidates with arbitrary tie order into the exact result (module docstring).

    Args:
        cand_dist, cand_ids: ``[Q, kc]`` candidates from an exact ``kc``-nearest search, ``kc > k``
            unless ``kc >= ntotal``; missing entries have ``id < 0``.
        k: result width.
        ntotal: number of items in the searched database.
        fetch_band: called once for all overflowing rows (see :data:`BandFetcher`).

    Returns:
        ``(distances int32 [Q, k], ids int64 [Q, k], number of rows that needed fetch_band)``.
    """
    d, i = _sort_rows(np.asarray(cand_dist), np.asarray(cand_ids))
    kc = d.shape[1]
    n_overflow = 0
    if ntotal > kc:
        if kc <= k:
            raise ValueError(f"need more than k={k} candidates per query to resolve ties, got {kc}")
        d_star = d[:, k - 1]
        overflow = np.flatnonzero(d[:, kc - 1] == d_star)
        if overflow.size:
            n_overflow = int(overflow.size)
            closer = d[overflow] < d_star[overflow, None]
            need = k - closer.sum(axis=1)
            bands = fetch_band(overflow, d_star[overflow], need)
            for row, n_closer, band in zip(overflow, k - need, bands, strict=True):
                band = np.unique(np.asarray(band, dtype=np.int64))[: k - n_closer]  # sorted ascending
                d[row, n_closer : n_closer + band.size] = d_star[row]
                i[row, n_closer : n_closer + band.size] = band
                d[row, n_closer + band.size :] = _BIG_DISTANCE
                i[row, n_closer + band.size :] = _BIG_ID
    out_d, out_i = _finish(d, i, k)
    return out_d, out_i, n_overflow


def brute_force_search(
    query_codes: np.ndarray, db_codes: np.ndarray, db_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact search by full numpy popcount scan (the reference every fast path is tested against).

    Args:
        query_codes: ``uint8 [Q, B]`` packed codes (or one code ``[B]``).
        db_codes: ``uint8 [N, B]`` packed codes.
        db_ids: ``int64 [N]`` distinct non-negative ids.
        k: number of results per query (>= 1).

    Returns:
        ``(distances int32 [Q, k], ids int64 [Q, k])`` in the order of the module docstring.
    """
    k = check_k(k)
    q = as_codes(query_codes, name="query_codes")
    ids = np.asarray(db_ids, dtype=np.int64).reshape(-1)
    if ids.size == 0:
        return empty_result(q.shape[0], k)
    db = as_codes(db_codes, q.shape[1] * 8, name="db_codes")
    if db.shape[0] != ids.size:
        raise ValueError(f"db_codes has {db.shape[0]} rows but db_ids has {ids.size} ids")
    by_id = np.argsort(ids, kind="stable")
    dist = hamming_distances(q, db[by_id])
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    d = np.take_along_axis(dist, order, axis=1)
    i = ids[by_id][order]
    return _finish(d.astype(np.int64), i, k)
