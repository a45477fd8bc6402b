"""FAISS vector backend: one :class:`~index.flat.FaissFlatIndex` per (modality, code length).

The in-memory indexes are a cache of SQLite. They are written to ``<data_dir>/snapshots/`` as
``<modality>-<bits>.snap`` files (see :mod:`index.persistence`) lazily: every ``snapshot_every``
changes, on :meth:`FaissBackend.snapshot` and on close. On open each snapshot is checked against
SQLite (database uuid, the modality's generation, item count, checksums); a missing, stale or
corrupt snapshot is rebuilt from SQLite, logged, and rewritten at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from index.codes import BITS_CHOICES
from index.errors import SnapshotError
from index.filters import ItemSubset
from index.flat import DEFAULT_TIE_MARGIN, Accelerator, FaissFlatIndex
from index.metadata import MetadataDB
from index.persistence import SnapshotHeader, read_snapshot, remove_temp_files, write_snapshot
from index.records import MODALITIES

logger = logging.getLogger(__name__)

Key = tuple[str, int]


class FaissBackend:
    """Exact flat FAISS indexes for every (modality, bits), persisted as crash-safe snapshots."""

    name = "faiss"

    def __init__(
        self,
        data_dir: Path,
        *,
        accelerator_factory: Callable[[], Accelerator] | None = None,
        tie_margin: int = DEFAULT_TIE_MARGIN,
        threads: int | None = None,
        mih: bool = True,
        scan: str = "auto",
    ) -> None:
        self.snapshot_dir = Path(data_dir) / "snapshots"
        self._accelerator_factory = accelerator_factory
        self._tie_margin = tie_margin
        self._threads = threads
        self._mih = mih
        self._scan = scan
        self._indexes: dict[Key, FaissFlatIndex] = {}
        self._dirty: set[Key] = set()

    # ------------------------------------------------------------------ helpers
    def snapshot_path(self, modality: str, bits: int) -> Path:
        """File holding the snapshot of one (modality, bits) index."""
        return self.snapshot_dir / f"{modality}-{bits}.snap"

    def _new_index(self, bits: int) -> FaissFlatIndex:
        accel = self._accelerator_factory() if self._accelerator_factory else None
        return FaissFlatIndex(
            bits, tie_margin=self._tie_margin, accelerator=accel, threads=self._threads, mih=self._mih, scan=self._scan
        )

    def _expected(self, meta: MetadataDB, modality: str, bits: int) -> SnapshotHeader:
        return SnapshotHeader(
            modality=modality,
            bits=bits,
            generation=meta.generation(modality),
            db_uuid=meta.db_uuid,
            count=meta.count_codes(modality, bits),
        )

    # ------------------------------------------------------------------ open
    def open(self, meta: MetadataDB) -> None:
        """Load every snapshot that matches SQLite; rebuild (and rewrite) the others."""
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        remove_temp_files(self.snapshot_dir)
        for modality in MODALITIES:
            for bits in BITS_CHOICES:
                key = (modality, bits)
                expected = self._expected(meta, modality, bits)
                try:
                    self._indexes[key] = self._load(expected)
                except SnapshotError as exc:
                    fresh = expected.count == 0 and not self.snapshot_path(modality, bits).exists()
                    level = logging.DEBUG if fresh else logging.WARNING
                    logger.log(level, "%s; rebuilding the %s/%d-bit index from SQLite", exc, modality, bits)
                    self.rebuild(meta, modality, bits)
                    self._write(key, expected)

    def _load(self, expected: SnapshotHeader) -> FaissFlatIndex:
        path = self.snapshot_path(expected.modality, expected.bits)
        header, payload = read_snapshot(path)
        for field in ("modality", "bits", "db_uuid"):
            if getattr(header, field) != getattr(expected, field):
                raise SnapshotError(f"snapshot {path} belongs to another database or index ({field} differs)")
        if header.generation != expected.generation:
            raise SnapshotError(
                f"snapshot {path} is stale (generation {header.generation}, database at {expected.generation})"
            )
        try:
            index = FaissFlatIndex.deserialize(
                expected.bits,
                payload,
                tie_margin=self._tie_margin,
                threads=self._threads,
                mih=self._mih,
                scan=self._scan,
            )
        except ValueError as exc:
            raise SnapshotError(f"snapshot {path} is corrupt: {exc}") from exc
        if index.ntotal != expected.count or header.count != expected.count:
            raise SnapshotError(f"snapshot {path} holds {index.ntotal} items, the database {expected.count}")
        if self._accelerator_factory:
            index.set_accelerator(self._accelerator_factory())
        return index

    def rebuild(self, meta: MetadataDB, modality: str, bits: int) -> None:
        """Replace one in-memory index by a fresh one built from SQLite."""
        t0 = time.perf_counter()
        ids, codes = meta.load_codes(modality, bits)
        index = self._new_index(bits)
        index.add(ids, codes)
        self._indexes[(modality, bits)] = index
        self._dirty.add((modality, bits))
        logger.log(
            logging.INFO if len(ids) else logging.DEBUG,
            "rebuilt the %s/%d-bit index from SQLite: %d items in %.2f s",
            modality,
            bits,
            len(ids),
            time.perf_counter() - t0,
        )

    # ------------------------------------------------------------------ mutations
    def add(
        self,
        modality: str,
        bits: int,
        ids: np.ndarray,
        codes: np.ndarray,
        labels: Sequence[str | None] = (),
        sources: Sequence[str] = (),
    ) -> None:
        """Index new items (ids not present in this index). Labels and sources are not kept here: the
        store resolves filters to ids (:class:`index.filters.ItemSubset`)."""
        self._indexes[(modality, bits)].add(ids, codes)
        self._dirty.add((modality, bits))

    def remove(self, modality: str, bits: int, ids: np.ndarray) -> None:
        """Drop items from one index."""
        if self._indexes[(modality, bits)].remove(ids):
            self._dirty.add((modality, bits))

    def committed(self, meta: MetadataDB, keys: set[tuple[str, int]]) -> None:
        """Called after a change was applied; snapshots are written lazily, so nothing to do."""

    # ------------------------------------------------------------------ queries
    def search(
        self, modality: str, bits: int, query_codes: np.ndarray, k: int, subset: ItemSubset | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact search (order of :mod:`index.exact`), among the items of ``subset`` when given."""
        allowed = None if subset is None else subset.ids()
        return self._indexes[(modality, bits)].search(query_codes, k, allowed)

    def count(self, modality: str, bits: int) -> int:
        """Items in one index."""
        return self._indexes[(modality, bits)].ntotal

    def flat_index(self, modality: str, bits: int) -> FaissFlatIndex:
        """The underlying index (for diagnostics and benchmarks)."""
        return self._indexes[(modality, bits)]

    # ------------------------------------------------------------------ persistence
    def _write(self, key: Key, header: SnapshotHeader) -> None:
        index = self._indexes[key]
        write_snapshot(self.snapshot_path(*key), header, index.serialize())
        self._dirty.discard(key)

    def snapshot(self, meta: MetadataDB) -> int:
        """Write the snapshots of every index changed since its last snapshot; returns how many."""
        written = 0
        for key in sorted(self._dirty):
            expected = self._expected(meta, *key)
            if expected.count != self._indexes[key].ntotal:  # pragma: no cover - defensive
                logger.error("%s/%d-bit index out of sync with SQLite; rebuilding", *key)
                self.rebuild(meta, *key)
            self._write(key, expected)
            written += 1
        if written:
            logger.debug("wrote %d snapshot(s)", written)
        return written

    def close(self, meta: MetadataDB) -> None:
        """Write pending snapshots and drop the indexes."""
        self.snapshot(meta)
        self._indexes.clear()
