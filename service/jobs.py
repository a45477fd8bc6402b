"""Background indexing jobs, persisted in SQLite (``<data_dir>/jobs.sqlite3``).

A job indexes an uploaded dataset ``.npz`` (project format) or a ``.zip`` of images and 3D files with an
optional ``labels.csv`` (``file,label`` rows). Jobs run one at a time on a worker thread. A job that was
queued or running when the service stopped is marked ``failed`` ("interrupted by restart") on the next
start; items it had already added stay indexed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import queue
import sqlite3
import threading
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from model.dataset import DatasetError
from model.inputs import InputError, load_points, read_image

from .indexing import ItemWriter

logger = logging.getLogger(__name__)

JOB_DB = "jobs.sqlite3"
UPLOAD_DIR = "uploads"
STATES = ("queued", "running", "succeeded", "failed")
MAX_ERRORS = 100
MAX_ZIP_MEMBERS = 100_000
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
INTERRUPTED = "interrupted by restart"


@dataclass
class Job:
    id: str
    kind: str
    filename: str
    state: str = "queued"
    total: int = 0
    done: int = 0
    failed: int = 0
    errors: list[dict] = field(default_factory=list)
    error: str | None = None
    created: str = ""
    updated: str = ""


class JobStore:
    """Job records in SQLite (thread-safe)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, filename TEXT NOT NULL, "
            "state TEXT NOT NULL, total INTEGER NOT NULL DEFAULT 0, done INTEGER NOT NULL DEFAULT 0, "
            "failed INTEGER NOT NULL DEFAULT 0, errors TEXT NOT NULL DEFAULT '[]', error TEXT, "
            "created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')), "
            "updated TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, kind: str, filename: str) -> Job:
        job_id = uuid.uuid4().hex
        with self._lock:
            self._db.execute("INSERT INTO jobs (id, kind, filename, state) VALUES (?, ?, ?, 'queued')",
                             (job_id, kind, filename))
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT id, kind, filename, state, total, done, failed, errors, error, created, "
                                   "updated FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        return Job(*row[:7], errors=json.loads(row[7]), error=row[8], created=row[9], updated=row[10])

    def update(self, job_id: str, **fields: object) -> None:
        allowed = {"state", "total", "done", "failed", "error"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"can only update {sorted(allowed)}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols}, updated = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?",
                             (*fields.values(), job_id))

    def record_failure(self, job_id: str, name: str, code: str, detail: str) -> None:
        """Count one failed file and keep its error (the first ``MAX_ERRORS``)."""
        with self._lock:
            row = self._db.execute("SELECT errors FROM jobs WHERE id = ?", (job_id,)).fetchone()
            errors = json.loads(row[0]) if row else []
            if len(errors) < MAX_ERRORS:
                errors.append({"name": name, "error": code, "detail": detail})
            self._db.execute("UPDATE jobs SET failed = failed + 1, errors = ?, "
                             "updated = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?",
                             (json.dumps(errors), job_id))

    def unfinished(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT id FROM jobs WHERE state IN ('queued', 'running') ORDER BY created")]

    def mark_interrupted(self) -> int:
        """Fail every job left queued or running by a previous process; returns how many."""
        ids = self.unfinished()
        for job_id in ids:
            self.update(job_id, state="failed", error=INTERRUPTED)
        return len(ids)


class _Stopped(Exception):
    pass


class JobRunner:
    """Runs queued jobs one at a time on a worker thread."""

    def __init__(self, jobs: JobStore, writer: ItemWriter, upload_dir: Path, *, max_file_bytes: int,
                 max_pixels: int, batch_size: int = 32, on_finished: Callable[[str], None] | None = None):
        self.jobs = jobs
        self.writer = writer
        self.upload_dir = Path(upload_dir)
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.max_file_bytes = max_file_bytes
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.on_finished = on_finished
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        n = self.jobs.mark_interrupted()
        if n:
            logger.warning("%d unfinished job(s) from a previous run marked failed (%s)", n, INTERRUPTED)
        for stale in self.upload_dir.iterdir():
            stale.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._run, name="cmah-jobs", daemon=True)
        self._thread.start()

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

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            self._process(job_id)

    def _process(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            return
        path = self.upload_path(job_id, job.kind)
        self.jobs.update(job_id, state="running")
        try:
            if job.kind == "npz":
                self._run_npz(job_id, path)
            else:
                self._run_zip(job_id, path)
        except _Stopped:
            logger.info("job %s stopped by shutdown", job_id)
            return
        except (DatasetError, zipfile.BadZipFile, InputError, ValueError, OSError) as exc:
            logger.warning("job %s failed: %s", job_id, exc)
            self.jobs.update(job_id, state="failed", error=str(exc).replace(str(path), job.filename))
        except Exception:
            logger.exception("job %s failed unexpectedly", job_id)
            self.jobs.update(job_id, state="failed", error="internal error while indexing")
        else:
            self.jobs.update(job_id, state="succeeded")
        finally:
            path.unlink(missing_ok=True)
        final = self.jobs.get(job_id)
        if self.on_finished is not None and final is not None:
            self.on_finished(final.state)

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopped

    def _run_npz(self, job_id: str, path: Path) -> None:
        def progress(done: int, total: int) -> None:
            self.jobs.update(job_id, done=done, total=total)
            self._check_stop()

        self.writer.add_dataset(path, source=f"job:{job_id}", batch_size=self.batch_size, progress=progress)

    def _run_zip(self, job_id: str, path: Path) -> None:
        source = f"job:{job_id}"
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if _wanted_member(m)]
            if len(members) > MAX_ZIP_MEMBERS:
                raise ValueError(f"the archive holds {len(members)} files, above the limit of {MAX_ZIP_MEMBERS}")
            labels = _read_labels(zf)
            files = [m for m in members if PurePosixPath(m.filename).name.lower() != "labels.csv"]
            self.jobs.update(job_id, total=len(files))
            done = 0
            images: list[tuple[str, Image.Image]] = []
            clouds: list[tuple[str, object]] = []

            def flush() -> None:
                nonlocal done, images, clouds
                if images:
                    self.writer.add_images([im for _, im in images], [n for n, _ in images],
                                           [_label(labels, n) for n, _ in images], source)
                if clouds:
                    import numpy as np

                    self.writer.add_clouds(np.stack([p for _, p in clouds]), [n for n, _ in clouds],
                                           [_label(labels, n) for n, _ in clouds], source)
                done += len(images) + len(clouds)
                images, clouds = [], []
                self.jobs.update(job_id, done=done)
                self._check_stop()

            for m in files:
                name = m.filename
                try:
                    if m.file_size > self.max_file_bytes:
                        raise InputError("too_large", f"{m.file_size} bytes, above the limit of "
                                         f"{self.max_file_bytes} bytes")
                    with zf.open(m) as f:
                        data = f.read(self.max_file_bytes + 1)
                    if len(data) > self.max_file_bytes:
                        raise InputError("too_large", f"above the limit of {self.max_file_bytes} bytes")
                    if PurePosixPath(name).suffix.lower() in IMAGE_EXTS:
                        images.append((name, read_image(data, max_bytes=self.max_file_bytes,
                                                        max_pixels=self.max_pixels)))
                    else:
                        clouds.append((name, load_points(data, name=PurePosixPath(name).name,
                                                         max_bytes=self.max_file_bytes)))
                except InputError as exc:
                    self.jobs.record_failure(job_id, name, exc.code, exc.message)
                except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                    self.jobs.record_failure(job_id, name, "unreadable", f"cannot extract from the archive: {exc}")
                if len(images) + len(clouds) >= self.batch_size:
                    flush()
            flush()


def _wanted_member(m: zipfile.ZipInfo) -> bool:
    p = PurePosixPath(m.filename)
    return not m.is_dir() and not p.name.startswith(".") and "__MACOSX" not in p.parts


def _read_labels(zf: zipfile.ZipFile) -> dict[str, str]:
    """``labels.csv`` (anywhere in the archive): ``file,label`` rows, optional header; keys are paths
    and base names."""
    entry = next((m for m in zf.infolist() if PurePosixPath(m.filename).name.lower() == "labels.csv"), None)
    if entry is None:
        return {}
    text = zf.read(entry).decode("utf-8-sig", errors="replace")
    out: dict[str, str] = {}
    for i, row in enumerate(csv.reader(io.StringIO(text))):
        if len(row) < 2 or not row[0].strip():
            continue
        name, label = row[0].strip(), row[1].strip()
        if i == 0 and label.lower() in ("label", "class", "category"):
            continue
        out[name] = label
        out.setdefault(PurePosixPath(name).name, label)
    return out


def _label(labels: dict[str, str], name: str) -> str | None:
    return labels.get(name) or labels.get(PurePosixPath(name).name) or None
