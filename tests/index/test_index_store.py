"""index.store.HashStore: behaviour shared by every backend (parametrised by the `backend` fixture)."""

from __future__ import annotations

import threading
from datetime import datetime
from types import SimpleNamespace

import numpy as np
import pytest

from index import HashStore, ItemRecord, StoreClosedError, StoreLockedError
from index.codes import BITS_CHOICES


def make_items(rng: np.random.Generator, ref: SimpleNamespace, n: int, modality: str, kind: str) -> list[dict]:
    """Items with codes for every length, except every 7th item lacks a 16-bit code."""
    codes = {bits: ref.make_codes(kind, rng, n, bits) for bits in BITS_CHOICES}
    items = []
    for j in range(n):
        item_codes = {bits: codes[bits][j] for bits in BITS_CHOICES if not (bits == 16 and j % 7 == 3)}
        items.append({"modality": modality, "name": f"{modality}-{j}", "label": f"c{j % 5}", "codes": item_codes})
    return items


def reference_db(store: HashStore, modality: str, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, ids) of the items of one modality having a `bits` code, read back through get()."""
    ids, codes = [], []
    for rec in store.get_many(range(1, 1 + 10 * max(store.count(), 1))):
        if rec is not None and rec.modality == modality and bits in rec.codes:
            ids.append(rec.id)
            codes.append(rec.codes[bits])
    nbytes = bits // 8
    return np.array(codes, dtype=np.uint8).reshape(-1, nbytes), np.array(ids, dtype=np.int64)


def check_search(store: HashStore, ref: SimpleNamespace, rng: np.random.Generator, ks: list[int]) -> None:
    for modality in ("image", "points"):
        for bits in BITS_CHOICES:
            db_codes, db_ids = reference_db(store, modality, bits)
            assert store.index_count(modality, bits) == len(db_ids)
            queries = np.concatenate([db_codes[:4], ref.random_codes(rng, 3, bits)])
            for k in ks:
                ref.assert_same(store.search(modality, queries, bits, k), ref.search(queries, db_codes, db_ids, k))


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_search_matches_reference(open_store, ref, rng, kind: str) -> None:
    store = open_store()
    ids = store.add(make_items(rng, ref, 120, "image", kind))
    ids += store.add(make_items(rng, ref, 80, "points", kind))
    assert ids == list(range(1, 201))
    assert store.count() == 200 and store.count("image") == 120 and store.count("points") == 80
    check_search(store, ref, rng, [1, 5, 79, 80, 81, 120, 300])


def test_get_returns_the_record(open_store, rng) -> None:
    store = open_store()
    code = {16: rng.integers(0, 256, 2, dtype=np.uint8), 64: rng.integers(0, 256, 8, dtype=np.uint8)}
    rec = ItemRecord(
        modality="points",
        name="chair",
        codes=code,
        label=None,
        source="upload",
        preview="previews/1.png",
        item_key="chair-7",
    )
    (item_id,) = store.add([rec])
    got = store.get(item_id)
    assert got is not None and got.id == item_id
    assert (got.modality, got.name, got.label, got.source, got.preview, got.item_key) == (
        "points",
        "chair",
        None,
        "upload",
        "previews/1.png",
        "chair-7",
    )
    assert sorted(got.codes) == [16, 64]
    np.testing.assert_array_equal(got.codes[64], code[64])
    created = datetime.fromisoformat(got.created)
    assert created.utcoffset().total_seconds() == 0
    assert store.get(item_id + 1) is None
    assert store.get_many([item_id, -1, 999]) == [got, None, None]
    assert store.index_count("points", 32) == 0 and store.index_count("points", 16) == 1


def test_delete_and_upsert(open_store, ref, rng) -> None:
    store = open_store()
    ids = store.add(make_items(rng, ref, 60, "image", "clustered"))
    assert store.delete([ids[0], ids[5], 10_000, ids[5]]) == [ids[0], ids[5]]
    assert store.get(ids[0]) is None and store.count() == 58
    # replace an item with new codes and another modality
    new_codes = {bits: ref.random_codes(rng, 1, bits)[0] for bits in BITS_CHOICES}
    before = store.get(ids[10])
    assert store.upsert(ids[10], {"modality": "points", "name": "moved", "codes": new_codes}) == ids[10]
    after = store.get(ids[10])
    assert after.modality == "points" and after.name == "moved" and after.created == before.created
    # upsert of an unknown id creates it with that id; later adds continue above it
    assert store.upsert(500, {"modality": "image", "name": "explicit", "codes": new_codes}) == 500
    assert store.add(make_items(rng, ref, 1, "image", "random")) == [501]
    for bits in BITS_CHOICES:
        d, i = store.search("points", new_codes[bits], bits, 1)
        assert (d[0, 0], i[0, 0]) == (0, ids[10])
        _, i = store.search("image", new_codes[bits], bits, 200)
        assert ids[10] not in i and ids[0] not in i and 500 in i
    check_search(store, ref, rng, [1, 7, 60])


def test_ids_beyond_sqlite_integers_are_unknown(open_store, ref, rng) -> None:
    """Ids past 64 bits (e.g. from a URL) are not found rather than an OverflowError from sqlite3."""
    store = open_store()
    ids = store.add(make_items(rng, ref, 2, "points", "random"))
    huge = (2**63, -(2**63) - 1, 10**40)
    for item_id in huge:
        assert store.get(item_id) is None
        assert store.get_many([ids[0], item_id]) == [store.get(ids[0]), None]
    assert store.delete([*huge, ids[1]]) == [ids[1]]
    assert store.count() == 1


def test_deleted_ids_are_not_reused(open_store, ref, rng) -> None:
    store = open_store()
    ids = store.add(make_items(rng, ref, 3, "image", "random"))
    store.delete(ids)
    assert store.add(make_items(rng, ref, 1, "image", "random")) == [4]


def test_persistence_roundtrip(open_store, ref, rng, tmp_path) -> None:
    store = open_store(tmp_path / "s")
    store.add(make_items(rng, ref, 90, "image", "clustered"))
    store.add(make_items(rng, ref, 40, "points", "random"))
    store.delete([3, 4])
    queries = {bits: ref.random_codes(rng, 5, bits) for bits in BITS_CHOICES}
    before = {(m, b): store.search(m, queries[b], b, 12) for m in ("image", "points") for b in BITS_CHOICES}
    records = store.get_many(range(1, 140))
    store.close()
    assert store.closed
    store2 = open_store(tmp_path / "s")
    assert store2.get_many(range(1, 140)) == records
    for (m, b), expected in before.items():
        ref.assert_same(store2.search(m, queries[b], b, 12), expected)


def test_validation_errors(open_store, rng) -> None:
    store = open_store()
    good = {"modality": "image", "name": "a", "codes": {32: rng.integers(0, 256, 4, dtype=np.uint8)}}
    store.add([good])
    bad_items = [
        {**good, "modality": "video"},
        {**good, "name": ""},
        {**good, "codes": {}},
        {**good, "codes": {32: np.zeros(4, dtype=np.float32)}},  # unpacked / float codes
        {**good, "codes": {32: np.zeros(8, dtype=np.uint8)}},  # wrong width
        {**good, "codes": {8: np.zeros(1, dtype=np.uint8)}},  # unsupported length
        {**good, "colour": "red"},  # unknown field
        {"modality": "image", "codes": good["codes"]},  # no name
    ]
    for bad in bad_items:
        with pytest.raises(ValueError):
            store.add([good, bad])
    with pytest.raises(ValueError):
        store.add(good)  # a single dict instead of a list
    assert store.count() == 1  # nothing of a bad batch was added
    q = np.zeros((1, 4), dtype=np.uint8)
    for args in [
        ("video", q, 32, 1),
        ("image", q, 24, 1),
        ("image", q, 32, 0),
        ("image", q, 64, 1),
        ("image", q.astype(np.int32), 32, 1),
        ("image", q[None], 32, 1),
    ]:
        with pytest.raises(ValueError):
            store.search(*args)
    with pytest.raises(ValueError):
        store.upsert(0, good)
    with pytest.raises(ValueError):
        store.count("video")


def test_empty_store_pads(open_store) -> None:
    store = open_store()
    d, i = store.search("image", np.zeros((2, 8), dtype=np.uint8), 64, 3)
    assert d.tolist() == i.tolist() == [[-1, -1, -1]] * 2
    assert store.count() == 0 and store.delete([1]) == []


def test_lock_and_close(open_store, tmp_path) -> None:
    store = open_store(tmp_path / "locked")
    with pytest.raises(StoreLockedError):
        HashStore(tmp_path / "locked", store.backend_name)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreClosedError):
        store.count()
    with HashStore(tmp_path / "locked", store.backend_name) as again:  # the lock was released
        assert again.count() == 0
    assert again.closed


def test_threads(open_store, ref, rng) -> None:
    """Concurrent searches and adds: no errors, and the final state matches the reference."""
    store = open_store()
    store.add(make_items(rng, ref, 50, "image", "random"))
    batches = [make_items(np.random.default_rng(s), ref, 5, "image", "clustered") for s in range(12)]
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for batch in batches:
                store.add(batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader(seed: int) -> None:
        r = np.random.default_rng(seed)
        try:
            for _ in range(25):
                d, i = store.search("image", ref.random_codes(r, 4, 64), 64, 8)
                assert (np.diff(d, axis=1) >= 0).all() and (i > 0).all()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert store.count() == 110
    check_search(store, ref, rng, [10])


def test_tie_resolution_through_the_store(open_store, ref, rng, backend, monkeypatch) -> None:
    """Tiny tie margin: most rows overflow and go through the backend's band fetch."""
    if backend == "milvus":  # also exercise the id-bound shrinking loop of the Milvus band fetch
        monkeypatch.setattr("index.milvus_store.MILVUS_MAX_LIMIT", 8)
    store = open_store(tie_margin=1)
    items = make_items(rng, ref, 150, "points", "clustered")
    for j, item in enumerate(items):  # many exact duplicates
        item["codes"] = items[j % 3]["codes"]
    store.add(items)
    check_search(store, ref, rng, [1, 2, 5])


