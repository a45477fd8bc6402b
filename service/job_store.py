"""Job records, persisted in SQLite (``<data_dir>/jobs.sqlite3``): what :class:`service.jobs.JobRunner`
runs and the admin routes report.

A job is ``queued``, then ``running``, and ends ``succeeded``, ``failed`` or ``cancelled``. An ended job
never changes state again: :meth:`JobStore.finish` and :meth:`JobStore.cancel` change only a job that is
queued or running (one conditional ``UPDATE``), so a job cancelled while its last batch is stored stays
cancelled, and a job cancelled before a crash is not resumed (only queued and running ones are).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

JOB_DB = "jobs.sqlite3"
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
#: The states of a job that has not ended (what is resumed at start, what may be cancelled).
ACTIVE = ("queued", "running")
MAX_ERRORS = 100
_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ','now')"
_COLUMNS = "id, kind, filename, state, total, done, failed, errors, error, created, updated, path, started, ended, " \
           "start_done"
#: Columns added after the first version of the table: (name, declaration).
_LATER_COLUMNS = (("path", "TEXT"), ("started", "TEXT"), ("ended", "TEXT"),
                  ("start_done", "INTEGER NOT NULL DEFAULT 0"))


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
    #: when the job's current (or last) run began, and when the job ended (``None``: not yet)
    started: str | None = None
    ended: str | None = None
    #: ``done`` when the current run began (a resumed job starts with what it indexed before)
    start_done: int = 0

    def speed(self, now: datetime | None = None) -> tuple[float | None, float | None]:
        """``(items_per_second, eta_seconds)``: files (zip) or shapes (npz) processed, indexed or failed,
        per second by the current (or last) run, from its start to now (or to its end), ``None`` before
        the job starts; and, while it runs, the seconds left at that rate (``None`` until it processed one)."""
        if self.started is None:
            return None, None
        end = _parse(self.ended) if self.ended else (now or datetime.now(UTC))
        elapsed = (end - _parse(self.started)).total_seconds()
        processed = max(self.done - self.start_done, 0) + self.failed
        if elapsed <= 0:
            return None, None
        rate = processed / elapsed
        if self.state != "running" or rate <= 0 or self.total <= 0:
            return round(rate, 3), None
        left = max(self.total - self.done - self.failed, 0)
        return round(rate, 3), round(left / rate, 1)


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


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
            f"created TEXT NOT NULL DEFAULT ({_NOW}), updated TEXT NOT NULL DEFAULT ({_NOW}), path TEXT, "
            "started TEXT, ended TEXT, start_done INTEGER NOT NULL DEFAULT 0)")
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
        for name, decl in _LATER_COLUMNS:  # a jobs.sqlite3 written by an older version
            if name not in columns:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _job(row: tuple) -> Job:
        return Job(*row[:7], errors=json.loads(row[7]), error=row[8], created=row[9], updated=row[10], path=row[11],
                   started=row[12], ended=row[13], start_done=int(row[14] or 0))

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
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._job(row)

    def list(self, states: list[str] | tuple[str, ...] = (), offset: int = 0, limit: int = 50) -> tuple[int, list[Job]]:
        """``(total, page)``: how many jobs are in one of ``states`` (any state, when empty) and ``limit`` of
        them from ``offset`` on, newest first (by ``created``, then ``id``)."""
        states = list(dict.fromkeys(states))
        where = f" WHERE state IN ({', '.join('?' * len(states))})" if states else ""
        with self._lock:
            total = int(self._db.execute(f"SELECT count(*) FROM jobs{where}", states).fetchone()[0])
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs{where} ORDER BY created DESC, id LIMIT ? OFFSET ?",
                                    (*states, int(limit), int(offset))).fetchall()
        return total, [self._job(r) for r in rows]

    def update(self, job_id: str, **fields: object) -> None:
        """Set counters (``total``, ``done``, ``failed``, ``start_done``), ``error`` or ``state``; ending a job
        goes through :meth:`finish`."""
        allowed = {"state", "total", "done", "failed", "error", "start_done"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"can only update {sorted(allowed)}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols}, updated = {_NOW} WHERE id = ?", (*fields.values(), job_id))

    def begin(self, job_id: str) -> bool:
        """Mark a queued (or interrupted running) job running, forgetting the failures of an earlier,
        interrupted run (they are met again); False when the job has ended meanwhile (cancelled)."""
        with self._lock:
            cur = self._db.execute(
                f"UPDATE jobs SET state = 'running', failed = 0, errors = '[]', error = NULL, started = {_NOW}, "
                f"ended = NULL, start_done = done, updated = {_NOW} WHERE id = ? AND state IN ('queued', 'running')",
                (job_id,))
            return cur.rowcount == 1

    def finish(self, job_id: str, state: str, error: str | None = None) -> bool:
        """End a queued or running job as ``succeeded`` or ``failed``; False (nothing changed) when it has
        already ended (e.g. it was cancelled)."""
        if state not in ("succeeded", "failed"):
            raise ValueError(f"a job finishes as succeeded or failed, not {state!r}")
        with self._lock:
            cur = self._db.execute(
                f"UPDATE jobs SET state = ?, error = ?, ended = {_NOW}, updated = {_NOW} "
                "WHERE id = ? AND state IN ('queued', 'running')", (state, error, job_id))
            return cur.rowcount == 1

    def cancel(self, job_id: str) -> tuple[Job | None, str | None]:
        """Cancel a queued or running job: ``(the job after, its state before)``; ``(None, None)`` for an
        unknown id. An ended job is left as it is (its state before is then its state)."""
        with self._lock:
            row = self._db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None, None
            before = str(row[0])
            if before in ACTIVE:
                self._db.execute(f"UPDATE jobs SET state = 'cancelled', ended = {_NOW}, updated = {_NOW} "
                                 "WHERE id = ?", (job_id,))
        return self.get(job_id), before

    def record_failure(self, job_id: str, name: str, code: str, detail: str) -> None:
        """Count one failed file and keep its error (the first ``MAX_ERRORS``)."""
        with self._lock:
            row = self._db.execute("SELECT errors FROM jobs WHERE id = ?", (job_id,)).fetchone()
            errors = json.loads(row[0]) if row else []
            if len(errors) < MAX_ERRORS:
                errors.append({"name": name, "error": code, "detail": detail})
            self._db.execute(f"UPDATE jobs SET failed = failed + 1, errors = ?, updated = {_NOW} WHERE id = ?",
                             (json.dumps(errors), job_id))

    def unfinished(self) -> list[str]:
        """Ids of the jobs queued or running, oldest first."""
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT id FROM jobs WHERE state IN ('queued', 'running') ORDER BY created")]
