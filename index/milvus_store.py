"""Milvus vector backend (scale-out): one collection per (modality, code length).

Each collection has an ``INT64`` primary key (the SQLite item id), a ``BINARY_VECTOR`` field
indexed with ``BIN_FLAT`` / ``HAMMING`` (exhaustive, exact) and the scalar fields ``label`` (``""``
for none) and ``source``, which filtered searches test natively (:func:`index.filters.milvus_expression`;
a collection written before they existed is rebuilt from SQLite on open). SQLite stays the source of truth: the
collection ``cmah_meta`` records, per modality, the SQLite generation its collections reflect; it is
updated after every applied change, so a crash between the SQLite commit and the Milvus update leaves a
generation mismatch and the collection is rebuilt from SQLite on the next open.

Milvus returns an exact k-nearest set with arbitrary tie order; :func:`index.exact.resolve_ties`
makes it deterministic. Its band fetch is a range search for the items at exactly the k-th distance,
restricted to ``id <= Y`` with ``Y`` shrinking until the result is below Milvus's result limit, so
the smallest ids of the band are always found.

Requires ``pymilvus`` 2.5 and, for a local file URI, ``milvus-lite`` 2.5 (3.x has no binary
vectors); see the ``milvus`` extra of ``pyproject.toml``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.codes import BITS_CHOICES
from index.exact import check_k, empty_result, resolve_ties
from index.filters import ItemSubset, milvus_expression
from index.flat import DEFAULT_TIE_MARGIN
from index.metadata import MetadataDB
from index.records import MODALITIES

logger = logging.getLogger(__name__)

#: Milvus's largest ``limit`` of one search.
MILVUS_MAX_LIMIT = 16_384
META_COLLECTION = "cmah_meta"
_INSERT_BATCH = 10_000
#: Milvus's longest VARCHAR; longer labels or sources are stored cut (and cannot be filtered on exactly)
_MAX_TEXT = 65_535
#: scalar fields of every code collection
ATTRIBUTE_FIELDS = ("label", "source")


def collection_name(modality: str, bits: int) -> str:
    """Milvus collection of one (modality, bits) index."""
    return f"cmah_{modality}_{bits}"


class MilvusBackend:
    """Exact Hamming search in Milvus ``BIN_FLAT`` collections, kept in line with SQLite."""

    name = "milvus"

    def __init__(self, data_dir: Path, *, uri: str | None = None, tie_margin: int = DEFAULT_TIE_MARGIN) -> None:
        from pymilvus import MilvusClient

        self.uri = uri or str(Path(data_dir) / "milvus.db")
        self.tie_margin = max(1, int(tie_margin))
        with warnings.catch_warnings():  # milvus-lite 2.5 imports the deprecated pkg_resources
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            self._client: Any = MilvusClient(self.uri)
        self._counts: dict[tuple[str, int], int] = {}
        self._generations: dict[str, int] = {}

    # ------------------------------------------------------------------ schema
    def _create_collection(self, modality: str, bits: int) -> None:
        from pymilvus import DataType

        client = self._client
        name = collection_name(modality, bits)
        if client.has_collection(name):
            client.drop_collection(name)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("code", DataType.BINARY_VECTOR, dim=bits)
        for field in ATTRIBUTE_FIELDS:
            schema.add_field(field, DataType.VARCHAR, max_length=_MAX_TEXT)
        client.create_collection(name, schema=schema, consistency_level="Strong")
        params = client.prepare_index_params()
        params.add_index(field_name="code", index_type="BIN_FLAT", metric_type="HAMMING")
        client.create_index(name, params, sync=False)  # BIN_FLAT needs no build; skip pymilvus' 0.5 s polls
        client.load_collection(name)

    def _ensure_meta(self) -> None:
        from pymilvus import DataType

        client = self._client
        if client.has_collection(META_COLLECTION):
            return
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("generation", DataType.INT64)
        schema.add_field("db_uuid", DataType.VARCHAR, max_length=64)
        schema.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)  # Milvus requires a vector field
        client.create_collection(META_COLLECTION, schema=schema, consistency_level="Strong")
        params = client.prepare_index_params()
        params.add_index(field_name="dummy", index_type="FLAT", metric_type="L2")
        client.create_index(META_COLLECTION, params, sync=False)
        client.load_collection(META_COLLECTION)

    def _stored_state(self, modality: str) -> tuple[int, str] | None:
        rows = self._client.query(
            META_COLLECTION, filter=f'key == "{modality}"', output_fields=["generation", "db_uuid"]
        )
        return (int(rows[0]["generation"]), str(rows[0]["db_uuid"])) if rows else None

    def _record_state(self, modality: str, generation: int) -> None:
        row = {"key": modality, "generation": int(generation), "db_uuid": self._db_uuid, "dummy": [0.0, 0.0]}
        self._client.upsert(META_COLLECTION, [row])
        self._generations[modality] = int(generation)

    def _milvus_count(self, modality: str, bits: int) -> int:
        rows = self._client.query(collection_name(modality, bits), filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    # ------------------------------------------------------------------ open / rebuild
    def open(self, meta: MetadataDB) -> None:
        """Check every collection against SQLite (uuid, modality generation, count); rebuild on mismatch."""
        self._ensure_meta()
        self._db_uuid = meta.db_uuid
        for modality in MODALITIES:
            generation = meta.generation(modality)
            state = self._stored_state(modality)
            for bits in BITS_CHOICES:
                expected = meta.count_codes(modality, bits)
                name = collection_name(modality, bits)
                exists = self._client.has_collection(name)
                current = exists and state == (generation, self._db_uuid) and self._has_attributes(name)
                if current and self._milvus_count(modality, bits) == expected:
                    self._counts[(modality, bits)] = expected
                    continue
                if exists or expected:
                    logger.warning(
                        "Milvus collection %s is missing or stale (state %s, database at generation %d); "
                        "rebuilding it from SQLite",
                        name,
                        state,
                        generation,
                    )
                self._rebuild(meta, modality, bits)
            if state != (generation, self._db_uuid):
                self._record_state(modality, generation)

    def _has_attributes(self, name: str) -> bool:
        fields = {f["name"] for f in self._client.describe_collection(name)["fields"]}
        return set(ATTRIBUTE_FIELDS) <= fields

    def _rebuild(self, meta: MetadataDB, modality: str, bits: int) -> None:
        self._create_collection(modality, bits)
        ids, codes, labels, sources = meta.load_items(modality, bits)
        self._insert(modality, bits, ids, codes, labels, sources)
        self._counts[(modality, bits)] = len(ids)
        logger.log(
            logging.INFO if len(ids) else logging.DEBUG,
            "rebuilt Milvus collection %s: %d items",
            collection_name(modality, bits),
            len(ids),
        )

    def rebuild(self, meta: MetadataDB, modality: str, bits: int) -> None:
        """Re-create one collection from SQLite."""
        self._rebuild(meta, modality, bits)
        self._record_state(modality, meta.generation(modality))

    def _insert(
        self,
        modality: str,
        bits: int,
        ids: np.ndarray,
        codes: np.ndarray,
        labels: Sequence[str | None],
        sources: Sequence[str],
    ) -> None:
        name = collection_name(modality, bits)
        if len(labels) != len(ids) or len(sources) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(labels)} labels and {len(sources)} sources")
        for start in range(0, len(ids), _INSERT_BATCH):
            end = start + _INSERT_BATCH
            rows = [
                {"id": int(i), "code": c.tobytes(), "label": (lb or "")[:_MAX_TEXT], "source": (src or "")[:_MAX_TEXT]}
                for i, c, lb, src in zip(ids[start:end], codes[start:end], labels[start:end], sources[start:end],
                                         strict=True)
            ]
            self._client.insert(name, rows)

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
        """Insert new items with their labels and sources."""
        self._insert(modality, bits, ids, codes, labels, sources)
        self._counts[(modality, bits)] += len(ids)

    def remove(self, modality: str, bits: int, ids: np.ndarray) -> None:
        """Delete items by id."""
        if len(ids):  # the store only removes ids present in this collection
            self._client.delete(collection_name(modality, bits), ids=[int(i) for i in ids])
            self._counts[(modality, bits)] -= len(ids)

    def committed(self, meta: MetadataDB, keys: set[tuple[str, int]]) -> None:
        """Record in Milvus that the collections of the touched modalities reflect SQLite's generation."""
        for modality in sorted({m for m, _ in keys}):
            self._record_state(modality, meta.generation(modality))

    # ------------------------------------------------------------------ search
    def count(self, modality: str, bits: int) -> int:
        """Items in one collection."""
        return self._counts[(modality, bits)]

    def _search(
        self, modality: str, bits: int, queries: np.ndarray, limit: int, params: dict | None = None, expr: str = ""
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        res = self._client.search(
            collection_name(modality, bits),
            data=[q.tobytes() for q in queries],
            anns_field="code",
            limit=limit,
            filter=expr,
            search_params={"metric_type": "HAMMING", "params": params or {}},
            output_fields=["id"],
        )
        out = []
        for hits in res:
            d = np.array([h["distance"] for h in hits], dtype=np.float64).round().astype(np.int64)
            i = np.array([h["id"] for h in hits], dtype=np.int64)
            out.append((d, i))
        return out

    @property
    def max_k(self) -> int:
        """The largest ``k`` a search may ask for on a collection above Milvus's result limit."""
        return MILVUS_MAX_LIMIT - self.tie_margin

    def search(
        self, modality: str, bits: int, query_codes: np.ndarray, k: int, subset: ItemSubset | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact search, order of :mod:`index.exact`; with ``subset``, among the items whose label and
        source match its filter (a Milvus filter expression: the scan skips the others)."""
        k = check_k(k)
        expr = "" if subset is None else milvus_expression(subset.filter)
        n = self.count(modality, bits)
        if n == 0 or len(query_codes) == 0:
            return empty_result(len(query_codes), k)
        if k + self.tie_margin > MILVUS_MAX_LIMIT and n > MILVUS_MAX_LIMIT:
            raise ValueError(f"the Milvus backend supports k <= {MILVUS_MAX_LIMIT - self.tie_margin}, got {k}")
        kc = min(n, k + self.tie_margin)
        hits = self._search(modality, bits, query_codes, kc, expr=expr)
        cand_d, cand_i = empty_result(len(query_codes), kc)
        for row, (d, i) in enumerate(hits):
            cand_d[row, : len(d)] = d
            cand_i[row, : len(i)] = i
        # a filtered query may find fewer than kc items: all that match, so no band can overflow
        full = np.array([len(i) == kc for _, i in hits], dtype=bool)
        if full.all():
            return resolve_ties(cand_d, cand_i, k, n, self._band_fetcher(modality, bits, query_codes, expr))[:2]
        out_d, out_i = empty_result(len(query_codes), k)
        rows = np.flatnonzero(full)
        if rows.size:
            fetch = self._band_fetcher(modality, bits, query_codes[rows], expr)
            out_d[rows], out_i[rows], _ = resolve_ties(cand_d[rows], cand_i[rows], k, n, fetch)
        rows = np.flatnonzero(~full)
        out_d[rows], out_i[rows], _ = resolve_ties(cand_d[rows], cand_i[rows], k, kc, self._band_fetcher(
            modality, bits, query_codes[rows], expr))
        return out_d, out_i

    def _band_fetcher(self, modality: str, bits: int, queries: np.ndarray, where: str = ""):
        def fetch(rows: np.ndarray, band_dist: np.ndarray, need: np.ndarray) -> list[np.ndarray]:
            out = []
            for row, dist, m in zip(rows, band_dist, need, strict=True):
                q = queries[row : row + 1]
                params = {"radius": int(dist) + 1, "range_filter": int(dist)}  # distance == dist
                expr = where
                while True:
                    ids = self._search(modality, bits, q, MILVUS_MAX_LIMIT, params, expr)[0][1]
                    if len(ids) < MILVUS_MAX_LIMIT:  # complete: every band item with id <= bound
                        break
                    # the m smallest band ids are <= the m-th smallest id seen: narrow and repeat
                    bound = f"id <= {int(np.partition(ids, int(m) - 1)[int(m) - 1])}"
                    expr = f"({where}) and {bound}" if where else bound
                out.append(ids)
            return out

        return fetch

    # ------------------------------------------------------------------ persistence
    def snapshot(self, meta: MetadataDB) -> int:
        """Milvus persists by itself; flush the collections."""
        for modality in MODALITIES:
            for bits in BITS_CHOICES:
                self._client.flush(collection_name(modality, bits))
        return 0

    def close(self, meta: MetadataDB) -> None:
        """Release the client."""
        self._client.close()
