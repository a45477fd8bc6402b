"""Background indexing jobs, persisted in SQLite (``<data_dir>/jobs.sqlite3``).

A job indexes a dataset ``.npz`` (project format) or a ``.zip`` of images and 3D files with an optional
``labels.csv`` (``file,label`` rows), told apart by their content
(:func:`~service.import_paths.job_kind`), never by their names: a file uploaded to
``<data_dir>/uploads/`` (deleted when the job ends) or a file that already lives on the server under
``CMAH_IMPORT_ROOT`` (read in place, never deleted). Jobs run one at a time on a worker thread.

Jobs resume: a job still queued or running when the process stopped (even by SIGKILL) is queued again
on the next start and skips what it had already indexed. What is indexed is read from the hash store
(the source of truth; items carry ``source = "job:<id>"``), never from the job's own counters, which
are not updated in the same transaction: a zip job skips the members whose name is already indexed, a
``.npz`` job the shapes already indexed (a shape's two items are added in one transaction). A job whose
file is gone is marked ``failed``.

Jobs can be cancelled (:meth:`JobRunner.cancel`): the record turns ``cancelled`` at once (durably, so the
job is not resumed after a restart); a running job stops after the batch it is storing, whose items stay
indexed like those of the batches before. Its upload is deleted.

The records live in :mod:`service.job_store`, the job file's kind and server paths in
:mod:`service.import_paths`, and archive members are read by :mod:`service.archives`.
"""

from __future__ import annotations

import errno
import logging
import queue
import sqlite3
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from model.dataset import DatasetError
from model.io import InputError, load_points, read_image

from .archives import (
    MAX_ZIP_MEMBERS,
    REFUSED,
    Budget,
    Refused,
    is_image,
    label_of,
    member_problem,
    read_labels,
    read_member,
    wanted_member,
)
from .import_paths import JobFileError, resolve_import
from .indexing import ItemWriter
from .job_store import ACTIVE, Job, JobStore

logger = logging.getLogger(__name__)

UPLOAD_DIR = "uploads"
KINDS = ("npz", "zip")
FILE_GONE = "the job's file is gone"
DISK_FULL = "the disk is full (no space left on device)"


