"""Background indexing jobs, persisted in SQLite (``<data_dir>/jobs.sqlite3``).

A job indexes a dataset ``.npz`` (project format) or a ``.zip`` of images and 3D files with an optional
``labels.csv`` (``file,label`` rows), told apart by their content (:func:`job_kind`), never by their
names: a file uploaded to ``<data_dir>/uploads/`` (deleted when the job ends) or a file that already lives
on the server under ``CMAH_IMPORT_ROOT`` (read in place, never deleted). Jobs run one at a time on a
worker thread.

Jobs resume: a job still queued or running when the process stopped (even by SIGKILL) is queued again
on the next start and skips what it had already indexed. What is indexed is read from the hash store
(the source of truth; items carry ``source = "job:<id>"``), never from the job's own counters, which
are not updated in the same transaction: a zip job skips the members whose name is already indexed, a
``.npz`` job the shapes already indexed (a shape's two items are added in one transaction). A job whose
file is gone is marked ``failed``.

Archives are hostile until proven otherwise: members with unsafe names (``..``, absolute, drive letters,
backslashes), symbolic links, devices / fifos, nested archives and duplicate names are refused one by
one (``refused_member`` in ``errors``) while the others are indexed. Sizes are counted while members are
decompressed, never taken from the headers: a member above ``max_file_bytes`` is ``too_large``, one that
inflates more than :data:`BOMB_RATIO` times its compressed size (past :data:`BOMB_MIN_BYTES`) is a
``zip_bomb``, and a job whose members inflate to more than ``max_uncompressed_bytes`` in all fails.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import os
import queue
import re
import sqlite3
import stat
import threading
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
from PIL import Image

from model.dataset import DatasetError
from model.io import InputError, load_points, read_image, sniff_kind

from .indexing import ItemWriter
from .uploads import content_phrase

logger = logging.getLogger(__name__)

JOB_DB = "jobs.sqlite3"
UPLOAD_DIR = "uploads"
STATES = ("queued", "running", "succeeded", "failed")
KINDS = ("npz", "zip")
ZIP_MAGIC = b"PK\x03\x04"
#: Bytes of a job file's (or zip member's) head that are sniffed for what it is.
HEAD_BYTES = 1 << 16
MAX_ERRORS = 100
MAX_ZIP_MEMBERS = 100_000
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
#: Members with these extensions are archives inside the archive: refused, never opened.
NESTED_ARCHIVE_EXTS = {".zip", ".npz", ".npy", ".tar", ".tgz", ".gz", ".bz2", ".tbz2", ".xz", ".txz", ".lz",
                       ".lzma", ".zst", ".7z", ".rar", ".jar", ".war", ".cab", ".iso", ".z"}
#: A member inflating more than this many times its compressed size ...
BOMB_RATIO = 200
#: ... once more than this many bytes came out of it, is refused as a zip bomb.
BOMB_MIN_BYTES = 1 << 20
READ_CHUNK = 64 * 1024
REFUSED = "refused_member"
FILE_GONE = "the job's file is gone"
DISK_FULL = "the disk is full (no space left on device)"
_DRIVE = re.compile(r"^[A-Za-z]:")


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
    #: the server file of a path job (``None``: an upload in ``uploads/``)
    path: str | None = None


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
            "updated TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')), path TEXT)")
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
        if "path" not in columns:  # a jobs.sqlite3 written before path jobs existed
            self._db.execute("ALTER TABLE jobs ADD COLUMN path TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, kind: str, filename: str, path: str | None = None) -> Job:
        job_id = uuid.uuid4().hex
        with self._lock:
            self._db.execute("INSERT INTO jobs (id, kind, filename, state, path) VALUES (?, ?, ?, 'queued', ?)",
                             (job_id, kind, filename, path))
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT id, kind, filename, state, total, done, failed, errors, error, created, "
                                   "updated, path FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        return Job(*row[:7], errors=json.loads(row[7]), error=row[8], created=row[9], updated=row[10], path=row[11])

    def update(self, job_id: str, **fields: object) -> None:
        allowed = {"state", "total", "done", "failed", "error"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"can only update {sorted(allowed)}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols}, updated = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?",
                             (*fields.values(), job_id))

    def begin(self, job_id: str) -> None:
        """Mark a job running, forgetting the failures of an earlier, interrupted run (they are met again)."""
        with self._lock:
            self._db.execute("UPDATE jobs SET state = 'running', failed = 0, errors = '[]', error = NULL, "
                             "updated = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?", (job_id,))

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
        """Ids of the jobs queued or running, oldest first."""
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT id FROM jobs WHERE state IN ('queued', 'running') ORDER BY created")]


class JobFileError(Exception):
    """A file that cannot make a job; ``status`` and ``code`` are those of the HTTP answer."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class ImportPathError(JobFileError):
    """A server path that cannot be imported."""


