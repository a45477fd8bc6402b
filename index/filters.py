"""Search filters, applied inside the search: which items may answer (label, source), a distance cut,
and one hit per name.

* :class:`SearchFilter` -- ``labels`` (any of them), ``sources`` (any of them), ``max_distance``
  (inclusive). ``None`` (or an empty sequence) means "any".
* :class:`AttributeIndex` -- in-memory posting lists ``label -> sorted ids`` and ``source -> sorted
  ids`` of every item (both modalities), built from SQLite on the first filtered search and kept up
  to date by :class:`index.store.HashStore`'s mutations. It resolves a filter to the sorted array of
  the allowed ids in microseconds for a selective filter and about a millisecond for one matching
  half of a million items (no SQLite round trip per search).
* :func:`subset_rows` -- the storage rows of a backend index holding allowed ids (through an id -> row
  table, :func:`id_row_table`); the in-process backend then scans only those rows' codes
  (:meth:`index.flat.FaissFlatIndex.search`). The Milvus backend
  filters its scalar fields natively instead (:func:`milvus_expression`).
* :func:`cut_distance` -- drop the hits farther than ``max_distance``. This is exact inside the
  search: a result row is ordered by ``(distance, id)``, so the first ``k`` items within the
  distance are a prefix of the first ``k`` items overall.
* :func:`distinct_search` -- the first ``k`` hits with distinct names (each name's nearest copy,
  ties by the smallest id), by fetching more candidates until ``k`` names are found or the items run
  out (exact: the first occurrences of names in a prefix of the order are those of the whole order).

Every result keeps the order and padding of :mod:`index.exact`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from index.codes import as_codes, check_bits
from index.exact import PAD_DISTANCE, PAD_ID, check_k, empty_result
from index.records import check_modality

#: most values one filter may list per field (labels, sources)
MAX_FILTER_VALUES = 256
#: ``distinct=`` choices
DISTINCT_CHOICES = ("name",)
#: with fewer allowed ids than ``rows / SEARCHSORTED_FRACTION``, rows are found by binary search
#: (sorted storage only); otherwise by one pass over the stored ids (``numpy.isin``)
SEARCHSORTED_FRACTION = 16
#: an index keeps an id -> row table (:func:`id_row_table`) while its ids stay below this many times its rows
ID_TABLE_FACTOR = 4


@dataclass(frozen=True)
class SearchFilter:
    """Which items a search may return. ``None`` fields do not restrict."""

    labels: tuple[str, ...] | None = None
    sources: tuple[str, ...] | None = None
    max_distance: int | None = None

    @property
    def restricts_items(self) -> bool:
        """True when only some items may answer (a label or source filter)."""
        return self.labels is not None or self.sources is not None


def _values(values: Iterable[str] | None, name: str) -> tuple[str, ...] | None:
    if values is None:
        return None
    if isinstance(values, str | bytes):
        raise ValueError(f"{name} must be a sequence of strings, got a single {type(values).__name__}")
    out = tuple(dict.fromkeys(values))
    for v in out:
        if not isinstance(v, str) or not v:
            raise ValueError(f"{name} must be non-empty strings, got {v!r}")
    if len(out) > MAX_FILTER_VALUES:
        raise ValueError(f"at most {MAX_FILTER_VALUES} {name} per search, got {len(out)}")
    return out or None


def make_filter(
    labels: Iterable[str] | None = None, sources: Iterable[str] | None = None, max_distance: int | None = None
) -> SearchFilter:
    """A validated :class:`SearchFilter` (duplicates dropped; an empty sequence means "any").

    Raises:
        ValueError: an empty or non-string value, too many values, or ``max_distance`` not an int >= 0.
    """
    if max_distance is not None:
        if isinstance(max_distance, bool) or not isinstance(max_distance, int | np.integer) or max_distance < 0:
            raise ValueError(f"max_distance must be an integer >= 0, got {max_distance!r}")
        max_distance = int(max_distance)
    return SearchFilter(_values(labels, "labels"), _values(sources, "sources"), max_distance)


def check_distinct(distinct: str | None) -> str | None:
    """Return ``distinct`` if it is ``None`` or one of :data:`DISTINCT_CHOICES`, else raise ``ValueError``."""
    if distinct is not None and distinct not in DISTINCT_CHOICES:
        raise ValueError(f"distinct must be one of {DISTINCT_CHOICES} or None, got {distinct!r}")
    return distinct


def check_search(modality: str, query_codes: np.ndarray, bits: int, k: int, labels: Iterable[str] | None = None,
                 sources: Iterable[str] | None = None, max_distance: int | None = None,
                 distinct: str | None = None) -> tuple[int, int, np.ndarray, SearchFilter]:
    """The checked arguments of a search (a store's or a search replica's): ``(bits, k, packed query codes
    [Q, bits // 8], filter)``; ``ValueError`` naming the first bad one."""
    check_modality(modality)
    bits = check_bits(bits)
    k = check_k(k)
    q = as_codes(query_codes, bits, name="query_codes")
    flt = make_filter(labels, sources, max_distance)
    check_distinct(distinct)
    return bits, k, q, flt


# ---------------------------------------------------------------------------------------- attributes
class _Posting:
    """Sorted unique ids, appended to in chunks (sorted on the next read when a chunk broke the order)."""

    __slots__ = ("_chunks", "_sorted")

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._sorted = True

    def add(self, ids: np.ndarray) -> None:
        if self._chunks and self._chunks[-1].size and ids.size and ids[0] <= self._chunks[-1][-1]:
            self._sorted = False
        self._chunks.append(ids)

    def array(self) -> np.ndarray:
        if len(self._chunks) != 1 or not self._sorted:
            merged = np.concatenate(self._chunks) if self._chunks else np.empty(0, dtype=np.int64)
            if not self._sorted:
                merged = np.unique(merged)
            self._chunks, self._sorted = [merged], True
        return self._chunks[0]

    def remove(self, ids: np.ndarray) -> None:
        self._chunks = [np.setdiff1d(self.array(), ids, assume_unique=True)]


class AttributeIndex:
    """Posting lists of every item's label and source (ids ascending), for :class:`SearchFilter`s.

    Not thread-safe: :class:`index.store.HashStore` changes it under its write lock only.
    """

    def __init__(self) -> None:
        self._labels: dict[str | None, _Posting] = {}
        self._sources: dict[str, _Posting] = {}

    @classmethod
    def build(cls, ids: np.ndarray, labels: Sequence[str | None], sources: Sequence[str]) -> AttributeIndex:
        """From every item's ``(id, label, source)``."""
        table = cls()
        table.add(ids, labels, sources)
        return table

    @staticmethod
    def _groups(ids: np.ndarray, values: Sequence) -> dict:
        """``{value: sorted ids having it}``."""
        ids = np.asarray(ids, dtype=np.int64)
        numbers: dict = {}
        codes = np.fromiter((numbers.setdefault(v, len(numbers)) for v in values), dtype=np.int64, count=len(values))
        order = np.lexsort((ids, codes))
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        groups = np.split(ids[order], bounds) if ids.size else []
        by_code = sorted(numbers, key=numbers.__getitem__)  # the values in the order of their codes
        return dict(zip(by_code, groups, strict=True))

    def add(self, ids: np.ndarray, labels: Sequence[str | None], sources: Sequence[str]) -> None:
        """Items that are new in the store."""
        for table, values in ((self._labels, labels), (self._sources, sources)):
            for value, group in self._groups(ids, values).items():
                table.setdefault(value, _Posting()).add(group)

    def remove(self, ids: np.ndarray, labels: Sequence[str | None], sources: Sequence[str]) -> None:
        """Items that left the store (with the label and source they had)."""
        for table, values in ((self._labels, labels), (self._sources, sources)):
            for value, group in self._groups(ids, values).items():
                if value in table:
                    table[value].remove(group)

    def _union(self, table: dict, values: tuple[str, ...]) -> np.ndarray:
        parts = [table[v].array() for v in values if v in table]
        if len(parts) == 1:
            return parts[0]
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)  # disjoint postings

    def allowed_ids(self, flt: SearchFilter) -> np.ndarray:
        """Sorted ids of the items matching the label and source parts of ``flt`` (read-only)."""
        if not flt.restricts_items:
            raise ValueError("the filter does not restrict the items")
        by_label = None if flt.labels is None else self._union(self._labels, flt.labels)
        by_source = None if flt.sources is None else self._union(self._sources, flt.sources)
        if by_label is None:
            return by_source  # type: ignore[return-value]
        if by_source is None:
            return by_label
        return np.intersect1d(by_label, by_source, assume_unique=True)


class ItemSubset:
    """The items a filtered search may return: the filter, and its allowed ids resolved on first use
    (the in-process backend needs them; Milvus filters the filter's values itself)."""

    def __init__(self, flt: SearchFilter, resolve: Callable[[SearchFilter], np.ndarray]) -> None:
        self.filter = flt
        self._resolve = resolve
        self._ids: np.ndarray | None = None

    def ids(self) -> np.ndarray:
        """Sorted allowed ids (of every modality)."""
        if self._ids is None:
            self._ids = self._resolve(self.filter)
        return self._ids


def id_row_table(stored_ids: np.ndarray) -> np.ndarray | None:
    """``table[id]`` = the row of ``id`` in ``stored_ids`` (-1: not stored), or ``None`` when the ids are
    too sparse for a table (the largest id above :data:`ID_TABLE_FACTOR` x rows + 2**20). 4 bytes per id
    up to the largest: 8 MB for an index of 1M items whose ids reach 2M."""
    n = stored_ids.size
    top = int(stored_ids.max()) if n else -1
    if top >= ID_TABLE_FACTOR * n + (1 << 20) or (n and int(stored_ids.min()) < 0):
        return None
    table = np.full(top + 1, -1, dtype=np.int32 if n < 1 << 31 else np.int64)
    table[stored_ids] = np.arange(n, dtype=table.dtype)
    return table


def subset_rows(
    stored_ids: np.ndarray, allowed: np.ndarray, ascending: bool, table: np.ndarray | None = None
) -> np.ndarray:
    """Rows (ascending) of ``stored_ids`` (an index's ids in storage order) whose id is in ``allowed``
    (sorted, >= 0). ``table``: :func:`id_row_table` of ``stored_ids`` (one look-up per allowed id);
    without it, ``ascending`` (``stored_ids`` is sorted) finds few allowed ids by binary search, and
    otherwise one pass over the stored ids tests each."""
    if table is not None:
        rows = table[allowed[: np.searchsorted(allowed, table.size)]]
        rows = rows[rows >= 0]
        return rows if ascending else np.sort(rows)
    n = stored_ids.size
    if ascending and allowed.size * SEARCHSORTED_FRACTION <= n:
        pos = np.searchsorted(stored_ids, allowed)
        inside = pos < n
        pos, wanted = pos[inside], allowed[inside]
        return pos[stored_ids[pos] == wanted]
    return np.flatnonzero(np.isin(stored_ids, allowed, assume_unique=True))


# ---------------------------------------------------------------------------------------- results
def cut_distance(dist: np.ndarray, ids: np.ndarray, max_distance: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Pad (in place) every hit farther than ``max_distance``; rows stay in :mod:`index.exact` order."""
    if max_distance is not None:
        far = dist > max_distance
        dist[far] = PAD_DISTANCE
        ids[far] = PAD_ID
    return dist, ids


def distinct_search(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    names: Callable[[list[int]], dict[int, str]],
    nq: int,
    k: int,
    limit: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` hits of each query whose names differ (each name's first hit in the order).

    Args:
        search: ``search(rows, m)`` -> the exact top-``m`` ``(distances, ids)`` of the query rows ``rows``.
        names: the names of some ids (every id it is given exists).
        nq: number of queries.
        k: distinct hits per query.
        limit: the most candidates ``search`` may be asked for (the backend's limit, or its item count).

    A query fetches ``2k`` candidates, then four times more while it has fewer than ``k`` distinct
    names and its candidates filled the fetch (the items may not have run out), up to ``limit``.
    """
    out_d, out_i = empty_result(nq, k)
    todo = np.arange(nq)
    m = min(max(2 * k, k + 16), limit)
    while todo.size:
        dist, ids = search(todo, m)
        known = names(sorted({int(i) for i in ids[ids >= 0].tolist()}))
        again = []
        for row, q in enumerate(todo):
            seen: set[str] = set()
            col = 0
            for d, i in zip(dist[row].tolist(), ids[row].tolist(), strict=True):
                if i < 0 or col == k:
                    break
                name = known[i]
                if name not in seen:
                    seen.add(name)
                    out_d[q, col], out_i[q, col] = d, i
                    col += 1
            if col < k and ids[row, -1] >= 0 and m < limit:  # the fetch was full: there may be more
                out_d[q], out_i[q] = PAD_DISTANCE, PAD_ID
                again.append(q)
        todo = np.asarray(again, dtype=np.int64)
        m = min(4 * m, limit)
    return out_d, out_i


# ---------------------------------------------------------------------------------------- Milvus
def milvus_literal(values: Iterable[str]) -> str:
    """A Milvus expression list literal of strings (JSON escaping: quotes and backslashes)."""
    return json.dumps(list(values), ensure_ascii=False)


def milvus_expression(flt: SearchFilter) -> str:
    """The Milvus boolean expression of the label and source parts of ``flt`` (``""``: no restriction).
    Items without a label are stored with the label ``""``, which no filter value can be."""
    parts = []
    if flt.labels is not None:
        parts.append(f"label in {milvus_literal(flt.labels)}")
    if flt.sources is not None:
        parts.append(f"source in {milvus_literal(flt.sources)}")
    return " and ".join(parts)
