"""Checks run before the service starts; light imports only (no torch), so that ``cmah serve`` fails fast."""

from __future__ import annotations

from index.metadata import MetadataDB
from index.persistence import DirLock
from index.store import DB_FILENAME
from model.manifest import weights_id

from .codes_model import CodesModelError, check_codes_model
from .settings import Settings


def check_store(settings: Settings) -> None:
    """Open and check the index database of ``settings.data_dir`` (if there is one) and which weights made
    its codes, then close it.

    Raises:
        StoreCorruptError: the database is damaged or not a CMAH index (the message says what to do).
        StoreLockedError: another process has the data directory open.
        CodesModelError: its codes were made by other weights and it holds more than the demo gallery
            (which the service re-encodes by itself).
        WeightsError: the weights directory has no usable manifest.
    """
    path = settings.data_dir / DB_FILENAME
    if not path.is_file() or path.stat().st_size == 0:
        return
    current = weights_id(settings.weights_dir)
    with DirLock(settings.data_dir):
        meta = MetadataDB(path)
        try:
            check = check_codes_model(meta, current)
        finally:
            meta.close()
    if not check.ok and not check.auto_reencode:
        raise CodesModelError(check.problem(settings.data_dir, settings.weights_dir))
