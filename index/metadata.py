"""SQLite metadata database: the source of truth of the store.

One table ``items`` holds every item with its codes (one BLOB column per code length); table
``meta`` holds the database uuid and one *generation* counter per modality, bumped in the same
transaction as every change to that modality's items. FAISS snapshots record the generation they
were taken at, so a stale snapshot is detected on open.

The database runs in WAL mode with ``synchronous=FULL``: once a write method returns, the change
survives a crash of the process or of the machine. Methods are not thread-safe; the store's lock
serialises them.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from index.codes import BITS_CHOICES, code_bytes
from index.errors import StoreCorruptError
from index.records import MODALITIES, ItemRecord, utc_now_iso

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: PRAGMA application_id of a CMAH index database ("CMAH" in ASCII).
APPLICATION_ID = 0x434D4148
_SQLITE_MAGIC = b"SQLite format 3\x00"

_CODE_COLS = {bits: f"code{bits}" for bits in BITS_CHOICES}
_FIELDS = ("id", "modality", "name", "label", "source", "created", "preview", "item_key")
_SELECT = ", ".join(_FIELDS + tuple(_CODE_COLS.values()))
#: The range of an SQLite INTEGER: ids outside it cannot be stored (lookups of them find nothing).
_MIN_ID, _MAX_ID = -(2**63), 2**63 - 1
#: Most ids in one ``IN (...)`` lookup (below SQLite's oldest limit of 999 bound parameters).
_IN_CHUNK = 500

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS items (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    modality  TEXT NOT NULL CHECK (modality IN ({", ".join(repr(m) for m in MODALITIES)})),
    name      TEXT NOT NULL,
    label     TEXT,
    source    TEXT NOT NULL DEFAULT '',
    created   TEXT NOT NULL,
    updated   TEXT NOT NULL,
    preview   TEXT,
    item_key  TEXT,
    code16    BLOB CHECK (code16 IS NULL OR length(code16) = 2),
    code32    BLOB CHECK (code32 IS NULL OR length(code32) = 4),
    code64    BLOB CHECK (code64 IS NULL OR length(code64) = 8),
    CHECK (code16 IS NOT NULL OR code32 IS NOT NULL OR code64 IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS items_modality ON items (modality, id);
CREATE INDEX IF NOT EXISTS items_item_key ON items (item_key) WHERE item_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS items_label ON items (label);
CREATE INDEX IF NOT EXISTS items_source ON items (source);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value NOT NULL);
"""
#: Indexes added after schema version 1 was released: created on open when a database lacks them.
_LATER_INDEXES = (
    "CREATE INDEX IF NOT EXISTS items_label ON items (label)",
    "CREATE INDEX IF NOT EXISTS items_source ON items (source)",
)


def corrupt_message(path: Path, detail: str) -> str:
    """The operator-facing message of :class:`StoreCorruptError`."""
    return (
        f"the index database {path} is unreadable or damaged ({detail}). The store will not start "
        f"empty on top of it: restore {path.name} from a backup, or delete the data directory "
        f"{path.parent} to start with an empty index (all indexed items will be lost)."
    )


def _check_value_key(key: str) -> None:
    if key == "db_uuid" or key.startswith("generation:"):
        raise ValueError(f"meta key {key!r} is managed by the store")


def _gen_key(modality: str) -> str:
    return f"generation:{modality}"


