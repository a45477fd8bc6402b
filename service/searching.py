"""What every search route shares: the filter parameters and turning a store search into hits.

The filters (``label``, ``source``, ``max_distance``, ``distinct``) are query parameters of the four
search endpoints, their batch forms and ``GET /api/v1/items/{id}/similar``; they act inside the index
search (:mod:`index.filters`), so ``k`` hits come back whenever ``k`` items match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from fastapi import Depends, Query
from pydantic import StringConstraints

from index.filters import MAX_FILTER_VALUES
from index.records import ItemRecord

from .errors import APIError
from .schemas import SearchHit
from .state import Running

#: longest label or source value a filter may name
MAX_FILTER_TEXT = 256
FilterText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_FILTER_TEXT)]


@dataclass(frozen=True)
class SearchFilters:
    """The filter parameters of one request (``None``: not given)."""

    labels: list[str] | None = None
    sources: list[str] | None = None
    max_distance: int | None = None
    distinct: str | None = None


def search_filters(
    label: Annotated[list[FilterText] | None, Query(
        max_length=MAX_FILTER_VALUES,
        description=f"only items with one of these labels (class names); repeat the parameter for several "
                    f"(`label=chair&label=sofa`: either), at most {MAX_FILTER_VALUES}, each 1 to "
                    f"{MAX_FILTER_TEXT} characters. Items without a label never match.")] = None,
    source: Annotated[list[FilterText] | None, Query(
        max_length=MAX_FILTER_VALUES,
        description=f"only items from one of these sources (`demo`, `job:<id>`); repeatable like `label`, at "
                    f"most {MAX_FILTER_VALUES}, each 1 to {MAX_FILTER_TEXT} characters")] = None,
    max_distance: Annotated[int | None, Query(
        ge=0, le=64, description="only items at most this Hamming distance away (inclusive), 0 to 64; at or "
                                 "above the code length it removes nothing")] = None,
    distinct: Annotated[Literal["name"] | None, Query(
        description="`name`: one hit per item name, its nearest copy (equal distances: the smallest id); "
                    "still `k` hits when `k` distinct names match")] = None,
) -> SearchFilters:
    return SearchFilters(label, source, max_distance, distinct)


FiltersDep = Annotated[SearchFilters, Depends(search_filters)]


def preview_url(rec: ItemRecord) -> str | None:
    return f"/api/v1/items/{rec.id}/preview.png" if rec.preview else None


def find_hits(run: Running, target: str, codes: np.ndarray, bits: int, k: int,
              filters: SearchFilters | None = None) -> list[list[SearchHit]]:
    """The hits of each query code (rows of ``codes``) among the ``target`` items (blocking: run it in a
    worker thread)."""
    f = filters or SearchFilters()
    kwargs = {} if f == SearchFilters() else {"labels": f.labels, "sources": f.sources,
                                              "max_distance": f.max_distance, "distinct": f.distinct}
    try:
        dist, ids = run.store.search(target, codes, bits, k, **kwargs)
    except ValueError as exc:  # the parameters passed the route's checks: a backend's own limit
        raise APIError(422, "invalid_request", str(exc)) from None
    rows = [[(int(i), int(d)) for i, d in zip(row_i, row_d, strict=True) if i >= 0]
            for row_i, row_d in zip(ids, dist, strict=True)]
    wanted = sorted({i for row in rows for i, _ in row})
    records = dict(zip(wanted, run.store.get_many(wanted), strict=True))
    out = []
    for row in rows:
        found = [(i, d, records[i]) for i, d in row if records[i] is not None]  # deleted meanwhile: skipped
        out.append([SearchHit(rank=r + 1, id=i, distance=d, name=rec.name, label=rec.label, source=rec.source,
                              modality=rec.modality, preview_url=preview_url(rec))  # type: ignore[arg-type]
                    for r, (i, d, rec) in enumerate(found)])
    return out
