"""Exceptions raised by the :mod:`index` package."""

from __future__ import annotations


class IndexStoreError(RuntimeError):
    """Base class of every error raised by the hash store (bad input aside, which is ``ValueError``)."""


class StoreCorruptError(IndexStoreError):
    """The SQLite metadata database (the source of truth) cannot be read.

    The store never starts empty on top of a damaged database: the operator has to restore the
    database from a backup or delete the data directory to start with an empty index.
    """


class StoreLockedError(IndexStoreError):
    """Another :class:`~index.store.HashStore` (in this or another process) holds the data directory."""


class StoreClosedError(IndexStoreError):
    """An operation was attempted on a closed store."""


class SnapshotError(IndexStoreError):
    """A FAISS snapshot file is missing, stale or damaged (internal: it is rebuilt from SQLite)."""