def job_kind(f: BinaryIO, name: str) -> str:
    """The kind of job file ``f`` makes, judged by its content (never by ``name``, an upload's file name or
    the path given): ``"npz"`` for a zip of top-level ``.npy`` arrays only (a dataset; a zip job would refuse
    them all as nested archives), ``"zip"`` for another zip. The name breaks the tie only when the zip's
    directory cannot be read (the job then fails, saying why). Leaves ``f`` at its start.

    Raises:
        JobFileError: 400 ``empty``; 415 ``unsupported_format`` for anything but a zip, naming what it is
            when it is an image or a 3D file.
    """
    f.seek(0)
    head = f.read(HEAD_BYTES)
    f.seek(0)
    if not head:
        raise JobFileError(400, "empty", f"{name!r} is empty")
    if not head.startswith(ZIP_MAGIC):
        found = sniff_kind(head)
        got = f"got {content_phrase(found)}" if found is not None else "it is not a zip / npz archive"
        raise JobFileError(415, "unsupported_format", f"{name!r}: {got}; expected a dataset .npz or a .zip of "
                           "images / 3D files")
    try:
        with zipfile.ZipFile(f) as zf:
            names: list[str] | None = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        names = None
    finally:
        f.seek(0)
    if names is None:
        return "npz" if name.lower().endswith(".npz") else "zip"
    return "npz" if names and all(n.endswith(".npy") and "/" not in n for n in names) else "zip"


def path_kind(path: Path, name: str) -> str:
    """:func:`job_kind` of the file at ``path``."""
    with open(path, "rb") as f:
        return job_kind(f, name)


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def resolve_import(root: Path | None, given: str) -> Path:
    """The regular file ``given`` (relative to ``root``, or absolute) once proven to lie inside ``root``.

    ``..`` components, absolute paths outside the root and symbolic links leading out of it are refused
    (403) before anything is looked up; a missing file is 404; a directory or another format is 415.

    Raises:
        ImportPathError: with the HTTP status and error code of the refusal.
        JobFileError: the file is empty or not a zip / npz archive (:func:`job_kind`).
    """
    if root is None:
        raise ImportPathError(403, "imports_disabled", "server-side imports are disabled: CMAH_IMPORT_ROOT is not set")
    try:
        base = Path(root).resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise ImportPathError(403, "imports_disabled", "CMAH_IMPORT_ROOT is not an existing directory") from exc
    raw = Path(given)
    if "\x00" in given or ".." in raw.parts:
        raise ImportPathError(403, "outside_import_root", f"{given!r}: '..' is not allowed in an import path")
    candidate = raw if raw.is_absolute() else base / raw
    absolute_root = Path(os.path.abspath(root))
    if not (_inside(candidate, base) or _inside(candidate, absolute_root)):
        raise ImportPathError(403, "outside_import_root", f"{given!r} is outside CMAH_IMPORT_ROOT")
    try:
        if not _inside(candidate.resolve(), base):  # a symbolic link leading out of the root
            raise ImportPathError(403, "outside_import_root", f"{given!r} leads outside CMAH_IMPORT_ROOT")
        resolved = candidate.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ImportPathError(404, "not_found", f"no file {given!r} under CMAH_IMPORT_ROOT") from exc
    except (OSError, RuntimeError) as exc:  # permission, symlink loop
        raise ImportPathError(403, "forbidden", f"{given!r} cannot be resolved: {type(exc).__name__}") from exc
    if not _inside(resolved, base):
        raise ImportPathError(403, "outside_import_root", f"{given!r} leads outside CMAH_IMPORT_ROOT")
    _check_import_file(resolved, given)
    return resolved


