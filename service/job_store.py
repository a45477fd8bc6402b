"""Job records, persisted in SQLite (``<data_dir>/jobs.sqlite3``): what :class:`service.jobs.JobRunner`
runs and the admin routes report."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

JOB_DB = "jobs.sqlite3"
STATES = ("queued", "running", "succeeded", "failed")
MAX_ERRORS = 100


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
