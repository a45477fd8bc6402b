"""The durable hash store: SQLite metadata (source of truth) + an exact Hamming search backend.

Usage::

    with HashStore(Path("data")) as store:
        ids = store.add([{"modality": "image", "name": "chair_01.png", "label": "chair",
                          "codes": {16: c16, 32: c32, 64: c64}}])
        dist, found = store.search("points", query_codes, bits=64, k=10)

Guarantees:

* ``add`` / ``upsert`` / ``delete`` are durable when they return (one SQLite transaction each;
  a batch ``add`` is one transaction). The search backend is updated right after the commit.
* Search is exact; rows are ordered by ``(distance, id)`` ascending and padded with id ``-1`` and
  distance ``-1`` (see :mod:`index.exact`).
* Thread-safe: searches run concurrently; mutations are exclusive.
* Only one store may open a data directory at a time (:class:`~index.errors.StoreLockedError`).
* A damaged SQLite database raises :class:`~index.errors.StoreCorruptError` on open; damaged, stale
  or missing FAISS snapshots are rebuilt from SQLite.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from index.codes import BITS_CHOICES, check_bits
from index.errors import StoreClosedError, StoreCorruptError
from index.filters import (
    AttributeIndex,
    ItemSubset,
    SearchFilter,
    check_search,
    cut_distance,
    distinct_search,
)
from index.flat import DEFAULT_TIE_MARGIN
from index.locking import RWLock
from index.metadata import MetadataDB, corrupt_message
from index.persistence import DirLock
from index.records import ItemRecord, check_modality, normalize_codes, normalize_item

logger = logging.getLogger(__name__)

BACKENDS = ("faiss", "milvus")
DB_FILENAME = "items.sqlite3"
DEFAULT_SNAPSHOT_EVERY = 10_000
#: ``meta`` key naming the weights that made the store's codes (see :mod:`service.codes_model`).
CODES_MODEL_KEY = "codes_model"


class VectorBackend(Protocol):
    """What :class:`HashStore` needs from a search backend (FAISS or Milvus)."""

    name: str

    def open(self, meta: MetadataDB) -> None:
        """Bring the backend in line with SQLite (load or rebuild)."""

    def add(self, modality: str, bits: int, ids: np.ndarray, codes: np.ndarray, labels: Sequence[str | None],
            sources: Sequence[str]) -> None:
        """Index new items (with their labels and sources, for backends that filter on them)."""

    def remove(self, modality: str, bits: int, ids: np.ndarray) -> None:
        """Drop items."""

    def search(
        self, modality: str, bits: int, query_codes: np.ndarray, k: int, subset: ItemSubset | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact search, order of :mod:`index.exact`, among the items of ``subset`` when given."""

    def count(self, modality: str, bits: int) -> int:
        """Number of indexed items."""

    def rebuild(self, meta: MetadataDB, modality: str, bits: int) -> None:
        """Re-create one (modality, bits) index from SQLite."""

    def committed(self, meta: MetadataDB, keys: set[tuple[str, int]]) -> None:
        """A committed change has been applied to the indexes of ``keys``."""

    def snapshot(self, meta: MetadataDB) -> int:
        """Persist pending state; returns how many indexes were written."""

    def close(self, meta: MetadataDB) -> None:
        """Persist and release resources."""


def _make_backend(
    backend: str,
    data_dir: Path,
    device: str,
    tie_margin: int,
    threads: int | None,
    milvus_uri: str | None,
    mih: bool = True,
    scan: str = "auto",
) -> VectorBackend:
    if backend == "faiss":
        from index.faiss_store import FaissBackend
        from index.gpu import make_accelerator

        return FaissBackend(
            data_dir,
            accelerator_factory=make_accelerator(device),
            tie_margin=tie_margin,
            threads=threads,
            mih=mih,
            scan=scan,
        )
    if backend == "milvus":
        from index.milvus_store import MilvusBackend

        return MilvusBackend(data_dir, uri=milvus_uri, tie_margin=tie_margin)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