def test_backend_follows_sqlite_changes_made_behind_its_back(open_store, ref, rng, tmp_path) -> None:
    """A change committed to SQLite but never applied to the backend (a crash in between) is picked up."""
    import sqlite3

    from index.store import DB_FILENAME

    store = open_store(tmp_path / "s")
    store.add(make_items(rng, ref, 30, "image", "random"))
    backend_name = store.backend_name
    store.close()
    code = ref.random_codes(rng, 1, 64)[0]
    con = sqlite3.connect(tmp_path / "s" / DB_FILENAME)
    with con:
        con.execute(
            "INSERT INTO items (id, modality, name, source, created, updated, code64) "
            "VALUES (31, 'image', 'late', '', '2024-01-01T00:00:00+00:00', '2024-01-01T00:00:00+00:00', ?)",
            (code.tobytes(),),
        )
        con.execute("DELETE FROM items WHERE id = 1")
        con.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation:image'")
    con.close()
    with HashStore(tmp_path / "s", backend_name) as again:
        assert again.index_count("image", 64) == 30 and again.index_count("image", 32) == 29
        d, i = again.search("image", code, 64, 1)
        assert (d[0, 0], i[0, 0]) == (0, 31)
        check_search(again, ref, rng, [3])


def test_get_many_is_get_of_each_id_in_order(open_store, ref, rng) -> None:
    """One lookup of many ids (chunked queries) answers what get() answers for each: order kept, repeats,
    the -1 padding, unknown and out-of-range ids."""
    store = open_store()
    ids = store.add(make_items(rng, ref, 1200, "image", "random"))
    wanted = [ids[5], -1, ids[5], 10**9, ids[0], 2**70, *reversed(ids), 0, ids[-1]]
    assert store.get_many(wanted) == [store.get(i) if 0 <= i < 2**63 else None for i in wanted]
    assert store.get_many([]) == []
