"""Admin routes (Bearer ``CMAH_ADMIN_TOKEN``): indexing jobs and item deletion."""

from __future__ import annotations

import os
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, File, Path, UploadFile
from fastapi.responses import JSONResponse

from ..errors import APIError
from ..jobs import Job
from ..schemas import Deleted, ErrorBody, JobCreated, JobError, JobStatus
from ..state import AdminDep, RunningDep
from ..uploads import CHUNK

router = APIRouter(prefix="/api/v1/admin", tags=["admin"], dependencies=[AdminDep],
                   responses={s: {"model": ErrorBody} for s in (401, 403)})

ZIP_MAGIC = b"PK\x03\x04"


def job_body(job: Job) -> JobStatus:
    return JobStatus(id=job.id, kind=job.kind, filename=job.filename, state=job.state,  # type: ignore[arg-type]
                     total=job.total, done=job.done, failed=job.failed, errors=[JobError(**e) for e in job.errors],
                     error=job.error, created=job.created, updated=job.updated)


async def _save_upload(file: UploadFile, dest: FsPath, max_bytes: int) -> bytes:
    """Stream ``file`` to ``dest`` (refusing more than ``max_bytes``); returns its first bytes."""
    size = 0
    head = b""
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with open(tmp, "wb") as out:
            while chunk := await file.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise APIError(413, "too_large", f"upload is larger than the limit of {max_bytes} bytes")
                if len(head) < 8:
                    head += chunk[:8]
                out.write(chunk)
        if size == 0:
            raise APIError(400, "empty", "the uploaded file is empty")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return head


@router.post("/jobs", status_code=202, response_model=JobCreated,
             responses={s: {"model": ErrorBody} for s in (400, 413, 415)})
async def create_job(run: RunningDep, file: Annotated[UploadFile, File(description=".npz dataset or .zip")]
                     ) -> JSONResponse:
    name = file.filename or "upload"
    suffix = FsPath(name).suffix.lower()
    if suffix not in (".npz", ".zip"):
        raise APIError(415, "unsupported_format", f"expected a dataset .npz or a .zip of images / 3D files, "
                       f"got {name!r}")
    kind = suffix.lstrip(".")
    job = run.jobs.create(kind, name)
    try:
        head = await _save_upload(file, run.runner.upload_path(job.id, kind), run.settings.max_job_upload_bytes)
        if not head.startswith(ZIP_MAGIC):
            raise APIError(415, "unsupported_format", f"{name!r} is not a zip / npz archive")
    except APIError as exc:
        run.runner.upload_path(job.id, kind).unlink(missing_ok=True)
        run.jobs.update(job.id, state="failed", error=exc.detail)
        raise
    run.runner.enqueue(job.id)
    body = JobCreated(job_id=job.id, status_url=f"/api/v1/admin/jobs/{job.id}")
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": body.status_url})


@router.get("/jobs/{job_id}", response_model=JobStatus, responses={404: {"model": ErrorBody}})
async def read_job(run: RunningDep, job_id: Annotated[str, Path(max_length=64)]) -> JobStatus:
    job = run.jobs.get(job_id)
    if job is None:
        raise APIError(404, "not_found", f"no job with id {job_id!r}")
    return job_body(job)


@router.delete("/items/{item_id}", response_model=Deleted, responses={404: {"model": ErrorBody}})
async def delete_item(run: RunningDep, item_id: Annotated[int, Path(ge=1)]) -> Deleted:
    if not run.store.delete([item_id]):
        raise APIError(404, "not_found", f"no item with id {item_id}")
    return Deleted(deleted=item_id)