class HashStore:
    """Items with binary hash codes, durable in SQLite, searchable by exact Hamming distance.

    Args:
        data_dir: directory of the store (created if missing): ``items.sqlite3`` + backend files.
        backend: ``"faiss"`` (in-process, default) or ``"milvus"`` (``pymilvus``; see ``milvus_uri``).
        device: FAISS backend only: ``"cpu"`` (default; never imports torch), ``"auto"`` (GPU when
            available) or ``"cuda"`` (GPU required). See :mod:`index.gpu`.
        snapshot_every: write FAISS snapshots after this many item changes (they are also written
            by :meth:`snapshot` and :meth:`close`); ``0`` disables the automatic snapshots.
        tie_margin: extra candidates per query used to resolve distance ties (see :mod:`index.exact`).
        threads: FAISS backend only: OpenMP threads for large query batches (``None`` or ``0``: all
            cores). The default, 1, is right for small or shared machines: FAISS parallelises only
            over the queries of a batch, and when other processes keep the cores busy each OpenMP
            team wake-up costs milliseconds (see ``docs/benchmarks-search.md``); give more threads on
            an otherwise idle multi-core machine. Single queries always run on one thread.
        mih: FAISS backend only: answer queries by exact multi-index hashing (sub-linear bucket
            probing, :mod:`index.mih`) when expected faster than the scan (default ``True``);
            queries for which it would be slow fall back to the scan. ``False``: always scan.
        scan: FAISS backend only: the full scan, ``"auto"`` (default: the compiled numba kernel of
            :mod:`index.scan_kernel` when numba is installed, else FAISS), ``"numba"`` (error if
            numba is missing) or ``"faiss"`` (FAISS's flat scan + tie resolution). The kernel uses
            ``threads`` too, and also splits single queries over threads.
        milvus_uri: Milvus backend only: server URI, or a local ``.db`` file for milvus-lite
            (default ``<data_dir>/milvus.db``).
        check_integrity: run ``PRAGMA quick_check`` on open (recommended; O(database size)).

    Raises:
        StoreCorruptError: the SQLite database is damaged or is not a CMAH index database.
        StoreLockedError: the directory is opened by another store.
        ValueError: unknown backend or device.
    """

    def __init__(
        self,
        data_dir: Path | str,
        backend: str = "faiss",
        *,
        device: str = "cpu",
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
        tie_margin: int = DEFAULT_TIE_MARGIN,
        threads: int | None = 1,
        milvus_uri: str | None = None,
        check_integrity: bool = True,
        mih: bool = True,
        scan: str = "auto",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.snapshot_every = int(snapshot_every)
        self._rw = RWLock()
        self._db_lock = threading.Lock()
        self._changes_since_snapshot = 0
        #: labels and sources of every item, for filtered searches: built on the first one, then kept
        #: up to date by the mutations (under the write lock)
        self._attrs: AttributeIndex | None = None
        self._attrs_lock = threading.Lock()
        self._lock = DirLock(self.data_dir)
        self._lock.acquire()
        self._meta: MetadataDB | None = None
        try:
            self._meta = MetadataDB(self.data_dir / DB_FILENAME, check_integrity=check_integrity)
            self._backend: VectorBackend = _make_backend(
                backend, self.data_dir, device, tie_margin, threads, milvus_uri, mih, scan
            )
            self._backend.open(self._meta)
        except sqlite3.DatabaseError as exc:  # damage that quick_check did not see, met while rebuilding
            self._meta.close()  # type: ignore[union-attr]
            self._lock.release()
            raise StoreCorruptError(corrupt_message(self.data_dir / DB_FILENAME, str(exc))) from exc
        except BaseException:
            if self._meta is not None:
                self._meta.close()
            self._lock.release()
            raise
        self.backend_name = backend
        logger.info("opened hash store %s (%s backend, %d items)", self.data_dir, backend, self._meta.count())

    # ------------------------------------------------------------------ lifecycle
    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._meta is None

    def _require_open(self) -> MetadataDB:
        if self._meta is None:
            raise StoreClosedError(f"hash store {self.data_dir} is closed")
        return self._meta

    def close(self) -> None:
        """Write pending snapshots, close SQLite and release the directory (idempotent)."""
        with self._rw.write(), self._db_lock:
            if self._meta is None:
                return
            try:
                self._backend.close(self._meta)
            finally:
                self._meta.close()
                self._meta = None
                self._lock.release()

    def __enter__(self) -> HashStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def snapshot(self) -> int:
        """Write the backend's snapshots of every changed index now; returns how many were written."""
        with self._rw.write(), self._db_lock:
            meta = self._require_open()
            self._changes_since_snapshot = 0
            return self._backend.snapshot(meta)

    flush = snapshot

    # ------------------------------------------------------------------ mutations
    def _index_items(self, ids: Sequence[int], records: Sequence[ItemRecord]) -> None:
        """Add committed items to the backend (caller holds the write lock)."""
        groups: dict[tuple[str, int], list[tuple[int, ItemRecord]]] = defaultdict(list)
        for item_id, rec in zip(ids, records, strict=True):
            for bits in rec.codes:
                groups[(rec.modality, bits)].append((item_id, rec))
        for (modality, bits), group in groups.items():
            gid = np.asarray([i for i, _ in group], dtype=np.int64)
            gcodes = np.stack([r.codes[bits] for _, r in group])
            self._backend.add(modality, bits, gid, gcodes, [r.label for _, r in group], [r.source for _, r in group])
        if self._attrs is not None:
            self._attrs.add(np.asarray(ids, dtype=np.int64), [r.label for r in records], [r.source for r in records])

    def _unindex_items(self, records: Sequence[ItemRecord]) -> None:
        if self._attrs is not None:
            self._attrs.remove(np.asarray([r.id for r in records], dtype=np.int64), [r.label for r in records],
                               [r.source for r in records])
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        for rec in records:
            for bits in rec.codes:
                groups[(rec.modality, bits)].append(int(rec.id))  # type: ignore[arg-type]
        for (modality, bits), gid in groups.items():
            self._backend.remove(modality, bits, np.asarray(gid, dtype=np.int64))

    def _apply(self, meta: MetadataDB, keys: set[tuple[str, int]], fn: Any, *args: Any) -> None:
        """Apply a committed change to the backend; on failure rebuild the touched indexes from SQLite."""
        try:
            fn(*args)
            self._backend.committed(meta, keys)
        except Exception:
            logger.exception("search backend update failed after commit; rebuilding %s from SQLite", sorted(keys))
            self._attrs = None  # may be half updated: rebuilt from SQLite by the next filtered search
            for modality, bits in sorted(keys):
                self._backend.rebuild(meta, modality, bits)
            raise

    def _after_change(self, meta: MetadataDB, n: int) -> None:
        self._changes_since_snapshot += n
        if self.snapshot_every and self._changes_since_snapshot >= self.snapshot_every:
            self._changes_since_snapshot = 0
            self._backend.snapshot(meta)

    def add(self, items: Sequence[ItemRecord | Mapping[str, Any]]) -> list[int]:
        """Add items (dicts or :class:`ItemRecord`) in one transaction; returns their new ids in order.

        Each item needs ``modality``, ``name`` and ``codes`` (``{bits: uint8 [bits // 8]}``, at least
        one length); ``label``, ``source``, ``preview`` and ``item_key`` are optional.

        Raises:
            ValueError: any invalid item (nothing is added then).
        """
        if isinstance(items, ItemRecord | Mapping):
            raise ValueError("add() takes a list of items; wrap a single item in a list")
        records = [normalize_item(it) for it in items]
        if not records:
            return []
        keys = {(r.modality, b) for r in records for b in r.codes}
        with self._rw.write(), self._db_lock:
            meta = self._require_open()
            ids = meta.insert(records)
            self._apply(meta, keys, self._index_items, ids, records)
            self._after_change(meta, len(ids))
        return ids

    def upsert(self, item_id: int, item: ItemRecord | Mapping[str, Any]) -> int:
        """Replace item ``item_id`` (its ``created`` time is kept) or create it with that id.

        Returns:
            ``item_id``.
        """
        if isinstance(item_id, bool) or not isinstance(item_id, int | np.integer) or int(item_id) < 1:
            raise ValueError(f"item id must be an integer >= 1, got {item_id!r}")
        item_id = int(item_id)
        rec = normalize_item(item)
        with self._rw.write(), self._db_lock:
            meta = self._require_open()
            old = meta.upsert(item_id, rec)
            keys = {(rec.modality, b) for b in rec.codes}
            if old is not None:
                keys |= {(old.modality, b) for b in old.codes}

            def apply() -> None:
                if old is not None:
                    self._unindex_items([old])
                self._index_items([item_id], [rec])

            self._apply(meta, keys, apply)
            self._after_change(meta, 1)
        return item_id

    def replace_codes(self, ids: Sequence[int], codes: Sequence[Mapping[int, np.ndarray]]) -> None:
        """Give existing items new codes (e.g. from new weights) in one transaction; each item's code
        lengths become exactly those given. Everything else about the items is kept.

        Raises:
            ValueError: a bad code, or ids and codes of different lengths.
            KeyError: an id that is not in the store (nothing is changed).
        """
        ids = [int(i) for i in ids]
        if len(ids) != len(codes):
            raise ValueError(f"{len(ids)} ids but {len(codes)} code sets")
        if not ids:
            return
        new = [normalize_codes(c) for c in codes]
        with self._rw.write(), self._db_lock:
            meta = self._require_open()
            old = meta.update_codes(ids, new)
            records = [dataclasses.replace(r, codes=c) for r, c in zip(old, new, strict=True)]
            keys = {(r.modality, b) for r in old for b in r.codes} | {(r.modality, b) for r in records for b in r.codes}

            def apply() -> None:
                self._unindex_items(old)
                self._index_items(ids, records)

            self._apply(meta, keys, apply)
            self._after_change(meta, len(ids))

    def get_value(self, key: str) -> str | None:
        """A free-form value of the store's ``meta`` table (see :data:`CODES_MODEL_KEY`)."""
        with self._db_lock:
            return self._require_open().get_value(key)

    def set_value(self, key: str, value: str | None) -> None:
        """Set (``None``: remove) a free-form ``meta`` value; durable when this returns."""
        with self._db_lock:
            self._require_open().set_value(key, value)

    def delete(self, ids: Iterable[int]) -> list[int]:
        """Delete items by id in one transaction; returns the ids that existed (unknown ids are ignored)."""
        wanted = [int(i) for i in ids]
        with self._rw.write(), self._db_lock:
            meta = self._require_open()
            removed = meta.delete(wanted)
            if removed:
                keys = {(r.modality, b) for r in removed for b in r.codes}
                self._apply(meta, keys, self._unindex_items, removed)
                self._after_change(meta, len(removed))
        return [int(r.id) for r in removed]  # type: ignore[arg-type]

    # ------------------------------------------------------------------ reads
    def get(self, item_id: int) -> ItemRecord | None:
        """The item with this id, or ``None``."""
        with self._db_lock:
            return self._require_open().get(int(item_id))

    def get_many(self, ids: Iterable[int]) -> list[ItemRecord | None]:
        """Items for ``ids`` in order (``None`` for unknown ids and for the ``-1`` padding)."""
        wanted = [int(i) for i in ids]
        with self._db_lock:
            meta = self._require_open()
            return [rec if i >= 0 else None for i, rec in zip(wanted, meta.get_many(wanted), strict=True)]

    def count(self, modality: str | None = None) -> int:
        """Number of items in SQLite, optionally of one modality."""
        if modality is not None:
            check_modality(modality)
        with self._db_lock:
            return self._require_open().count(modality)

    def item_ids(self, after: int = 0, limit: int = 1000) -> list[int]:
        """Up to ``limit`` ids greater than ``after``, ascending (walk every item in pages)."""
        with self._db_lock:
            return self._require_open().ids(after, limit)

    def source_counts(self) -> dict[str, int]:
        """Number of items per ``source``."""
        with self._db_lock:
            return self._require_open().source_counts()

    def source_names(self, source: str) -> list[tuple[str, str]]:
        """``(modality, name)`` of the items added with this ``source`` (e.g. ``"job:<id>"``), by id."""
        with self._db_lock:
            return self._require_open().source_names(source)

    def browse(self, labels: Sequence[str] = (), sources: Sequence[str] = (), modality: str | None = None,
               offset: int = 0, limit: int = 50) -> tuple[int, list[ItemRecord]]:
        """``(total, page)``: the number of items matching the filters and ``limit`` of their records from
        ``offset`` on, ordered by id (one consistent read). Filters: the label is one of ``labels``, the
        source one of ``sources`` (an empty sequence: any), the modality is ``modality`` (``None``: any).

        Raises:
            ValueError: unknown modality, ``offset < 0`` or ``limit < 1``.
        """
        if modality is not None:
            check_modality(modality)
        if int(offset) < 0 or int(limit) < 1:
            raise ValueError(f"offset must be >= 0 and limit >= 1, got offset={offset}, limit={limit}")
        with self._db_lock:
            return self._require_open().browse(list(labels), list(sources), modality, int(offset), int(limit))

    def stats(self) -> dict[str, dict]:
        """Item counts per modality (every modality, 0 included), per label (``None``: unlabelled) and per
        source, in one consistent read (see :meth:`index.metadata.MetadataDB.stats`)."""
        with self._db_lock:
            return self._require_open().stats()

    def file_references(self) -> tuple[set[str], set[str]]:
        """``(previews, item_keys)``: every distinct ``preview`` and ``item_key`` value the items hold (what
        files the items refer to; see :meth:`service.indexing.ItemWriter.sweep_orphans`)."""
        with self._db_lock:
            return self._require_open().file_references()

    def index_count(self, modality: str, bits: int) -> int:
        """Number of items in the search index of (modality, bits) (equals the SQLite count of items
        of that modality having such a code)."""
        check_modality(modality)
        bits = check_bits(bits)
        with self._rw.read():
            self._require_open()
            return self._backend.count(modality, bits)

    def search(self, modality: str, query_codes: np.ndarray, bits: int, k: int, *,
               labels: Iterable[str] | None = None, sources: Iterable[str] | None = None,
               max_distance: int | None = None, distinct: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact k-nearest items of ``modality`` by Hamming distance, optionally filtered.

        Args:
            modality: the modality searched (``"image"`` or ``"points"``); cross-modal retrieval
                searches the other modality than the query's.
            query_codes: ``uint8 [Q, bits // 8]`` (or one code ``[bits // 8]``).
            bits: code length, one of :data:`~index.codes.BITS_CHOICES`.
            k: results per query (>= 1).
            labels: only items whose label is one of these (``None``: any label).
            sources: only items whose source is one of these (``None``: any source).
            max_distance: only items at most this far (inclusive).
            distinct: ``"name"``: one hit per name, its nearest copy (ties: the smallest id).

        The filters act inside the search (:mod:`index.filters`): when at least ``k`` items match,
        ``k`` come back, the first ``k`` matching items in the order below.

        Returns:
            ``(distances int32 [Q, k], ids int64 [Q, k])`` sorted by ``(distance, id)`` ascending,
            padded with ``-1`` / ``-1`` when fewer than ``k`` items match.

        Raises:
            ValueError: unknown modality, unsupported bits, ``k < 1``, malformed codes or a bad filter.
        """
        bits, k, q, flt = check_search(modality, query_codes, bits, k, labels, sources, max_distance, distinct)
        with self._rw.read():
            meta = self._require_open()
            subset = ItemSubset(flt, self._allowed_ids) if flt.restricts_items else None

            def run(rows: np.ndarray | slice, m: int) -> tuple[np.ndarray, np.ndarray]:
                return cut_distance(*self._backend.search(modality, bits, q[rows], m, subset), flt.max_distance)

            if distinct is None:
                return run(slice(None), k)
            n = self._backend.count(modality, bits)
            limit = min(n, getattr(self._backend, "max_k", n))
            if limit == 0:
                return run(slice(None), k)

            def names(ids: list[int]) -> dict[int, str]:
                with self._db_lock:
                    return meta.names(ids)

            return distinct_search(run, names, len(q), k, limit)

    def _allowed_ids(self, flt: SearchFilter) -> np.ndarray:
        """Sorted ids of the items matching ``flt`` (caller holds the read lock)."""
        with self._attrs_lock:
            if self._attrs is None:
                with self._db_lock:
                    ids, labels, sources = self._require_open().attributes()
                self._attrs = AttributeIndex.build(ids, labels, sources)
            return self._attrs.allowed_ids(flt)

    @property
    def backend(self) -> VectorBackend:
        """The search backend (diagnostics, benchmarks)."""
        return self._backend


__all__ = ["BACKENDS", "BITS_CHOICES", "HashStore", "VectorBackend"]
