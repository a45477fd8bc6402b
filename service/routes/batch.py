"""``POST /api/v1/search/{query}-to-{target}/batch``: several query files in one request, one model call.

Each ``file`` part is read and checked exactly as the single search does (:mod:`service.routes.search`'s
helpers, the same limits); a bad file gets an entry ``{"filename", "error", "detail"}`` with the code the
single search would answer, and the others still answer. The good files go to the inference engine
together (:meth:`~service.engine.InferenceEngine.encode_many`), so that up to ``CMAH_MAX_BATCH`` of them are
encoded in one model call; their codes are then searched together.
"""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, Depends, File, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from model.io import InputError

from ..engine import QueueFull
from ..errors import APIError
from ..schemas import BatchFileError, BatchResult, BatchSearchResponse
from ..searching import FiltersDep, SearchFilters, find_hits
from ..state import Running, RunningDep
from ..uploads import read_upload
from .search import ERRORS, Bits, K, _preprocess

router = APIRouter(prefix="/api/v1/search", tags=["search"])

#: Most ``file`` parts in one batch (more: 400 ``too_many_parts``, naming this limit).
MAX_BATCH_FILES = 32

Uploads = Annotated[list[UploadFile], File(
    min_length=1, max_length=MAX_BATCH_FILES,
    description=f"the query files: 1 to {MAX_BATCH_FILES} parts named `file`, answered in their order")]


async def file_parts(request: Request) -> None:
    """Every ``file`` part must be a file (a part with a filename): a text field is 422 ``invalid_request``
    naming its position, as the single search answers it. More than :data:`MAX_BATCH_FILES` files never get
    here: the form parser refuses them (400 ``too_many_parts``)."""
    for n, part in enumerate((await request.form()).getlist("file"), 1):
        if isinstance(part, str):
            raise APIError(422, "invalid_request", f"field 'file' number {n} must be a file (a part with a "
                           "filename), got a text field")


def _read_all(run: Running, query: str, uploads: list[tuple[str | None, bytes | APIError]]
              ) -> list[torch.Tensor | BatchFileError]:
    """Decode and check each upload as the single search does (in one worker thread, in order)."""
    out: list[torch.Tensor | BatchFileError] = []
    for name, data in uploads:
        if isinstance(data, APIError):
            out.append(BatchFileError(filename=name, error=data.code, detail=data.detail))
            continue
        try:
            out.append(_preprocess(run, query, data, name))
        except InputError as exc:
            out.append(BatchFileError(filename=name, error=exc.code, detail=exc.message))
    return out


async def search_batch(run: Running, files: list[UploadFile], query: str, target: str, k: int, bits: int,
                       filters: SearchFilters | None = None) -> BatchSearchResponse:
    t0 = time.perf_counter()
    if bits not in run.encoder.bits:
        raise APIError(422, "invalid_request", f"bits must be one of {list(run.encoder.bits)} for these weights")
    uploads: list[tuple[str | None, bytes | APIError]] = []
    for f in files:
        try:
            uploads.append((f.filename, await read_upload(f, run.settings.max_upload_bytes)))
        except APIError as exc:  # too large
            uploads.append((f.filename, exc))
    entries: list[torch.Tensor | BatchFileError | BatchResult] = await run_in_threadpool(_read_all, run, query,
                                                                                          uploads)
    good = [n for n, e in enumerate(entries) if isinstance(e, torch.Tensor)]
    if good:
        try:
            encoded = await run.engine.encode_many(query, [entries[n] for n in good])  # type: ignore[misc]
        except QueueFull as exc:
            raise APIError(503, "overloaded", f"the service is busy ({exc}); retry shortly",
                           {"Retry-After": "1"}) from None
        searched = []
        for n, codes in zip(good, encoded, strict=True):
            if isinstance(codes, BaseException):
                if not isinstance(codes, RuntimeError):
                    raise codes
                entries[n] = BatchFileError(filename=files[n].filename, error="internal", detail=str(codes))
            else:
                searched.append((n, codes[bits]))
        if searched:
            rows = np.stack([c for _, c in searched])
            hits = await run_in_threadpool(find_hits, run, target, rows, bits, k, filters)
            for (n, _), row in zip(searched, hits, strict=True):
                entries[n] = BatchResult(filename=files[n].filename, results=row)
    queries = [e for e in entries if isinstance(e, BatchResult | BatchFileError)]
    assert len(queries) == len(files)
    return BatchSearchResponse(bits=bits, k=k, took_ms=round((time.perf_counter() - t0) * 1000, 3), queries=queries)


def _route(query: str, target: str, summary: str) -> None:
    async def endpoint(run: RunningDep, file: Uploads, filters: FiltersDep, k: K = 10, bits: Bits = 64
                       ) -> BatchSearchResponse:
        return await search_batch(run, file, query, target, k, bits, filters)

    path_q = "points" if query == "points" else "image"
    path_t = "points" if target == "points" else "images"
    endpoint.__name__ = f"search_batch_{path_q}_to_{path_t}"
    router.add_api_route(
        f"/{path_q}-to-{path_t}/batch", endpoint, methods=["POST"], response_model=BatchSearchResponse,
        summary=summary, responses=ERRORS, dependencies=[Depends(file_parts)],
        form_limits={"max_files": MAX_BATCH_FILES},
        description=f"Up to {MAX_BATCH_FILES} `file` parts (more: 400 `too_many_parts`), whose bytes together "
                    "stay within `CMAH_MAX_UPLOAD_BYTES` (413 `too_large`). Each file is read and checked as "
                    "by the single search; a bad file gets `{filename, error, detail}` in its place and the "
                    "others still answer. The files are encoded in one model call (up to `CMAH_MAX_BATCH`).")


_route("image", "points", "Find 3D point clouds matching each of several images")
_route("points", "image", "Find images matching each of several 3D files")
_route("image", "image", "Find images matching each of several images")
_route("points", "points", "Find 3D point clouds matching each of several 3D files")
