"""Checks run before the service starts; light imports only (no torch), so that ``cmah serve`` fails fast."""

from __future__ import annotations

from index.metadata import MetadataDB
from index.persistence import DirLock
from index.store import DB_FILENAME

from .settings import Settings


def check_store(settings: Settings) -> None:
    """Open and check the index database of ``settings.data_dir`` (if there is one), then close it.

    Raises:
        StoreCorruptError: the database is damaged or not a CMAH index (the message says what to do).
        StoreLockedError: another process has the data directory open.
    """
    path = settings.data_dir / DB_FILENAME
    if not path.is_file() or path.stat().st_size == 0:
        return
    with DirLock(settings.data_dir):
        MetadataDB(path).close()
