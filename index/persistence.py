"""Crash-safe files: atomic writes, snapshot container format, and the data-directory lock.

A snapshot file is::

    b"CMAHSNAP" | u32 header length | u32 crc32(header) | header (JSON, UTF-8) | payload

The JSON header names the modality, code length, SQLite generation and database uuid the payload
(a serialised FAISS index) was taken at, plus the payload's length and crc32. Files are written to a
temporary name in the same directory, fsynced, renamed over the old file and the directory is
fsynced, so a reader sees either the old or the new snapshot, never a torn one.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import uuid
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from index.errors import SnapshotError, StoreLockedError

try:  # POSIX only; elsewhere the directory lock is skipped (with a log line).
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"CMAHSNAP"
SNAPSHOT_FORMAT = 1
TEMP_SUFFIX = ".tmp"
_PREFIX = struct.Struct("<8sII")


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename or unlink inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, *chunks: bytes) -> None:
    """Write ``chunks`` to ``path`` atomically and durably (temp file, fsync, rename, fsync dir)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_temp_files(directory: Path) -> int:
    """Delete temp files left by an interrupted :func:`atomic_write_bytes`; returns how many."""
    removed = 0
    for p in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        removed += 1
    if removed:
        logger.info("removed %d leftover temporary snapshot file(s) in %s", removed, directory)
    return removed


@dataclass(frozen=True)
class SnapshotHeader:
    """What a snapshot payload reflects; compared with SQLite on open."""

    modality: str
    bits: int
    generation: int
    db_uuid: str
    count: int
    payload_len: int = 0
    payload_crc32: int = 0
    format: int = SNAPSHOT_FORMAT


def write_snapshot(path: Path, header: SnapshotHeader, payload: bytes) -> None:
    """Atomically write a snapshot file (header fields ``payload_len``/``payload_crc32`` are filled in)."""
    full = SnapshotHeader(**{**asdict(header), "payload_len": len(payload), "payload_crc32": zlib.crc32(payload)})
    raw = json.dumps(asdict(full), sort_keys=True).encode()
    atomic_write_bytes(path, _PREFIX.pack(SNAPSHOT_MAGIC, len(raw), zlib.crc32(raw)), raw, payload)


def read_snapshot(path: Path) -> tuple[SnapshotHeader, bytes]:
    """Read and verify a snapshot file.

    Raises:
        SnapshotError: missing file, bad magic, truncated data or checksum mismatch.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise SnapshotError(f"snapshot {path} is missing") from exc
    except OSError as exc:
        raise SnapshotError(f"snapshot {path} cannot be read: {exc}") from exc
    if len(data) < _PREFIX.size:
        raise SnapshotError(f"snapshot {path} is truncated ({len(data)} bytes)")
    magic, hlen, hcrc = _PREFIX.unpack_from(data)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotError(f"snapshot {path} has a bad magic number")
    raw = data[_PREFIX.size : _PREFIX.size + hlen]
    if len(raw) != hlen or zlib.crc32(raw) != hcrc:
        raise SnapshotError(f"snapshot {path} has a damaged header")
    try:
        header = SnapshotHeader(**json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise SnapshotError(f"snapshot {path} has an unreadable header: {exc}") from exc
    if header.format != SNAPSHOT_FORMAT:
        raise SnapshotError(f"snapshot {path} has unsupported format {header.format}")
    payload = data[_PREFIX.size + hlen :]
    if len(payload) != header.payload_len or zlib.crc32(payload) != header.payload_crc32:
        raise SnapshotError(f"snapshot {path} payload is truncated or damaged (checksum mismatch)")
    return header, payload


class DirLock:
    """Exclusive, non-blocking ``flock`` on ``<dir>/LOCK`` held while a store is open.

    The kernel releases it when the process dies, so a crashed writer never blocks a restart.
    """

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "LOCK"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StoreLockedError`."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:  # pragma: no cover
            logger.warning("no fcntl on this platform: %s is not locked against concurrent stores", self.path)
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                raise StoreLockedError(
                    f"{self.path.parent} is already opened by another HashStore "
                    "(in this or another process); close it first"
                ) from exc
        self._fd = fd

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> DirLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
