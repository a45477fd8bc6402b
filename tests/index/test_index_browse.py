"""HashStore.browse / stats (the SQLite queries behind GET /api/v1/items and /stats), against a brute-force
reference over the stored records, and the browsing indexes added to an older database on open."""

from __future__ import annotations

import sqlite3
from collections import Counter
from itertools import combinations

import numpy as np
import pytest

from index import HashStore
from index.store import DB_FILENAME

LABELS = ["chair", "table", "lamp", None]
SOURCES = ["demo", "job:a", "job:b"]


def _fill(store: HashStore, rng: np.random.Generator, n: int) -> None:
    items = []
    for j in range(n):
        items.append({"modality": ("image", "points")[int(rng.integers(2))], "name": f"item-{j}",
                      "label": LABELS[int(rng.integers(len(LABELS)))], "source": SOURCES[int(rng.integers(3))],
                      "codes": {64: rng.integers(0, 256, 8, dtype=np.uint8)}})
    store.add(items)
    store.delete(rng.choice(np.arange(1, n + 1), size=n // 10, replace=False).tolist())  # holes in the ids


def _all(store: HashStore) -> list:
    return [r for r in store.get_many(range(1, 2 * store.count() + 50)) if r is not None]


def _subsets(values: list) -> list[tuple]:
    return [c for k in range(len(values) + 1) for c in combinations(values, k)]


@pytest.fixture
def filled(tmp_path) -> HashStore:
    store = HashStore(tmp_path / "data")
    _fill(store, np.random.default_rng(7), 300)
    yield store
    store.close()


def test_browse_matches_brute_force_for_every_filter(filled: HashStore) -> None:
    records = _all(filled)
    named = [lb for lb in LABELS if lb is not None] + ["no-such-label"]
    for labels in _subsets(named):
        for sources in _subsets(SOURCES + ["job:none"])[::3]:
            for modality in (None, "image", "points"):
                want = [r.id for r in records if (not labels or r.label in labels)
                        and (not sources or r.source in sources) and (modality is None or r.modality == modality)]
                total, page = filled.browse(labels, sources, modality, offset=0, limit=1000)
                assert (total, [r.id for r in page]) == (len(want), want), (labels, sources, modality)


@pytest.mark.parametrize(("offset", "limit"), [(0, 1), (0, 7), (5, 7), (265, 50), (269, 10), (270, 5), (10_000, 3)])
def test_browse_pages(filled: HashStore, offset: int, limit: int) -> None:
    records = _all(filled)
    assert len(records) == 270
    total, page = filled.browse(offset=offset, limit=limit)
    assert total == 270
    assert [r.id for r in page] == [r.id for r in records][offset:offset + limit]
    assert all(r.codes[64].shape == (8,) for r in page)  # full records


def test_pages_cover_every_match_once(filled: HashStore) -> None:
    seen, offset = [], 0
    while True:
        total, page = filled.browse(["chair", "lamp"], ["demo", "job:a"], "points", offset=offset, limit=9)
        if not page:
            break
        seen += [r.id for r in page]
        offset += 9
    assert len(seen) == total == len(set(seen)) and seen == sorted(seen)


def test_browse_refuses_bad_arguments(filled: HashStore) -> None:
    for kwargs in ({"modality": "text"}, {"offset": -1}, {"limit": 0}):
        with pytest.raises(ValueError):
            filled.browse(**kwargs)


def test_stats_are_direct_counts(filled: HashStore) -> None:
    records = _all(filled)
    stats = filled.stats()
    assert stats["modalities"] == {"image": sum(r.modality == "image" for r in records),
                                   "points": sum(r.modality == "points" for r in records)}
    assert stats["labels"] == dict(Counter(r.label for r in records))
    assert list(stats["labels"])[0] is None and list(stats["labels"])[1:] == sorted(k for k in stats["labels"] if k)
    assert stats["sources"] == dict(Counter(r.source for r in records))


def test_stats_of_an_empty_store(tmp_path) -> None:
    with HashStore(tmp_path) as store:
        assert store.stats() == {"modalities": {"image": 0, "points": 0}, "labels": {}, "sources": {}}
        assert store.browse() == (0, [])


def test_an_older_database_gets_the_browsing_indexes(tmp_path) -> None:
    with HashStore(tmp_path) as store:
        _fill(store, np.random.default_rng(1), 40)
        before = store.browse(["chair"], ["demo"], None, 0, 100)
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    db.execute("DROP INDEX items_label")
    db.execute("DROP INDEX items_source")
    db.commit()
    db.close()
    with HashStore(tmp_path) as store:
        assert store.browse(["chair"], ["demo"], None, 0, 100) == before
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    plan = " ".join(str(r) for r in db.execute("EXPLAIN QUERY PLAN SELECT count(*) FROM items WHERE label IN ('a')"))
    db.close()
    assert {"items_label", "items_source"} <= names
    assert "items_label" in plan