def is_disk_full(exc: BaseException) -> bool:
    """An error that means the disk (or the quota) is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


class _Stopped(Exception):
    pass


class _Cancelled(Exception):
    pass


class JobRunner:
    """Runs queued jobs one at a time on a worker thread."""

    def __init__(self, jobs: JobStore, writer: ItemWriter, upload_dir: Path, *, max_file_bytes: int,
                 max_pixels: int, batch_size: int = 32, max_uncompressed_bytes: int = 4 << 30,
                 import_root: Path | None = None, on_finished: Callable[[str], None] | None = None):
        self.jobs = jobs
        self.writer = writer
        self.upload_dir = Path(upload_dir)
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.max_file_bytes = max_file_bytes
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.max_uncompressed_bytes = max_uncompressed_bytes
        self.import_root = import_root
        self.on_finished = on_finished
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: ids of the jobs cancelled by this process (the running one stops at its next batch)
        self._cancelled: set[str] = set()
        self._cancel_lock = threading.Lock()

    def start(self) -> None:
        """Queue again the jobs a previous process left unfinished, then start the worker."""
        unfinished = self.jobs.unfinished()
        self._remove_stale_uploads(set(unfinished))
        for job_id in unfinished:
            self.jobs.update(job_id, state="queued")
            self._queue.put(job_id)
        if unfinished:
            logger.warning("%d unfinished job(s) from a previous run queued again (they resume)", len(unfinished))
        self._thread = threading.Thread(target=self._run, name="cmah-jobs", daemon=True)
        self._thread.start()

    def _remove_stale_uploads(self, keep: set[str]) -> None:
        for entry in self.upload_dir.iterdir():
            job_id, _, suffix = entry.name.partition(".")
            if job_id not in keep or suffix not in KINDS:
                entry.unlink(missing_ok=True)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def upload_path(self, job_id: str, kind: str) -> Path:
        return self.upload_dir / f"{job_id}.{kind}"

    def enqueue(self, job_id: str) -> None:
        self._queue.put(job_id)

    def pending(self) -> int:
        """Jobs queued or running (what ``CMAH_MAX_QUEUED_JOBS`` limits)."""
        return len(self.jobs.unfinished())

    def cancel(self, job_id: str) -> tuple[Job | None, str | None]:
        """Cancel a queued or running job (see :meth:`JobStore.cancel`; the state before is returned): a
        queued job never starts, a running one stops after the batch it is storing."""
        job, before = self.jobs.cancel(job_id)
        if before in ACTIVE:
            with self._cancel_lock:
                self._cancelled.add(job_id)
            logger.info("job %s cancelled (it was %s)", job_id, before)
        return job, before

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            self._process(job_id)

    def _job_file(self, job: Job) -> Path:
        """The file a job reads: its upload, or its server file (checked again against the import root)."""
        if job.path is None:
            return self.upload_path(job.id, job.kind)
        return resolve_import(self.import_root, job.path)

    def _process(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            return
        if job.state not in ACTIVE:
            if job.state == "cancelled" and job.path is None:  # cancelled while queued
                self.upload_path(job_id, job.kind).unlink(missing_ok=True)
            return
        finished = True
        try:
            path = self._job_file(job)
            if not path.is_file():
                raise FileNotFoundError(f"{FILE_GONE} ({job.filename}); submit it again")
            if not self.jobs.begin(job_id):
                raise _Cancelled
            if job.kind == "npz":
                self._run_npz(job_id, path)
            else:
                self._run_zip(job_id, path)
        except _Cancelled:
            logger.info("job %s stopped: it was cancelled (what it indexed stays indexed)", job_id)
        except _Stopped:
            logger.info("job %s stopped by shutdown; it resumes at the next start", job_id)
            finished = False
            return
        except JobFileError as exc:
            self._fail(job, exc.detail)
        except Exception as exc:  # noqa: BLE001 - every failure ends the job with a reason
            self._fail(job, self._reason(job, exc))
        else:
            self.jobs.finish(job_id, "succeeded")
        finally:
            if finished and job.path is None:  # uploads are deleted once the job is over; server files never
                self.upload_path(job_id, job.kind).unlink(missing_ok=True)
            with self._cancel_lock:
                self._cancelled.discard(job_id)
        final = self.jobs.get(job_id)
        if self.on_finished is not None and final is not None and final.state != "cancelled":
            self.on_finished(final.state)  # (cancellations are counted by whoever cancels)

    def _reason(self, job: Job, exc: Exception) -> str:
        if is_disk_full(exc):
            done = self.jobs.get(job.id)
            n = done.done if done is not None else 0
            logger.error("job %s failed: disk full (%s)", job.id, exc)
            return (f"{DISK_FULL} while indexing; the {n} item(s) indexed before stay indexed, the files of the "
                    "unfinished batch were removed; free some space and submit the job again")
        if isinstance(exc, DatasetError | zipfile.BadZipFile | InputError | ValueError | OSError | EOFError):
            logger.warning("job %s failed: %s", job.id, exc)
            text = str(exc)
            for path in {str(self.upload_path(job.id, job.kind)), job.path or ""} - {""}:
                text = text.replace(path, job.filename)
            return text
        logger.error("job %s failed unexpectedly", job.id, exc_info=exc)
        return "internal error while indexing"

    def _fail(self, job: Job, reason: str) -> None:
        try:
            self.jobs.finish(job.id, "failed", reason)
        except sqlite3.Error:
            logger.exception("could not record the failure of job %s", job.id)

    def _check_stop(self, job_id: str) -> None:
        """Between batches: end the job here if it was cancelled, or stop it (resumable) on shutdown."""
        if job_id in self._cancelled:
            raise _Cancelled
        if self._stop.is_set():
            raise _Stopped

    def _run_npz(self, job_id: str, path: Path) -> None:
        source = f"job:{job_id}"
        start = sum(1 for modality, _ in self.writer.store.source_names(source) if modality == "points")
        if start:
            logger.info("job %s resumes after %d shapes already indexed", job_id, start)
        self.jobs.update(job_id, done=start, start_done=start)  # (its speed counts from here)

        def progress(done: int, total: int) -> None:
            self.jobs.update(job_id, done=done, total=total)
            self._check_stop(job_id)

        self.writer.add_dataset(path, source=source, batch_size=self.batch_size, progress=progress, start=start)

    def _run_zip(self, job_id: str, path: Path) -> None:
        source = f"job:{job_id}"
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if wanted_member(m)]
            if len(members) > MAX_ZIP_MEMBERS:
                raise ValueError(f"the archive holds {len(members)} files, above the limit of {MAX_ZIP_MEMBERS}")
            budget = Budget(self.max_uncompressed_bytes)
            labels = read_labels(zf, members, budget, self.max_file_bytes)
            files = [m for m in members if PurePosixPath(m.filename).name.lower() != "labels.csv"]
            indexed = {name for _, name in self.writer.store.source_names(source)}
            batch = _Batch(self, job_id, source, labels, done=sum(m.filename in indexed for m in files))
            if batch.done:
                logger.info("job %s resumes after %d files already indexed", job_id, batch.done)
            self.jobs.update(job_id, total=len(files), done=batch.done, start_done=batch.done)
            seen: set[str] = set()
            for m in files:
                self._check_stop(job_id)
                name = m.filename
                if name in seen:
                    self.jobs.record_failure(job_id, name, REFUSED, "duplicate name: only the first one is indexed")
                    continue
                seen.add(name)
                if name not in indexed:
                    self._read_file(zf, m, budget, batch)
            batch.flush()

    def _read_file(self, zf: zipfile.ZipFile, m: zipfile.ZipInfo, budget: Budget, batch: _Batch) -> None:
        """Decode one member into the batch, or record why it cannot be indexed."""
        name = m.filename
        try:
            problem = member_problem(m)
            if problem is not None:
                raise Refused(REFUSED, problem)
            data = read_member(zf, m, budget, self.max_file_bytes)
            if is_image(data, name):
                batch.images.append((name, read_image(data, max_bytes=self.max_file_bytes,
                                                      max_pixels=self.max_pixels)))
            else:
                batch.clouds.append((name, load_points(data, name=PurePosixPath(name).name,
                                                       max_bytes=self.max_file_bytes)))
        except Refused as exc:
            logger.warning("job %s: member %r refused: %s", batch.job_id, name, exc.detail)
            self.jobs.record_failure(batch.job_id, name, exc.code, exc.detail)
        except InputError as exc:
            self.jobs.record_failure(batch.job_id, name, exc.code, exc.message)
        except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, OSError) as exc:
            if is_disk_full(exc):
                raise
            self.jobs.record_failure(batch.job_id, name, "unreadable", f"cannot extract from the archive: {exc}")
        if batch.size() >= self.batch_size:
            batch.flush()


class _Batch:
    """Decoded files waiting for one model call, and the job's ``done`` counter."""

    def __init__(self, runner: JobRunner, job_id: str, source: str, labels: dict[str, str], done: int):
        self.runner = runner
        self.job_id = job_id
        self.source = source
        self.labels = labels
        self.done = done
        self.images: list[tuple[str, Image.Image]] = []
        self.clouds: list[tuple[str, np.ndarray]] = []

    def size(self) -> int:
        return len(self.images) + len(self.clouds)

    def flush(self) -> None:
        writer = self.runner.writer
        if self.images:
            writer.add_images([im for _, im in self.images], [n for n, _ in self.images],
                              [label_of(self.labels, n) for n, _ in self.images], self.source)
        if self.clouds:
            writer.add_clouds(np.stack([p for _, p in self.clouds]), [n for n, _ in self.clouds],
                              [label_of(self.labels, n) for n, _ in self.clouds], self.source)
        self.done += self.size()
        self.images, self.clouds = [], []
        self.runner.jobs.update(self.job_id, done=self.done)
        self.runner._check_stop(self.job_id)
