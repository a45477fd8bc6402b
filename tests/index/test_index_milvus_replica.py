"""The scale-out mode's shared state against a real Milvus server: what a search replica reads (exact search,
item records, values) is what the writer's store holds, after adds, deletes, a lost publication and a retry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scale_servers import milvus_uri  # noqa: F401 - fixture

from index import HashStore
from index.milvus_replica import MilvusCatalog, ReplicaStore

BITS = (16, 64)


def _items(rng: np.random.Generator, n: int, modality: str, ref, start: int = 0) -> list[dict]:  # noqa: ANN001
    codes = {b: ref.clustered_codes(rng, n, b) for b in BITS}  # many exact duplicates: ties at every distance
    return [{"modality": modality, "name": f"{modality}-{start + i}", "label": None if i % 5 == 0 else f"c{i % 3}",
             "source": "test", "preview": f"previews/{i:032x}.png", "item_key": f"{i:032x}",
             "codes": {b: codes[b][i] for b in BITS}} for i in range(n)]


def _reference(store: HashStore, modality: str, bits: int, queries: np.ndarray, k: int, ref):  # noqa: ANN001, ANN202
    ids = [i for i in store.item_ids(limit=10**6)]
    recs = [r for r in store.get_many(ids) if r is not None and r.modality == modality and bits in r.codes]
    db = np.stack([r.codes[bits] for r in recs]) if recs else np.zeros((0, bits // 8), np.uint8)
    return ref.search(queries, db, np.array([r.id for r in recs], dtype=np.int64), k)


@pytest.mark.slow
def test_replica_reads_what_the_writer_published(milvus_uri: str, tmp_path: Path, ref) -> None:  # noqa: ANN001, F811
    rng = np.random.default_rng(7)
    writer = HashStore(tmp_path / "indexer", "milvus", milvus_uri=milvus_uri)
    replica = ReplicaStore(milvus_uri, client=None)
    try:
        catalog = MilvusCatalog(writer.backend._client, create=True)
        assert catalog.sync(writer) == (0, 0) or True  # a previous test's records are dropped here
        assert catalog.count() == 0
        ids = writer.add(_items(rng, 300, "image", ref) + _items(rng, 200, "points", ref))
        catalog.publish(writer.get_many(ids))
        assert replica.ready()
        assert replica.count() == 500 and replica.count("points") == 200
        assert replica.index_count("image", 64) == 300

        queries = {b: ref.clustered_codes(rng, 6, b) for b in BITS}
        for modality in ("image", "points"):
            for bits in BITS:
                for k in (1, 7, 50):
                    ref.assert_same(replica.search(modality, queries[bits], bits, k),
                                    _reference(writer, modality, bits, queries[bits], k, ref))

        some = [ids[0], ids[5], ids[499], 10**9, -1]
        assert replica.get_many(some) == writer.get_many(some)
        assert replica.get(ids[5]).label == writer.get(ids[5]).label  # None stays None, "" is not None

        # delete: gone from the search and the records
        gone = ids[:40]
        writer.delete(gone)
        catalog.remove(gone)
        assert replica.get_many(gone) == [None] * 40
        for bits in BITS:
            ref.assert_same(replica.search("image", queries[bits], bits, 20),
                            _reference(writer, "image", bits, queries[bits], 20, ref))

        # a batch committed by the writer whose publication was lost (a crash): the sync publishes it once
        lost = writer.add(_items(rng, 30, "points", ref, start=1000))
        assert replica.get_many(lost) == [None] * 30
        assert catalog.sync(writer) == (30, 0)
        assert catalog.sync(writer) == (0, 0)  # idempotent
        catalog.publish(writer.get_many(lost))  # a retried publication adds nothing twice
        assert replica.count() == writer.count() == 490
        assert replica.get_many(lost) == writer.get_many(lost)

        # browsing and statistics on a replica, against the records themselves
        everything = [r for r in writer.get_many(writer.item_ids(limit=10**6)) if r is not None]
        want = [r.id for r in everything if r.modality == "image" and r.label in ("c1", "c2")]
        total, page = replica.browse(labels=["c1", "c2"], modality="image", offset=3, limit=10)
        assert total == len(want) and [r.id for r in page] == want[3:13]
        assert replica.browse(sources=["nope"])[0] == 0
        stats = replica.stats()
        assert stats["modalities"] == {m: sum(r.modality == m for r in everything) for m in ("image", "points")}
        assert stats["labels"][None] == sum(r.label is None for r in everything)
        assert stats["sources"] == {"test": len(everything)}

        catalog.set_value("codes_model", "abc")
        assert replica.get_value("codes_model") == "abc"
        catalog.set_value("codes_model", None)
        assert replica.get_value("codes_model") is None
        # filters run inside Milvus: the reference scans only the matching records
        def matching(r) -> bool:  # noqa: ANN001
            return r.label in ("c1", "c2")

        everything = [r for r in writer.get_many(writer.item_ids(limit=10**6)) if r is not None]
        allowed = [r for r in everything if r.modality == "points" and matching(r)]
        db = np.stack([r.codes[64] for r in allowed])
        want = ref.search(queries[64], db, np.array([r.id for r in allowed], dtype=np.int64), 15)
        got = replica.search("points", queries[64], 64, 15, labels=["c1", "c2"])
        ref.assert_same(got, want)
        near = replica.search("points", queries[64], 64, 15, labels=["c1", "c2"], max_distance=int(want[0][0, 7]))
        assert (near[1][0] >= 0).sum() >= 8 and (near[0][0][near[1][0] >= 0] <= want[0][0, 7]).all()
        with pytest.raises(ValueError):
            replica.search("image", queries[16], 16, 5, labels=[""])
    finally:
        replica.close()
        writer.close()


def test_replica_searches_at_the_chosen_consistency_level() -> None:
    """``consistency`` reaches every search call (and only searches); an unknown level is refused."""
    from index.milvus_replica import _ReadOnlyBackend

    class Client:
        def __init__(self) -> None:
            self.calls: list[tuple[str, dict]] = []

        def search(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.calls.append(("search", kwargs))
            return [[]]

        def query(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.calls.append(("query", kwargs))
            return []

    client = Client()
    backend = _ReadOnlyBackend(client, 8, "Bounded")
    backend._search("image", 16, np.zeros((1, 2), np.uint8), 5)
    backend._client.query("cmah_items", filter="")
    assert client.calls[0][1]["consistency_level"] == "Bounded"
    assert "consistency_level" not in client.calls[1][1]
    with pytest.raises(ValueError, match="consistency"):
        _ReadOnlyBackend(client, 8, "Session")
