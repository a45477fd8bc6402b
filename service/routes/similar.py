"""``GET /api/v1/items/{id}/similar``: search from a stored item's codes (no upload, no model call)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from ..errors import APIError
from ..schemas import ErrorBody, SearchResponse
from ..searching import FiltersDep, find_hits
from ..state import RunningDep
from .items import ItemId, get_item
from .search import Bits, K

router = APIRouter(prefix="/api/v1/items", tags=["items"])

#: ``target`` values and the modality they search
TARGETS = {"points": "points", "images": "image"}

Target = Annotated[Literal["points", "images"] | None, Query(
    description="the items searched: `points` (point clouds) or `images`; default: the item's own modality "
                "(more like this: the item itself comes first, at distance 0)")]


@router.get("/{item_id}/similar", response_model=SearchResponse, summary="Find items similar to a stored item",
            responses={404: {"model": ErrorBody, "description": "no item with this id (`not_found`)"}},
            description="Searches with the item's stored code of `bits` bits (no upload, no model call); the "
                        "answer and the filters are those of the search endpoints. 422 `invalid_request` when "
                        "the item has no code of that length.")
async def similar(run: RunningDep, item_id: ItemId, filters: FiltersDep, target: Target = None, k: K = 10,
                  bits: Bits = 64) -> SearchResponse:
    t0 = time.perf_counter()
    rec = await run_in_threadpool(get_item, run, item_id)
    code = rec.codes.get(bits)
    if code is None:
        raise APIError(422, "invalid_request", f"bits: item {item_id} has no {bits}-bit code (it has "
                       f"{', '.join(map(str, sorted(rec.codes)))} bits)")
    modality = rec.modality if target is None else TARGETS[target]
    (hits,) = await run_in_threadpool(find_hits, run, modality, code[None], bits, k, filters)
    return SearchResponse(bits=bits, k=k, took_ms=round((time.perf_counter() - t0) * 1000, 3), results=hits)
