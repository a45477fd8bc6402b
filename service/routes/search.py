"""``POST /api/v1/search/{query}-to-{target}``: cross- and same-modal search by an uploaded file."""

from __future__ import annotations

import time
from typing import Annotated

import torch
from fastapi import APIRouter, File, Query, UploadFile
from pydantic import AfterValidator
from starlette.concurrency import run_in_threadpool

from model.io import InputError, load_points, read_image, sniff_kind

from ..engine import QueueFull
from ..errors import APIError
from ..schemas import ErrorBody, SearchHit, SearchResponse
from ..searching import FiltersDep, SearchFilters, find_hits
from ..state import Running, RunningDep
from ..uploads import OneFile, content_phrase, read_upload

router = APIRouter(prefix="/api/v1/search", tags=["search"])

K = Annotated[int, Query(ge=1, le=1000, description="number of results")]
BITS_CHOICES = (16, 32, 64)


def _check_bits(value: int) -> int:
    if value not in BITS_CHOICES:
        raise ValueError(f"bits must be one of {list(BITS_CHOICES)}")
    return value


Bits = Annotated[int, AfterValidator(_check_bits),
                 Query(description="code length: 16, 32 or 64", json_schema_extra={"enum": list(BITS_CHOICES)})]
Upload = Annotated[UploadFile, File(description="the query file")]

ERRORS = {s: {"model": ErrorBody} for s in (400, 413, 415, 422, 503)}


def check_content(kind: str, data: bytes) -> None:
    """Refuse an upload whose content is the other modality (a PNG named ``.ply`` to a 3D endpoint, a PLY
    named ``.png`` to an image endpoint) from its first bytes, before a reader is chosen or run."""
    found = sniff_kind(data)
    if found is None or found[0] == kind:
        return
    if kind == "image":
        raise InputError("not_an_image", f"got {content_phrase(found)}, expected an image "
                                         "(PNG, JPEG, WebP, BMP, GIF or TIFF)")
    raise InputError("not_a_3d_file", f"got {content_phrase(found)}, expected a 3D file (PLY, OFF, OBJ, PCD, "
                                      "XYZ/TXT or NPY)")


def _preprocess(run: Running, kind: str, data: bytes, filename: str | None) -> torch.Tensor:
    s = run.settings
    check_content(kind, data)
    if kind == "image":
        return run.encoder.image_tensor(read_image(data, max_bytes=s.max_upload_bytes, max_pixels=s.max_pixels))
    return run.encoder.points_tensor(load_points(data, name=filename, max_bytes=s.max_upload_bytes))[0]


def _prepare_and_answer(run: Running, query: str, data: bytes, filename: str | None, target: str, bits: int,
                        k: int, filters: SearchFilters | None) -> tuple[torch.Tensor, list[SearchHit] | None]:
    """One worker-thread hop: the query's tensor, and when the model is idle also its codes (encoded in this
    thread, :meth:`~service.engine.InferenceEngine.encode_if_idle`) and its hits; ``None`` hits: the
    engine is busy, queue the tensor (the batcher may put it with others)."""
    tensor = _preprocess(run, query, data, filename)
    codes = run.engine.encode_if_idle(query, tensor)
    if codes is None:
        return tensor, None
    (hits,) = find_hits(run, target, codes[bits][None], bits, k, filters)
    return tensor, hits


async def search(run: Running, file: UploadFile, query: str, target: str, k: int, bits: int,
                 filters: SearchFilters | None = None) -> SearchResponse:
    t0 = time.perf_counter()
    if bits not in run.encoder.bits:
        raise APIError(422, "invalid_request", f"bits must be one of {list(run.encoder.bits)} for these weights")
    data = await read_upload(file, run.settings.max_upload_bytes)
    with run.engine.arriving(query):  # batches being formed wait for this request while it is prepared
        tensor, hits = await run_in_threadpool(_prepare_and_answer, run, query, data, file.filename, target, bits,
                                               k, filters)
    if hits is None:
        try:
            codes = await run.engine.encode(query, tensor, announced=True)
        except QueueFull as exc:
            raise APIError(503, "overloaded", f"the service is busy ({exc}); retry shortly",
                           {"Retry-After": "1"}) from None
        (hits,) = await run_in_threadpool(find_hits, run, target, codes[bits][None], bits, k, filters)
    return SearchResponse(bits=bits, k=k, took_ms=round((time.perf_counter() - t0) * 1000, 3), results=hits)


def _route(query: str, target: str, summary: str) -> None:
    async def endpoint(run: RunningDep, file: Upload, filters: FiltersDep, k: K = 10, bits: Bits = 64
                       ) -> SearchResponse:
        return await search(run, file, query, target, k, bits, filters)

    path_q = "points" if query == "points" else "image"
    path_t = "points" if target == "points" else "images"
    endpoint.__name__ = f"search_{path_q}_to_{path_t}"
    router.add_api_route(f"/{path_q}-to-{path_t}", endpoint, methods=["POST"], response_model=SearchResponse,
                         summary=summary, responses=ERRORS, dependencies=[OneFile])


_route("image", "points", "Find 3D point clouds matching an image")
_route("points", "image", "Find images matching a 3D file")
_route("image", "image", "Find images matching an image")
_route("points", "points", "Find 3D point clouds matching a 3D file")