def _check_import_file(path: Path, given: str) -> None:
    if not path.is_file():
        raise ImportPathError(415, "unsupported_format", f"{given!r} is not a regular file (a .npz or .zip is "
                              "expected; directories are not imported)")
    path_kind(path, given)


def member_problem(m: zipfile.ZipInfo) -> str | None:
    """Why an archive member must not be opened (``None``: it may be)."""
    name = m.filename
    if "\\" in name:
        return "unsafe name: backslash in the path"
    if name.startswith("/") or _DRIVE.match(name):
        return "unsafe name: absolute path"
    if ".." in PurePosixPath(name).parts:
        return "unsafe name: '..' in the path"
    mode = m.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "device, fifo or socket"
    if PurePosixPath(name).suffix.lower() in NESTED_ARCHIVE_EXTS:
        return "nested archive (archives inside the archive are not opened)"
    return None


def is_disk_full(exc: BaseException) -> bool:
    """An error that means the disk (or the quota) is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


class _Stopped(Exception):
    pass


class _Refused(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


class ArchiveTooLarge(ValueError):
    """The members of a zip job inflate to more than the job's limit."""


class _Budget:
    """Uncompressed bytes a job may still read from its archive."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise ArchiveTooLarge(f"the archive inflates to more than {self.limit} bytes "
                                  "(CMAH_MAX_JOB_UNCOMPRESSED_BYTES); indexing stopped")


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
        if job is None or job.state not in ("queued", "running"):
            return
        finished = True
        try:
            path = self._job_file(job)
            if not path.is_file():
                raise FileNotFoundError(f"{FILE_GONE} ({job.filename}); submit it again")
            self.jobs.begin(job_id)
            if job.kind == "npz":
                self._run_npz(job_id, path)
            else:
                self._run_zip(job_id, path)
        except _Stopped:
            logger.info("job %s stopped by shutdown; it resumes at the next start", job_id)
            finished = False
            return
        except JobFileError as exc:
            self._fail(job, exc.detail)
        except Exception as exc:  # noqa: BLE001 - every failure ends the job with a reason
            self._fail(job, self._reason(job, exc))
        else:
            self.jobs.update(job_id, state="succeeded")
        finally:
            if finished and job.path is None:  # uploads are deleted once the job is over; server files never
                self.upload_path(job_id, job.kind).unlink(missing_ok=True)
        final = self.jobs.get(job_id)
        if self.on_finished is not None and final is not None:
            self.on_finished(final.state)

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
            self.jobs.update(job.id, state="failed", error=reason)
        except sqlite3.Error:
            logger.exception("could not record the failure of job %s", job.id)

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopped

    def _run_npz(self, job_id: str, path: Path) -> None:
        source = f"job:{job_id}"
        start = sum(1 for modality, _ in self.writer.store.source_names(source) if modality == "points")
        if start:
            logger.info("job %s resumes after %d shapes already indexed", job_id, start)

        def progress(done: int, total: int) -> None:
            self.jobs.update(job_id, done=done, total=total)
            self._check_stop()

        self.writer.add_dataset(path, source=source, batch_size=self.batch_size, progress=progress, start=start)

    def _run_zip(self, job_id: str, path: Path) -> None:
        source = f"job:{job_id}"
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if _wanted_member(m)]
            if len(members) > MAX_ZIP_MEMBERS:
                raise ValueError(f"the archive holds {len(members)} files, above the limit of {MAX_ZIP_MEMBERS}")
            budget = _Budget(self.max_uncompressed_bytes)
            labels = self._read_labels(zf, members, budget)
            files = [m for m in members if PurePosixPath(m.filename).name.lower() != "labels.csv"]
            indexed = {name for _, name in self.writer.store.source_names(source)}
            batch = _Batch(self, job_id, source, labels, done=sum(m.filename in indexed for m in files))
            if batch.done:
                logger.info("job %s resumes after %d files already indexed", job_id, batch.done)
            self.jobs.update(job_id, total=len(files), done=batch.done)
            seen: set[str] = set()
            for m in files:
                name = m.filename
                if name in seen:
                    self.jobs.record_failure(job_id, name, REFUSED, "duplicate name: only the first one is indexed")
                    continue
                seen.add(name)
                if name not in indexed:
                    self._read_file(zf, m, budget, batch)
            batch.flush()

    def _read_file(self, zf: zipfile.ZipFile, m: zipfile.ZipInfo, budget: _Budget, batch: _Batch) -> None:
        """Decode one member into the batch, or record why it cannot be indexed."""
        name = m.filename
        try:
            problem = member_problem(m)
            if problem is not None:
                raise _Refused(REFUSED, problem)
            data = self._read_member(zf, m, budget)
            if _is_image(data, name):
                batch.images.append((name, read_image(data, max_bytes=self.max_file_bytes,
                                                      max_pixels=self.max_pixels)))
            else:
                batch.clouds.append((name, load_points(data, name=PurePosixPath(name).name,
                                                       max_bytes=self.max_file_bytes)))
        except _Refused as exc:
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

    def _read_member(self, zf: zipfile.ZipFile, m: zipfile.ZipInfo, budget: _Budget) -> bytes:
        """The member's bytes, counted chunk by chunk as they are inflated (the header sizes are not trusted)."""
        parts: list[bytes] = []
        size = 0
        with zf.open(m) as f:
            while chunk := f.read(READ_CHUNK):
                size += len(chunk)
                budget.take(len(chunk))
                if size > self.max_file_bytes:
                    raise InputError("too_large", f"inflates to more than the limit of {self.max_file_bytes} bytes")
                if size > BOMB_MIN_BYTES and size > BOMB_RATIO * _compressed_read(f, m):
                    raise _Refused("zip_bomb", f"compression ratio above {BOMB_RATIO}:1 ({_compressed_read(f, m)} "
                                   f"compressed bytes inflated to {size})")
                parts.append(chunk)
        return b"".join(parts)

    def _read_labels(self, zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], budget: _Budget) -> dict[str, str]:
        """``labels.csv`` (anywhere in the archive, a safe member): ``file,label`` rows, optional header; keys
        are paths and base names."""
        entry = next((m for m in members if PurePosixPath(m.filename).name.lower() == "labels.csv"
                      and member_problem(m) is None), None)
        if entry is None:
            return {}
        try:
            text = self._read_member(zf, entry, budget).decode("utf-8-sig", errors="replace")
        except (InputError, _Refused) as exc:
            raise ValueError(f"labels.csv cannot be used: {exc}") from exc
        return _parse_labels(text)


