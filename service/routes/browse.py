"""Browsing the index: ``GET /api/v1/items`` (filtered, paged item lists) and ``GET /api/v1/stats`` (counts)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from ..schemas import ItemPage, Stats
from ..state import RunningDep
from .items import item_body

router = APIRouter(prefix="/api/v1", tags=["browse"])

#: Most items in one page of ``GET /api/v1/items``.
MAX_LIMIT = 500
#: Largest ``offset`` of a page.
MAX_OFFSET = 10**12
#: Most values of a repeatable filter (``label``, ``source``) and the longest value.
MAX_VALUES = 100
MAX_VALUE_CHARS = 256

FilterValues = Annotated[list[Annotated[str, Query(max_length=MAX_VALUE_CHARS)]] | None, Query(max_length=MAX_VALUES)]


@router.get("/items", response_model=ItemPage)
async def list_items(
    run: RunningDep,
    label: Annotated[FilterValues, Query(
        max_length=MAX_VALUES, description=f"only items with one of these labels (repeatable: any of them; at most "
        f"{MAX_VALUES} values of up to {MAX_VALUE_CHARS} characters); unlabelled items never match")] = None,
    source: Annotated[FilterValues, Query(
        max_length=MAX_VALUES, description="only items from one of these sources, e.g. `demo` or `job:<id>` "
        f"(repeatable: any of them; at most {MAX_VALUES} values)")] = None,
    modality: Annotated[Literal["image", "points"] | None, Query(description="only items of this modality")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description=f"items to skip (0..{MAX_OFFSET})")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"most items returned (1..{MAX_LIMIT})")] = 50,
) -> ItemPage:
    """Items matching every filter given, by id, a page at a time; ``total`` counts all the matching items."""
    total, records = await run_in_threadpool(run.store.browse, label or (), source or (), modality, offset, limit)
    return ItemPage(total=total, offset=offset, limit=limit, items=[item_body(run, r) for r in records])


@router.get("/stats", response_model=Stats)
async def read_stats(run: RunningDep) -> Stats:
    """Item counts per modality, per label and per source."""
    counts = await run_in_threadpool(run.store.stats)
    labels = counts["labels"]
    return Stats(total=sum(counts["modalities"].values()), modalities=counts["modalities"],
                 labels={k: v for k, v in labels.items() if k is not None}, unlabeled=labels.get(None, 0),
                 sources=counts["sources"])
