"""The shared state of the scale-out mode in a Milvus server, and the read-only store of a search replica.

In the scale-out mode (``cmah serve --role indexer|search``, docs/deployment.md) one indexer writes and any
number of search replicas read, all through one Milvus server:

* the code collections ``cmah_<modality>_<bits>`` of :mod:`index.milvus_store` (codes and the ``label`` /
  ``source`` scalars that filtered searches test inside Milvus), which the indexer's
  :class:`~index.store.HashStore` keeps in line with its SQLite journal;
* :data:`ITEMS_COLLECTION` -- every item's record (id, modality, name, label, source, created, preview,
  item_key and its codes as hex), what ``GET /api/v1/items/{id}`` and the names of search hits need;
* :data:`VALUES_COLLECTION` -- free-form values, e.g. which weights made the codes
  (:data:`index.store.CODES_MODEL_KEY`), which a replica compares with its own before it serves.

:class:`MilvusCatalog` reads and writes the last two; the indexer calls :meth:`MilvusCatalog.publish` after
each committed batch and :meth:`MilvusCatalog.sync` at start-up (after a crash between its SQLite commit and
the publication, the difference is published then). Every write is an upsert by item id or a delete by
id, so repeating one (a retried batch, a second sync) changes nothing.

:class:`ReplicaStore` is what a search replica holds instead of a :class:`~index.store.HashStore`: searches
run in Milvus (exact, the order of :mod:`index.exact`), records come from the catalog, nothing is kept
locally. All collections use Milvus's ``Strong`` consistency: a search or read started after the
indexer's write returned sees it.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.codes import BITS_CHOICES, check_bits, codes_to_hex, hex_to_codes
from index.errors import IndexStoreError, StoreClosedError
from index.filters import ItemSubset, SearchFilter, check_search, cut_distance, distinct_search
from index.milvus_store import MilvusBackend, collection_name
from index.records import MODALITIES, ItemRecord, check_modality

logger = logging.getLogger(__name__)

ITEMS_COLLECTION = "cmah_items"
VALUES_COLLECTION = "cmah_values"
#: longest text kept per field (Milvus VARCHAR limit); longer names are cut
_MAX_TEXT = 65_535
_ID_RANGE = 10_000  # ids compared per step of a sync
_QUERY_IDS = 1_000  # ids per "id in [...]" query


class SharedIndexUnavailable(IndexStoreError):
    """The Milvus server cannot answer (down, or a collection is missing or being rebuilt)."""


def _client(uri: str) -> Any:
    from pymilvus import MilvusClient

    with warnings.catch_warnings():  # milvus-lite 2.5 imports the deprecated pkg_resources
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        return MilvusClient(uri)


def _text(value: str | None) -> str:
    return (value or "")[:_MAX_TEXT]


class MilvusCatalog:
    """Item records and free-form values in Milvus (see the module docstring)."""

    def __init__(self, client: Any, *, create: bool = False) -> None:
        self._client = client
        if create:
            self._ensure()

    # ------------------------------------------------------------------ schema
    def _ensure(self) -> None:
        from pymilvus import DataType

        c = self._client
        for name, fields in (
            (ITEMS_COLLECTION, (("modality", 16), ("name", _MAX_TEXT), ("label", _MAX_TEXT), ("source", _MAX_TEXT),
                                ("created", 64), ("preview", 1024), ("item_key", 256), ("codes", 256))),
            (VALUES_COLLECTION, (("value", 4096),)),
        ):
            if c.has_collection(name):
                continue
            schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
            if name == ITEMS_COLLECTION:
                schema.add_field("id", DataType.INT64, is_primary=True)
                schema.add_field("has_label", DataType.BOOL)
            else:
                schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=256)
            for field, length in fields:
                schema.add_field(field, DataType.VARCHAR, max_length=length)
            schema.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)  # Milvus requires a vector field
            c.create_collection(name, schema=schema, consistency_level="Strong")
            params = c.prepare_index_params()
            params.add_index(field_name="dummy", index_type="FLAT", metric_type="L2")
            c.create_index(name, params)
            c.load_collection(name)
            logger.info("created the Milvus collection %s", name)

    def exists(self) -> bool:
        """Both collections exist (an indexer has started against this server)."""
        return all(self._client.has_collection(n) for n in (ITEMS_COLLECTION, VALUES_COLLECTION))

    # ------------------------------------------------------------------ values
    def get_value(self, key: str) -> str | None:
        """A value set by :meth:`set_value`, or ``None``."""
        if not self._client.has_collection(VALUES_COLLECTION):
            return None
        rows = self._client.query(VALUES_COLLECTION, filter=f"key == {_quote(key)}", output_fields=["value"])
        return str(rows[0]["value"]) if rows else None

    def set_value(self, key: str, value: str | None) -> None:
        """Set (``None``: remove) a value."""
        if value is None:
            self._client.delete(VALUES_COLLECTION, filter=f"key == {_quote(key)}")
        else:
            self._client.upsert(VALUES_COLLECTION, [{"key": key, "value": value, "dummy": [0.0, 0.0]}])

    # ------------------------------------------------------------------ items
    @staticmethod
    def _row(rec: ItemRecord) -> dict:
        codes = ",".join(f"{b}:{codes_to_hex(c[None])[0]}" for b, c in sorted(rec.codes.items()))
        return {"id": int(rec.id), "modality": rec.modality, "name": _text(rec.name),  # type: ignore[arg-type]
                "has_label": rec.label is not None, "label": _text(rec.label), "source": _text(rec.source),
                "created": rec.created or "", "preview": rec.preview or "", "item_key": rec.item_key or "",
                "codes": codes, "dummy": [0.0, 0.0]}

    @staticmethod
    def _record(row: dict) -> ItemRecord:
        codes: dict[int, np.ndarray] = {}
        for part in filter(None, str(row["codes"]).split(",")):
            bits, _, hexcode = part.partition(":")
            code = hex_to_codes([hexcode], int(bits))[0].copy()
            code.flags.writeable = False
            codes[int(bits)] = code
        return ItemRecord(modality=row["modality"], name=row["name"], codes=codes,
                          label=row["label"] if row["has_label"] else None, source=row["source"],
                          preview=row["preview"] or None, item_key=row["item_key"] or None, id=int(row["id"]),
                          created=row["created"] or None)

    def publish(self, records: Sequence[ItemRecord]) -> None:
        """Upsert these (committed) records."""
        for start in range(0, len(records), _QUERY_IDS):
            self._client.upsert(ITEMS_COLLECTION, [self._row(r) for r in records[start : start + _QUERY_IDS]])

    def remove(self, ids: Iterable[int]) -> None:
        """Delete the records of these ids (unknown ids are ignored)."""
        wanted = [int(i) for i in ids]
        for start in range(0, len(wanted), _QUERY_IDS):
            self._client.delete(ITEMS_COLLECTION, ids=wanted[start : start + _QUERY_IDS])

    def get_many(self, ids: Sequence[int]) -> list[ItemRecord | None]:
        """Records for ``ids`` in order (``None`` for unknown ids and for negative padding)."""
        wanted = sorted({int(i) for i in ids if 0 <= int(i) < 2**63})
        found: dict[int, ItemRecord] = {}
        for start in range(0, len(wanted), _QUERY_IDS):
            chunk = wanted[start : start + _QUERY_IDS]
            rows = self._client.query(ITEMS_COLLECTION, filter=f"id in {chunk}", output_fields=["*"])
            found.update((int(r["id"]), self._record(r)) for r in rows)
        return [found.get(int(i)) for i in ids]

    def count(self, modality: str | None = None) -> int:
        """Records, optionally of one modality."""
        expr = "" if modality is None else f"modality == {_quote(modality)}"
        rows = self._client.query(ITEMS_COLLECTION, filter=expr, output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def scan(self, expr: str = "", fields: Sequence[str] = ("id",), max_rows: int = 100_000) -> list[dict]:
        """Every row matching ``expr`` (fields ``fields``), read id range by id range; ``ValueError`` past
        ``max_rows`` rows (a replica's browsing and statistics are for collections of that size)."""
        rows: list[dict] = []
        lo, top = 0, self._max_id()
        while lo <= top:
            rng = f"id >= {lo} and id < {lo + _ID_RANGE}"
            rows += self._client.query(ITEMS_COLLECTION, filter=f"({expr}) and {rng}" if expr else rng,
                                       output_fields=list(fields))
            if len(rows) > max_rows:
                raise ValueError(f"more than {max_rows} items match: browse them on the indexer")
            lo += _ID_RANGE
        return rows

    def _max_id(self) -> int:
        top, step = 0, 1 << 20
        while self._client.query(ITEMS_COLLECTION, filter=f"id >= {top + step}", output_fields=["id"], limit=1):
            top += step
            step *= 2
        while step > 1:  # the largest id lies in [top, top + step)
            step //= 2
            if self._client.query(ITEMS_COLLECTION, filter=f"id >= {top + step}", output_fields=["id"], limit=1):
                top += step
        return top

    def _ids_between(self, lo: int, hi: int) -> set[int]:
        rows = self._client.query(ITEMS_COLLECTION, filter=f"id >= {lo} and id < {hi}", output_fields=["id"])
        return {int(r["id"]) for r in rows}

    def sync(self, store: Any) -> tuple[int, int]:
        """Make the records those of ``store`` (a :class:`~index.store.HashStore`, the source of truth):
        publish the items it lacks, delete the ones the store no longer has; returns ``(published, removed)``.
        Compares ids range by range (``O(items)`` reads, writes only for the difference)."""
        published = removed = 0
        lo = 1
        while True:
            hi = lo + _ID_RANGE
            have = [i for i in store.item_ids(after=lo - 1, limit=_ID_RANGE) if i < hi]
            there = self._ids_between(lo, hi)
            missing = sorted(set(have) - there)
            extra = sorted(there - set(have))
            if missing:
                self.publish([r for r in store.get_many(missing) if r is not None])
                published += len(missing)
            if extra:
                self.remove(extra)
                removed += len(extra)
            if not store.item_ids(after=hi - 1, limit=1):  # past the store's last id: drop what is beyond
                rest = self._client.query(ITEMS_COLLECTION, filter=f"id >= {hi}", output_fields=["id"], limit=16_384)
                while rest:
                    self.remove(int(r["id"]) for r in rest)
                    removed += len(rest)
                    rest = self._client.query(ITEMS_COLLECTION, filter=f"id >= {hi}", output_fields=["id"],
                                              limit=16_384)
                break
            lo = hi
        if published or removed:
            logger.warning("Milvus item records brought in line with the index database: %d published, %d removed",
                           published, removed)
        return published, removed


def _no_ids(flt: SearchFilter) -> np.ndarray:  # pragma: no cover - Milvus filters by expression
    raise RuntimeError("a Milvus search filters inside Milvus, never by allowed ids")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: Milvus consistency levels a replica's searches may use (docs/deployment.md, "Consistency")
CONSISTENCY_LEVELS = ("Strong", "Bounded", "Eventually")


class _SearchConsistency:
    """A MilvusClient whose searches run at a chosen consistency level (everything else as it is)."""

    def __init__(self, client: Any, level: str) -> None:
        if level not in CONSISTENCY_LEVELS:
            raise ValueError(f"consistency must be one of {CONSISTENCY_LEVELS}, got {level!r}")
        self._inner = client
        self._level = level

    def search(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.search(*args, consistency_level=self._level, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _ReadOnlyBackend(MilvusBackend):
    """:class:`~index.milvus_store.MilvusBackend`'s exact search over collections another process writes.

    It never opens (rebuilds) or writes collections. Its :meth:`count` is unbounded on purpose: a search
    then always asks Milvus for ``k + tie_margin`` candidates and checks every row for a tie band that
    overflows them (:func:`index.exact.resolve_ties`), which is exact whatever the collection's size at that
    moment -- no cached count can make it stale while the indexer adds items.
    """

    UNBOUNDED = 2**62

    def __init__(self, client: Any, tie_margin: int, consistency: str = "Strong") -> None:  # noqa: D107
        self.uri = "(shared)"
        self.tie_margin = max(1, int(tie_margin))
        self._client = _SearchConsistency(client, consistency)
        self._counts = {}
        self._generations = {}

    def count(self, modality: str, bits: int) -> int:
        return self.UNBOUNDED

    def stored_count(self, modality: str, bits: int) -> int:
        """Items in one code collection now (0 when it does not exist yet)."""
        if not self._client.has_collection(collection_name(modality, bits)):
            return 0
        return self._milvus_count(modality, bits)

    def open(self, meta: Any) -> None:  # pragma: no cover - never called
        raise RuntimeError("a search replica does not open the index")

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a search replica never writes the index (the indexer does)")

    add = remove = rebuild = committed = _read_only


class ReplicaStore:
    """The read side of :class:`~index.store.HashStore` over a shared Milvus server (a search replica).

    Args:
        uri: the Milvus server (``http://milvus:19530``).
        tie_margin: extra candidates per query to resolve distance ties (:mod:`index.exact`).
        consistency: Milvus consistency level of the searches: ``"Strong"`` (a search waits until the server
            has applied every write acknowledged before it: a new item is found at once, at the cost of up to
            one Milvus time tick, ~200 ms, per search), ``"Bounded"`` (found within Milvus's
            ``common.gracefulTime``, 5 s by default; no wait) or ``"Eventually"``. Item records are always read
            at ``Strong``.
    """

    backend_name = "milvus"

    def __init__(self, uri: str, *, tie_margin: int = 64, client: Any = None, consistency: str = "Strong") -> None:
        self.uri = uri
        self._client = client if client is not None else _client(uri)
        self.catalog = MilvusCatalog(self._client)
        self._backend = _ReadOnlyBackend(self._client, tie_margin, consistency)
        self._closed = False
        self._lock = threading.Lock()
        self.data_dir = Path(".")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._client.close()

    def __enter__(self) -> ReplicaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise StoreClosedError(f"the replica store of {self.uri} is closed")
        try:
            return fn(*args, **kwargs)
        except (ValueError, StoreClosedError):
            raise
        except Exception as exc:  # pymilvus' MilvusException and connection errors
            raise SharedIndexUnavailable(f"the Milvus server {self.uri} cannot answer: {exc}") from exc

    # ------------------------------------------------------------------ readiness
    def ready(self) -> bool:
        """The indexer has created the shared collections (items can be searched, maybe none yet)."""
        names = [collection_name(m, b) for m in MODALITIES for b in BITS_CHOICES]
        return self._call(lambda: self.catalog.exists() and all(self._client.has_collection(n) for n in names))

    # ------------------------------------------------------------------ reads
    def get_value(self, key: str) -> str | None:
        return self._call(self.catalog.get_value, key)

    def get(self, item_id: int) -> ItemRecord | None:
        return self.get_many([item_id])[0]

    def get_many(self, ids: Iterable[int]) -> list[ItemRecord | None]:
        return self._call(self.catalog.get_many, [int(i) for i in ids])

    def count(self, modality: str | None = None) -> int:
        if modality is not None:
            check_modality(modality)
        if not self._call(self.catalog.exists):
            return 0
        return self._call(self.catalog.count, modality)

    def browse(self, labels: Sequence[str] = (), sources: Sequence[str] = (), modality: str | None = None,
               offset: int = 0, limit: int = 50) -> tuple[int, list[ItemRecord]]:
        """As :meth:`index.store.HashStore.browse` (``ValueError`` beyond 100,000 matching items)."""
        if modality is not None:
            check_modality(modality)
        if int(offset) < 0 or int(limit) < 1:
            raise ValueError(f"offset must be >= 0 and limit >= 1, got offset={offset}, limit={limit}")
        clauses = [f"modality == {_quote(modality)}"] if modality is not None else []
        if labels:
            clauses.append(f"(has_label == true and label in [{', '.join(_quote(v) for v in labels)}])")
        if sources:
            clauses.append(f"source in [{', '.join(_quote(v) for v in sources)}]")
        ids = sorted(int(r["id"]) for r in self._call(self.catalog.scan, " and ".join(clauses)))
        page = ids[int(offset) : int(offset) + int(limit)]
        return len(ids), [r for r in self.get_many(page) if r is not None]

    def stats(self) -> dict[str, dict]:
        """As :meth:`index.store.HashStore.stats` (``ValueError`` beyond 100,000 items)."""
        rows = self._call(self.catalog.scan, "", ("modality", "has_label", "label", "source"))
        modalities = dict.fromkeys(MODALITIES, 0)
        labels: dict[str | None, int] = {}
        sources: dict[str, int] = {}
        for r in rows:
            modalities[r["modality"]] = modalities.get(r["modality"], 0) + 1
            label = r["label"] if r["has_label"] else None
            labels[label] = labels.get(label, 0) + 1
            sources[r["source"]] = sources.get(r["source"], 0) + 1
        return {"modalities": modalities,
                "labels": dict(sorted(labels.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""))),
                "sources": dict(sorted(sources.items()))}

    def index_count(self, modality: str, bits: int) -> int:
        check_modality(modality)
        return self._call(self._backend.stored_count, modality, check_bits(bits))

    def search(self, modality: str, query_codes: np.ndarray, bits: int, k: int, *,
               labels: Iterable[str] | None = None, sources: Iterable[str] | None = None,
               max_distance: int | None = None, distinct: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact k-nearest items, as :meth:`index.store.HashStore.search` (same validation, filters, order and
        padding); the label and source filters run inside Milvus."""
        bits, k, q, flt = check_search(modality, query_codes, bits, k, labels, sources, max_distance, distinct)
        subset = ItemSubset(flt, _no_ids) if flt.restricts_items else None

        def run(rows: np.ndarray | slice, m: int) -> tuple[np.ndarray, np.ndarray]:
            return cut_distance(*self._call(self._backend.search, modality, bits, q[rows], m, subset),
                                flt.max_distance)

        if distinct is None:
            return run(slice(None), k)

        def names(ids: list[int]) -> dict[int, str]:
            return {int(r.id): r.name for r in self.get_many(ids) if r is not None}  # type: ignore[arg-type]

        return distinct_search(run, names, len(q), k, self._backend.max_k)

    @property
    def backend(self) -> MilvusBackend:
        return self._backend
