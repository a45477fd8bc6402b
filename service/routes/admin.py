"""Admin routes (Bearer ``CMAH_ADMIN_TOKEN``): indexing jobs (create, list, read, cancel) and item deletion."""

from __future__ import annotations

import os
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, File, Path, Query, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..errors import APIError
from ..import_paths import JobFileError, job_kind, path_kind, resolve_import
from ..job_store import Job
from ..schemas import Deleted, ErrorBody, JobCreated, JobError, JobPage, JobState, JobStatus, PathJob
from ..state import AdminDep, Running, RunningDep
from ..uploads import CHUNK, OneFile

router = APIRouter(prefix="/api/v1/admin", tags=["admin"], dependencies=[AdminDep],
                   responses={s: {"model": ErrorBody} for s in (401, 403)})

#: Seconds a client is asked to wait when too many jobs are queued.
JOBS_RETRY_AFTER = 30
#: Most jobs in one page of ``GET /api/v1/admin/jobs``.
MAX_JOBS_LIMIT = 200
#: Largest ``offset`` of a page.
MAX_OFFSET = 10**12

JobId = Annotated[str, Path(max_length=64, description="the job's id")]


def job_body(job: Job) -> JobStatus:
    rate, eta = job.speed()
    return JobStatus(id=job.id, kind=job.kind, filename=job.filename, state=job.state,  # type: ignore[arg-type]
                     total=job.total, done=job.done, failed=job.failed, errors=[JobError(**e) for e in job.errors],
                     error=job.error, created=job.created, updated=job.updated, started=job.started,
                     ended=job.ended, items_per_second=rate, eta_seconds=eta)


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
        run.jobs.finish(job.id, "failed", exc.detail)
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


@router.get("/jobs", response_model=JobPage)
async def list_jobs(
    run: RunningDep,
    state: Annotated[list[JobState] | None, Query(max_length=5, description="only jobs in one of these states "
                                                  "(repeatable: any of them); all jobs when absent")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description=f"jobs to skip (0..{MAX_OFFSET})")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_JOBS_LIMIT, description=f"most jobs returned (1..{MAX_JOBS_LIMIT})")] = 50,
) -> JobPage:
    """The jobs, newest first (by creation time), with the same fields as ``GET /jobs/{job_id}``."""
    total, jobs = await run_in_threadpool(run.jobs.list, state or (), offset, limit)
    return JobPage(total=total, offset=offset, limit=limit, jobs=[job_body(j) for j in jobs])


@router.get("/jobs/{job_id}", response_model=JobStatus, responses={404: {"model": ErrorBody}})
async def read_job(run: RunningDep, job_id: JobId) -> JobStatus:
    job = run.jobs.get(job_id)
    if job is None:
        raise APIError(404, "not_found", f"no job with id {job_id!r}")
    return job_body(job)


@router.post("/jobs/{job_id}/cancel", response_model=JobStatus,
             responses={404: {"model": ErrorBody, "description": "no such job (`not_found`)"},
                        409: {"model": ErrorBody, "description": "the job has already ended (`job_ended`)"}})
async def cancel_job(run: RunningDep, job_id: JobId) -> JobStatus:
    """Cancel a queued or running job: it is ``cancelled`` at once and for good (never resumed, even after a
    restart); a running job stops after the batch it is storing, and what it indexed stays indexed."""
    job, before = await run_in_threadpool(run.runner.cancel, job_id)
    if job is None:
        raise APIError(404, "not_found", f"no job with id {job_id!r}")
    if before not in ("queued", "running"):
        raise APIError(409, "job_ended", f"job {job_id} has already ended: its state is {before!r}; only queued "
                       "or running jobs can be cancelled")
    run.metrics.jobs.labels(state="cancelled").inc()
    return job_body(job)


@router.delete("/items/{item_id}", response_model=Deleted, responses={404: {"model": ErrorBody}})
async def delete_item(run: RunningDep, item_id: Annotated[int, Path(ge=1)]) -> Deleted:
    # (through the writer: in a scale-out deployment it also removes the item's shared record and objects)
    if not await run_in_threadpool(run.writer.delete_items, [item_id]):
        raise APIError(404, "not_found", f"no item with id {item_id}")
    return Deleted(deleted=item_id)