class MetadataDB:
    """The ``items`` / ``meta`` SQLite database of one data directory."""

    def __init__(self, path: Path, *, check_integrity: bool = True) -> None:
        self.path = Path(path)
        self._conn = self._open(check_integrity)

    # ------------------------------------------------------------------ open / close
    def _open(self, check_integrity: bool) -> sqlite3.Connection:
        existed = self.path.exists() and self.path.stat().st_size > 0
        if existed:
            with open(self.path, "rb") as fh:
                if fh.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                    raise StoreCorruptError(corrupt_message(self.path, "not an SQLite database file"))
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            if check_integrity and existed:
                result = conn.execute("PRAGMA quick_check").fetchall()
                if result != [("ok",)]:
                    raise StoreCorruptError(corrupt_message(self.path, f"quick_check: {result[:3]}"))
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if app_id == 0 and not tables:
                self._create_schema(conn)
            elif app_id != APPLICATION_ID:
                raise StoreCorruptError(corrupt_message(self.path, "not a CMAH index database"))
            elif version > SCHEMA_VERSION:
                raise StoreCorruptError(
                    corrupt_message(self.path, f"schema version {version} is newer than {SCHEMA_VERSION}")
                )
            elif not {"items", "meta"} <= tables:
                raise StoreCorruptError(corrupt_message(self.path, "tables items/meta are missing"))
            else:
                self._add_later_indexes(conn)
            return conn
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            raise StoreCorruptError(corrupt_message(self.path, str(exc))) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('db_uuid', ?)", (uuid.uuid4().hex,))
        for modality in MODALITIES:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, 0)", (_gen_key(modality),))
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
        logger.info("created a new index database")

    @staticmethod
    def _add_later_indexes(conn: sqlite3.Connection) -> None:
        """Create the indexes of :data:`_LATER_INDEXES` that a database written by an older version lacks.
        They only make browsing faster: when they cannot be written (a full disk) the database is used
        without them, with a warning, and the next open tries again."""
        have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        missing = [sql for sql in _LATER_INDEXES if sql.split()[5] not in have]
        if not missing:
            return
        logger.info("adding %d index(es) to the index database (once)", len(missing))
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql in missing:
                    conn.execute(sql)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            logger.warning("could not add the browsing indexes to the index database (%s); going on without", exc)

    def close(self) -> None:
        """Checkpoint the WAL and close the connection (idempotent)."""
        if self._conn is None:
            return
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError as exc:  # pragma: no cover - best effort
            logger.warning("WAL checkpoint failed on close: %s", exc)
        self._conn.close()
        self._conn = None  # type: ignore[assignment]

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # ------------------------------------------------------------------ meta
    @property
    def db_uuid(self) -> str:
        """Random id of this database, fixed at creation (ties snapshots to it)."""
        return str(self._conn.execute("SELECT value FROM meta WHERE key='db_uuid'").fetchone()[0])

    def generation(self, modality: str) -> int:
        """Committed-change counter of ``modality``."""
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (_gen_key(modality),)).fetchone()
        return int(row[0]) if row else 0

    def get_value(self, key: str) -> str | None:
        """A free-form ``meta`` value (e.g. ``codes_model``), or ``None`` if unset."""
        _check_value_key(key)
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_value(self, key: str, value: str | None) -> None:
        """Set (``None``: remove) a free-form ``meta`` value, in its own transaction."""
        _check_value_key(key)
        with self._transaction() as conn:
            if value is None:
                conn.execute("DELETE FROM meta WHERE key=?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    @staticmethod
    def _bump(conn: sqlite3.Connection, modalities: Iterable[str]) -> None:
        for modality in set(modalities):
            conn.execute("UPDATE meta SET value = value + 1 WHERE key=?", (_gen_key(modality),))

    # ------------------------------------------------------------------ writes
    @staticmethod
    def _row_values(item: ItemRecord, now: str) -> tuple:
        codes = tuple(item.codes[b].tobytes() if b in item.codes else None for b in BITS_CHOICES)
        return (
            item.modality,
            item.name,
            item.label,
            item.source,
            now,
            now,
            item.preview,
            item.item_key,
            *codes,
        )

    def insert(self, items: Sequence[ItemRecord]) -> list[int]:
        """Insert new items in one transaction; returns their (consecutive, new) ids."""
        if not items:
            return []
        now = utc_now_iso()
        with self._transaction() as conn:
            seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='items'").fetchone()
            top = conn.execute("SELECT max(id) FROM items").fetchone()[0]
            first = max(seq[0] if seq else 0, top or 0) + 1
            ids = list(range(first, first + len(items)))
            conn.executemany(
                "INSERT INTO items (id, modality, name, label, source, created, updated, preview, item_key, "
                "code16, code32, code64) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ((i, *self._row_values(it, now)) for i, it in zip(ids, items, strict=True)),
            )
            self._bump(conn, (it.modality for it in items))
        return ids

    def upsert(self, item_id: int, item: ItemRecord) -> ItemRecord | None:
        """Replace item ``item_id`` (keeping its ``created``) or insert it with that id.

        Returns the previous record, or ``None`` if the id was new.
        """
        now = utc_now_iso()
        with self._transaction() as conn:
            old = self._get(conn, item_id)
            values = self._row_values(item, now)
            if old is None:
                conn.execute(
                    "INSERT INTO items (id, modality, name, label, source, created, updated, preview, "
                    "item_key, code16, code32, code64) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (item_id, *values),
                )
            else:
                conn.execute(
                    "UPDATE items SET modality=?, name=?, label=?, source=?, updated=?, preview=?, "
                    "item_key=?, code16=?, code32=?, code64=? WHERE id=?",
                    (*values[:4], values[5], *values[6:], item_id),
                )
            self._bump(conn, [item.modality] + ([old.modality] if old else []))
        return old

    def update_codes(self, ids: Sequence[int], codes: Sequence[dict[int, np.ndarray]]) -> list[ItemRecord]:
        """Replace the codes of existing items (every length: a length missing from the new codes is
        cleared) in one transaction; returns the previous records. Unknown ids raise ``KeyError``
        and nothing is changed."""
        now = utc_now_iso()
        with self._transaction() as conn:
            old = [self._get(conn, int(i)) for i in ids]
            missing = [int(i) for i, r in zip(ids, old, strict=True) if r is None]
            if missing:
                raise KeyError(f"no items with ids {missing[:5]}")
            conn.executemany(
                "UPDATE items SET code16=?, code32=?, code64=?, updated=? WHERE id=?",
                ((*(c[b].tobytes() if b in c else None for b in BITS_CHOICES), now, int(i))
                 for i, c in zip(ids, codes, strict=True)),
            )
            self._bump(conn, (r.modality for r in old))  # type: ignore[union-attr]
        return old  # type: ignore[return-value]

    def delete(self, ids: Sequence[int]) -> list[ItemRecord]:
        """Delete items by id in one transaction; returns the records that existed."""
        with self._transaction() as conn:
            found = [r for r in (self._get(conn, int(i)) for i in dict.fromkeys(ids)) if r is not None]
            if found:
                conn.executemany("DELETE FROM items WHERE id=?", ((r.id,) for r in found))
                self._bump(conn, (r.modality for r in found))
        return found

    # ------------------------------------------------------------------ reads
    @staticmethod
    def _record(row: tuple) -> ItemRecord:
        base = dict(zip(_FIELDS, row[: len(_FIELDS)], strict=True))
        codes = {}
        for bits, blob in zip(BITS_CHOICES, row[len(_FIELDS) :], strict=True):
            if blob is not None:
                arr = np.frombuffer(blob, dtype=np.uint8).copy()
                arr.flags.writeable = False
                codes[bits] = arr
        return ItemRecord(codes=codes, **base)

    def _get(self, conn: sqlite3.Connection, item_id: int) -> ItemRecord | None:
        item_id = int(item_id)
        if not _MIN_ID <= item_id <= _MAX_ID:  # no such item (and sqlite3 would raise OverflowError)
            return None
        row = conn.execute(f"SELECT {_SELECT} FROM items WHERE id=?", (item_id,)).fetchone()
        return None if row is None else self._record(row)

    def get(self, item_id: int) -> ItemRecord | None:
        """The item with id ``item_id``, or ``None``."""
        return self._get(self._conn, item_id)

    def get_many(self, ids: Sequence[int]) -> list[ItemRecord | None]:
        """Records for ``ids`` (``None`` where absent), in the order given; one query per
        :data:`_IN_CHUNK` distinct ids (a search's hits: one)."""
        wanted = [int(i) for i in ids]
        distinct = sorted({i for i in wanted if _MIN_ID <= i <= _MAX_ID})
        found: dict[int, tuple] = {}
        for s in range(0, len(distinct), _IN_CHUNK):
            part = distinct[s : s + _IN_CHUNK]
            marks = ",".join("?" * len(part))
            found.update((row[0], row) for row in self._conn.execute(
                f"SELECT {_SELECT} FROM items WHERE id IN ({marks})", part))
        return [self._record(found[i]) if i in found else None for i in wanted]

    def count(self, modality: str | None = None) -> int:
        """Number of items, optionally of one modality."""
        if modality is None:
            return int(self._conn.execute("SELECT count(*) FROM items").fetchone()[0])
        return int(self._conn.execute("SELECT count(*) FROM items WHERE modality=?", (modality,)).fetchone()[0])

    def ids(self, after: int = 0, limit: int = 1000) -> list[int]:
        """Up to ``limit`` item ids greater than ``after``, ascending (to walk the table in pages)."""
        rows = self._conn.execute("SELECT id FROM items WHERE id > ? ORDER BY id LIMIT ?", (int(after), int(limit)))
        return [int(r[0]) for r in rows]

    def source_counts(self) -> dict[str, int]:
        """Items per ``source`` value."""
        rows = self._conn.execute("SELECT source, count(*) FROM items GROUP BY source ORDER BY source")
        return {str(s): int(n) for s, n in rows}

    def source_names(self, source: str) -> list[tuple[str, str]]:
        """``(modality, name)`` of every item whose ``source`` is ``source``, by id."""
        rows = self._conn.execute("SELECT modality, name FROM items WHERE source=? ORDER BY id", (source,))
        return [(str(m), str(n)) for m, n in rows]

    # ------------------------------------------------------------------ browsing
    @staticmethod
    def _filter(labels: Sequence[str], sources: Sequence[str], modality: str | None) -> tuple[str, list]:
        """The ``WHERE`` clause (``""`` when empty) and its arguments of :meth:`browse`'s filters."""
        clauses: list[str] = []
        args: list = []
        if modality is not None:
            clauses.append("modality = ?")
            args.append(modality)
        for col, values in (("label", labels), ("source", sources)):
            values = list(dict.fromkeys(str(v) for v in values))
            if values:
                clauses.append(f"{col} IN ({', '.join('?' * len(values))})")
                args.extend(values)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def browse(self, labels: Sequence[str] = (), sources: Sequence[str] = (), modality: str | None = None,
               offset: int = 0, limit: int = 50) -> tuple[int, list[ItemRecord]]:
        """``(total, page)``: how many items match the filters and the records of ``limit`` of them from
        ``offset`` on, by id. An item matches when its label is one of ``labels`` (any, when empty), its
        source one of ``sources`` (idem) and its modality ``modality`` (any, when ``None``)."""
        where, args = self._filter(labels, sources, modality)
        total = int(self._conn.execute(f"SELECT count(*) FROM items{where}", args).fetchone()[0])
        rows = self._conn.execute(f"SELECT {_SELECT} FROM items{where} ORDER BY id LIMIT ? OFFSET ?",
                                  (*args, int(limit), int(offset)))
        return total, [self._record(r) for r in rows]

    def stats(self) -> dict[str, dict]:
        """Item counts: ``{"modalities": {modality: n}`` (every modality, 0 included), ``"labels": {label
        or None: n}``, ``"sources": {source: n}}``, keys in ascending order (``None`` first)."""
        modalities = dict.fromkeys(MODALITIES, 0)
        for m, n in self._conn.execute("SELECT modality, count(*) FROM items GROUP BY modality"):
            modalities[str(m)] = int(n)
        labels = {(None if lb is None else str(lb)): int(n)
                  for lb, n in self._conn.execute("SELECT label, count(*) FROM items GROUP BY label ORDER BY label")}
        return {"modalities": modalities, "labels": labels, "sources": self.source_counts()}

    def file_references(self) -> tuple[set[str], set[str]]:
        """The distinct non-null ``preview`` values and ``item_key`` values of all items."""
        def distinct(col: str) -> set[str]:
            return {str(r[0]) for r in self._conn.execute(f"SELECT DISTINCT {col} FROM items WHERE {col} IS NOT NULL")}

        return distinct("preview"), distinct("item_key")

    def count_codes(self, modality: str, bits: int) -> int:
        """Number of items of ``modality`` that have a ``bits``-bit code."""
        col = _CODE_COLS[bits]
        sql = f"SELECT count(*) FROM items WHERE modality=? AND {col} IS NOT NULL"
        return int(self._conn.execute(sql, (modality,)).fetchone()[0])

    def load_codes(self, modality: str, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int64 [N], codes uint8 [N, bits // 8])`` of every item of ``modality`` with such a code."""
        col = _CODE_COLS[bits]
        rows = self._conn.execute(
            f"SELECT id, {col} FROM items WHERE modality=? AND {col} IS NOT NULL ORDER BY id", (modality,)
        ).fetchall()
        nbytes = code_bytes(bits)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        codes = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.uint8).reshape(len(rows), nbytes).copy()
        return ids, codes

    def load_items(self, modality: str, bits: int) -> tuple[np.ndarray, np.ndarray, list[str | None], list[str]]:
        """:meth:`load_codes` plus each item's label and source (for backends that filter on them)."""
        col = _CODE_COLS[bits]
        rows = self._conn.execute(
            f"SELECT id, {col}, label, source FROM items WHERE modality=? AND {col} IS NOT NULL ORDER BY id",
            (modality,),
        ).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        codes = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.uint8).reshape(len(rows), code_bytes(bits))
        return ids, codes.copy(), [r[2] for r in rows], [r[3] for r in rows]

    def attributes(self) -> tuple[np.ndarray, list[str | None], list[str]]:
        """``(ids int64 [N], labels, sources)`` of every item, by id (see :class:`index.filters.AttributeIndex`)."""
        rows = self._conn.execute("SELECT id, label, source FROM items ORDER BY id").fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return ids, [r[1] for r in rows], [r[2] for r in rows]

    def names(self, ids: Sequence[int]) -> dict[int, str]:
        """``{id: name}`` of the items among ``ids`` that exist."""
        out: dict[int, str] = {}
        wanted = [int(i) for i in ids if _MIN_ID <= int(i) <= _MAX_ID]
        for start in range(0, len(wanted), 900):  # SQLite's bound-parameter limit is 999 on old builds
            chunk = wanted[start : start + 900]
            sql = f"SELECT id, name FROM items WHERE id IN ({', '.join('?' * len(chunk))})"
            out.update((int(i), str(n)) for i, n in self._conn.execute(sql, chunk))
        return out
