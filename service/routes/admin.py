"""Admin routes (Bearer ``CMAH_ADMIN_TOKEN``): indexing jobs and item deletion."""

from __future__ import annotations

import os
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, File, Path, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..errors import APIError
from ..import_paths import JobFileError, job_kind, path_kind, resolve_import
from ..job_store import Job
from ..schemas import Deleted, ErrorBody, JobCreated, JobError, JobStatus, PathJob
from ..state import AdminDep, Running, RunningDep
from ..uploads import CHUNK, OneFile

router = APIRouter(prefix="/api/v1/admin", tags=["admin"], dependencies=[AdminDep],
                   responses={s: {"model": ErrorBody} for s in (401, 403)})

#: Seconds a client is asked to wait when too many jobs are queued.
JOBS_RETRY_AFTER = 30


def job_body(job: Job) -> JobStatus:
    return JobStatus(id=job.id, kind=job.kind, filename=job.filename, state=job.state,  # type: ignore[arg-type]
                     total=job.total, done=job.done, failed=job.failed, errors=[JobError(**e) for e in job.errors],
                     error=job.error, created=job.created, updated=job.updated)


async def _save_upload(file: UploadFile, dest: FsPath, max_bytes: int) -> None:
    """Stream ``file`` to ``dest`` (refusing more than ``max_bytes``)."""
    size = 0
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with open(tmp, "wb") as out:
            while chunk := await file.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise APIError(413, "too_large", f"upload is larger than the limit of {max_bytes} bytes")
                out.write(chunk)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _check_queue(run: Running) -> None:
    """429 (nothing written) when ``CMAH_MAX_QUEUED_JOBS`` jobs are already queued or running."""
    pending = run.runner.pending()
    limit = run.settings.max_queued_jobs
    if pending >= limit:
        raise APIError(429, "too_many_jobs", f"{pending} jobs are queued or running (CMAH_MAX_QUEUED_JOBS = "
                       f"{limit}); retry when one has finished", {"Retry-After": str(JOBS_RETRY_AFTER)})


def _created(job_id: str) -> JSONResponse:
    body = JobCreated(job_id=job_id, status_url=f"/api/v1/admin/jobs/{job_id}")
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": body.status_url})


@router.post("/jobs", status_code=202, response_model=JobCreated, dependencies=[OneFile],
             responses={s: {"model": ErrorBody} for s in (400, 413, 415, 429)})
async def create_job(run: RunningDep, file: Annotated[UploadFile, File(description=".npz dataset or .zip")]
                     ) -> JSONResponse:
    """Index an uploaded dataset ``.npz`` or ``.zip`` of images / 3D files, judged by its content (not its name)."""
    name = file.filename or "upload"
    try:
        kind = await run_in_threadpool(job_kind, file.file, name)
    except JobFileError as exc:
        raise APIError(exc.status, exc.code, exc.detail) from None
    _check_queue(run)
    job = run.jobs.create(kind, name)
    try:
        await _save_upload(file, run.runner.upload_path(job.id, kind), run.settings.max_job_upload_bytes)
    except APIError as exc:
        run.runner.upload_path(job.id, kind).unlink(missing_ok=True)
        run.jobs.update(job.id, state="failed", error=exc.detail)
        raise
    run.runner.enqueue(job.id)
    return _created(job.id)


@router.post("/jobs/from-path", status_code=202, response_model=JobCreated,
             responses={s: {"model": ErrorBody} for s in (400, 404, 415, 422, 429)})
async def create_path_job(run: RunningDep, body: PathJob) -> JSONResponse:
    """Index a ``.npz`` / ``.zip`` that already lives on the server under ``CMAH_IMPORT_ROOT`` (read in
    place, never copied nor deleted)."""
    try:
        path = resolve_import(run.settings.import_root, body.path)
        kind = path_kind(path, body.path)
    except JobFileError as exc:
        raise APIError(exc.status, exc.code, exc.detail) from exc
    _check_queue(run)
    job = run.jobs.create(kind, body.path, path=str(path))
    run.runner.enqueue(job.id)
    return _created(job.id)


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