def _compressed_read(f: object, m: zipfile.ZipInfo) -> int:
    """Compressed bytes of member ``m`` inflated so far (at least 1): read from the archive minus what the
    inflater still holds. Uses CPython's ``ZipExtFile`` counters; without them, the whole compressed size."""
    left = getattr(f, "_compress_left", None)
    if not isinstance(left, int):
        return max(m.compress_size, 1)
    tail = getattr(getattr(f, "_decompressor", None), "unconsumed_tail", b"")
    return max(m.compress_size - left - len(tail if isinstance(tail, bytes) else b""), 1)


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
                              [_label(self.labels, n) for n, _ in self.images], self.source)
        if self.clouds:
            writer.add_clouds(np.stack([p for _, p in self.clouds]), [n for n, _ in self.clouds],
                              [_label(self.labels, n) for n, _ in self.clouds], self.source)
        self.done += self.size()
        self.images, self.clouds = [], []
        self.runner.jobs.update(self.job_id, done=self.done)
        self.runner._check_stop()


def _is_image(data: bytes, name: str) -> bool:
    """Whether a member is read as a picture: its content decides (a PLY named ``.png`` is a cloud), its
    name only when the content is neither recognisably (the reader then says what is wrong)."""
    found = sniff_kind(data[:HEAD_BYTES])
    return found[0] == "image" if found is not None else PurePosixPath(name).suffix.lower() in IMAGE_EXTS


def _wanted_member(m: zipfile.ZipInfo) -> bool:
    p = PurePosixPath(m.filename)
    return not m.is_dir() and not p.name.startswith(".") and "__MACOSX" not in p.parts


def _parse_labels(text: str) -> dict[str, str]:
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
