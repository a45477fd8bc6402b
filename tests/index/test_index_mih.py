"""index.mih: multi-index hashing is exact (same ids, distances and tie order as the brute force),
its tables follow every change, and it hands expensive queries back to the scan."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import index.mih as mih_module
from index import HashStore
from index.codes import BITS_CHOICES
from index.flat import MIH_REPROBE, MIH_SMALL_BATCH, FaissFlatIndex
from index.mih import MultiIndexHash, complete_radius


def forced(bits: int, **kwargs: object) -> FaissFlatIndex:
    """A flat index that answers every query by MIH (no size threshold, no fallback, eager rebuilds).

    On these small indexes a scan is cheaper, so the cost rule (tested in test_when_mih_is_used)
    would soon choose the scan: it is overridden.
    """
    opts = {"mih_min_items": 0, "mih_rebuild": "eager", "mih_budget": 1e12, **kwargs}
    index = FaissFlatIndex(bits, **opts)  # type: ignore[arg-type]
    index._use_mih = lambda nq: True  # type: ignore[method-assign]
    return index


def codes_from_subdistances(subdists: list[tuple[int, ...]], rng: np.random.Generator) -> np.ndarray:
    """Codes whose 16-bit substring t (bytes 2t, 2t+1) differs from zero in ``subdists[i][t]`` random bits."""
    out = np.zeros((len(subdists), 2 * len(subdists[0])), dtype=np.uint8)
    for i, row in enumerate(subdists):
        bits = np.zeros(16 * len(row), dtype=np.uint8)
        for t, dt in enumerate(row):
            bits[16 * t + rng.choice(16, size=dt, replace=False)] = 1
        # substring t is the uint16 view of bytes (2t, 2t+1): pack each 16-bit group into those bytes
        out[i] = np.packbits(bits)
    return out


@pytest.mark.parametrize("bits", BITS_CHOICES)
@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.parametrize("chunk", [1, mih_module.CHUNK])  # one stop test per step / per chunk of steps
def test_mih_matches_reference(
    ref: SimpleNamespace, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, bits: int, kind: str, chunk: int
) -> None:
    monkeypatch.setattr(mih_module, "CHUNK", chunk)
    n = 2000
    codes = ref.make_codes(kind, rng, n, bits)
    codes[100:140] = codes[7]  # exact duplicates
    ids = rng.choice(20 * n, size=n, replace=False).astype(np.int64)  # storage order is not id order
    index = forced(bits)
    index.add(ids, codes)
    queries = np.concatenate([codes[:2], codes[[7, 120]], ref.make_codes(kind, rng, 3, bits)])
    ks = (1, 2, 10, 57, n, n + 5)
    for k in ks:
        ref.assert_same(index.search(queries, k), ref.search(queries, codes, ids, k))
    assert index.mih_queries == len(ks) * len(queries) and index.mih_fallbacks == 0


@pytest.mark.parametrize("bits", BITS_CHOICES)
def test_tables_directly_and_empty(ref: SimpleNamespace, rng: np.random.Generator, bits: int) -> None:
    empty = MultiIndexHash(bits, np.empty(0, np.int64), np.empty((0, bits // 8), np.uint8))
    d, i, todo, _ = empty.search(ref.random_codes(rng, 3, bits), 4)
    assert d.tolist() == i.tolist() == [[-1] * 4] * 3 and todo.size == 0
    index = forced(bits)
    assert index.search(ref.random_codes(rng, 2, bits), 3)[1].tolist() == [[-1] * 3] * 2
    codes = ref.clustered_codes(rng, 500, bits)
    tables = MultiIndexHash(bits, np.arange(500, dtype=np.int64), codes, budget_factor=1e12)
    m = bits // 16
    assert tables.rows.dtype == np.int32 and tables.rows.size == m * 500
    assert tables.offsets[-1] == m * 500 and np.all(np.diff(tables.offsets) >= 0)
    q = codes[:6]
    for k in (1, 5, 499, 500, 600):
        d, i, todo, _ = tables.search(q, k)
        assert todo.size == 0
        ref.assert_same((d, i), ref.search(q, codes, np.arange(500), k))


@pytest.mark.parametrize("chunk", [1, mih_module.CHUNK])
@pytest.mark.parametrize("bits", [32, 64])
def test_pigeonhole_radius_is_exact(
    ref: SimpleNamespace, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, bits: int, chunk: int
) -> None:
    """After step (a, j) only items within m * a + j are guaranteed found -- not one more.

    Item ``near`` (small id) differs from the query by a + 1 bits in *every* substring (distance
    m (a + 1)), so only step (a + 1, 0) finds it. Item ``decoy`` (large id) has the same distance
    but agrees within a on substring 0, so step (a, 0) finds it first. With k = 1 the answer is
    ``near`` (tie broken by id); a radius bound one too large (m * a + j + 1) stops after level a
    and returns ``decoy``.
    """
    monkeypatch.setattr(mih_module, "CHUNK", chunk)
    m = bits // 16
    query = np.zeros((1, bits // 8), dtype=np.uint8)
    for a in range(4):
        near = (a + 1,) * m
        decoy = (a, a + 2, *([a + 1] * (m - 2)))
        assert sum(near) == sum(decoy) == m * (a + 1)
        far = [tuple(rng.integers(a + 3, 12, size=m)) for _ in range(60)]
        codes = codes_from_subdistances([near, decoy, *far], rng)
        ids = np.concatenate([[10, 20], np.arange(100, 160)]).astype(np.int64)
        expected = ref.search(query, codes, ids, 1)
        assert expected[1].tolist() == [[10]]
        index = forced(bits)
        index.add(ids, codes)
        ref.assert_same(index.search(query, 1), expected)
        ref.assert_same(index.search(query, 3), ref.search(query, codes, ids, 3))

    # the same case with the bound off by one returns the decoy: the test above is sensitive to it
    monkeypatch.setattr(mih_module, "complete_radius", lambda a, j, m: complete_radius(a, j, m) + 1)
    index = forced(bits)
    index.add(ids, codes)
    assert index.search(query, 1)[1].tolist() == [[20]]


def test_every_item_found_once_with_balanced_substrings(ref: SimpleNamespace, rng: np.random.Generator) -> None:
    """Many items with equal substring distances (found by several tables at the same step): no
    duplicates, exact order, with per-step stop tests."""
    rows = [tuple(rng.integers(0, 4, size=4)) for _ in range(400)] + [(2, 2, 2, 2)] * 50
    codes = codes_from_subdistances(rows, rng)
    ids = rng.permutation(1000)[: len(rows)].astype(np.int64)
    index = forced(64)
    index.add(ids, codes)
    queries = np.concatenate([np.zeros((1, 8), np.uint8), codes[:5]])
    for k in (1, 7, 60, 449, 450, 451):
        d, i = index.search(queries, k)
        ref.assert_same((d, i), ref.search(queries, codes, ids, k))
        valid = i[i >= 0]
        assert valid.size == min(k, len(rows)) * len(queries)


@pytest.mark.parametrize("bits", BITS_CHOICES)
def test_tables_follow_adds_removes_upserts(ref: SimpleNamespace, rng: np.random.Generator, bits: int) -> None:
    codes = ref.clustered_codes(rng, 800, bits)
    ids = np.arange(1, 801, dtype=np.int64)
    index = forced(bits)
    index.add(ids[:500], codes[:500])
    q = np.concatenate([codes[:4], codes[600:603], ref.random_codes(rng, 3, bits)])
    ref.assert_same(index.search(q, 12), ref.search(q, codes[:500], ids[:500], 12))
    index.add(ids[500:], codes[500:])  # new items must be found (q contains some of them)
    ref.assert_same(index.search(q, 12), ref.search(q, codes, ids, 12))
    assert index.mih_tables.ntotal == 800
    index.remove(ids[::2])  # removed items must not be returned
    keep = ids[1::2]
    ref.assert_same(index.search(q, 30), ref.search(q, codes[keep - 1], keep, 30))
    # upsert: id 2 gets the code of item 601 (remove + re-add: storage order no longer id order)
    codes2 = codes.copy()
    codes2[1] = codes[600]
    index.remove(np.array([2]))
    index.add(np.array([2]), codes2[1:2])
    ref.assert_same(index.search(q, 30), ref.search(q, codes2[keep - 1], keep, 30))
    assert index.mih_queries == 4 * len(q) and index.mih_fallbacks == 0


def test_amortized_rebuild_and_busy_lock(ref: SimpleNamespace, rng: np.random.Generator) -> None:
    codes = ref.random_codes(rng, 2000, 32)
    ids = np.arange(2000, dtype=np.int64)
    index = forced(32, mih_rebuild="amortized")  # the default rebuild policy
    index.add(ids[:1000], codes[:1000])
    q = codes[995:1005]
    ref.assert_same(index.search(q, 5), ref.search(q, codes[:1000], ids[:1000], 5))
    assert index.mih_queries == len(q)  # the first search builds the tables
    index.add(ids[1000:], codes[1000:])
    index.mih_build_seconds = 3600.0  # pretend a rebuild is expensive: scans until they cost as much
    for _ in range(2):
        ref.assert_same(index.search(q, 5), ref.search(q, codes, ids, 5))
    assert index.mih_queries == len(q) and index._mih_scan_debt > 0
    index.mih_build_seconds = 0.0
    ref.assert_same(index.search(q, 5), ref.search(q, codes, ids, 5))
    assert index.mih_queries == 2 * len(q) and index.mih_tables.ntotal == 2000
    # a rebuild in progress elsewhere: searches scan instead of waiting
    index.remove(ids[:10])
    with index._mih_lock:
        ref.assert_same(index.search(q, 5), ref.search(q, codes[10:], ids[10:], 5))
    assert index.mih_queries == 2 * len(q)


def test_fallback_to_scan(ref: SimpleNamespace, rng: np.random.Generator) -> None:
    """Huge buckets (40,000 copies of few codes) or k close to N cost more than a scan: fall back."""
    codes = np.repeat(ref.random_codes(rng, 4, 64), 10_000, axis=0)
    ids = np.arange(40_000, dtype=np.int64)
    index = FaissFlatIndex(64, mih_min_items=0)
    index.add(ids, codes)
    q = codes[[0, 15_000]]
    ref.assert_same(index.search(q, 3), ref.search(q, codes, ids, 3))
    assert index.mih_fallbacks == 2 and index.mih_queries == 0

    codes = ref.random_codes(rng, 40_000, 16)
    # the budget is in FAISS scans here; the compiled kernel scans 40,000 16-bit codes faster than MIH
    # visits one bucket (its fixed cost per chunk of steps), so every query would fall back
    index = FaissFlatIndex(16, mih_min_items=0, mih_budget=5.0, scan="faiss")
    index.add(ids, codes)
    q = ref.random_codes(rng, 4, 16)
    ref.assert_same(index.search(q, 3), ref.search(q, codes, ids, 3))
    assert index.mih_queries == 4 and index.mih_fallbacks == 0  # one or two buckets suffice
    ref.assert_same(index.search(q[:1], 39_999), ref.search(q[:1], codes, ids, 39_999))
    assert index.mih_fallbacks == 1  # k close to N: a scan is cheaper


def test_when_mih_is_used(rng: np.random.Generator) -> None:
    small = FaissFlatIndex(32)
    small.add(np.arange(100), rng.integers(0, 256, size=(100, 4), dtype=np.uint8))
    assert not small._use_mih(1)  # below mih_min_items: scan
    off = FaissFlatIndex(32, mih=False, mih_min_items=0)
    off.add(np.arange(100), rng.integers(0, 256, size=(100, 4), dtype=np.uint8))
    off.search(np.zeros((1, 4), np.uint8), 3)
    assert not off._use_mih(1) and off.mih_tables is None and off.mih_queries == 0
    multi = FaissFlatIndex(32, mih_min_items=0, threads=4, scan="faiss")  # FAISS: 4 OpenMP threads
    multi.add(np.arange(70_000), rng.integers(0, 256, size=(70_000, 4), dtype=np.uint8))
    assert multi._use_mih(1) and multi._use_mih(64)
    multi._mih_cost = 0.5  # a 64-query scan on 4 threads costs 1/4 scan per query: cheaper than MIH
    assert multi._use_mih(1) and not multi._use_mih(64)
    multi._mih_cost = 1.5  # MIH slower than a scan (e.g. mostly fallbacks): tried every MIH_REPROBE-th search
    assert sum(multi._use_mih(1) for _ in range(4 * MIH_REPROBE)) == 4
    multi.set_accelerator(object())  # type: ignore[arg-type]  # a GPU: large batches scan there
    multi._mih_cost = 0.0
    assert multi._use_mih(MIH_SMALL_BATCH) and not multi._use_mih(MIH_SMALL_BATCH + 1)
    with pytest.raises(ValueError):
        FaissFlatIndex(32, mih_rebuild="never")


def test_huge_ids(ref: SimpleNamespace, rng: np.random.Generator) -> None:
    codes = ref.clustered_codes(rng, 300, 64)
    ids = (1 << 60) + rng.choice(10_000, size=300, replace=False).astype(np.int64)
    index = forced(64)
    index.add(ids, codes)
    for k in (1, 10, 300):
        ref.assert_same(index.search(codes[:6], k), ref.search(codes[:6], codes, ids, k))


def test_store_option(tmp_path: Path, ref: SimpleNamespace, rng: np.random.Generator) -> None:
    codes = ref.clustered_codes(rng, 200, 16)
    items = [{"modality": "image", "name": f"i{j}", "codes": {16: codes[j]}} for j in range(200)]
    with HashStore(tmp_path / "off", mih=False) as store:
        store.add(items)
        assert not store.backend.flat_index("image", 16).mih_enabled
        expected = store.search("image", codes[:3], 16, 9)
    with HashStore(tmp_path / "on") as store:
        ids = store.add(items)
        flat = store.backend.flat_index("image", 16)
        assert flat.mih_enabled
        flat.mih_min_items, flat.mih_budget = 0, 1e12  # small index: force MIH
        got = store.search("image", codes[:3], 16, 9)
        assert flat.mih_queries == 3
    ref.assert_same(got, expected)
    ref.assert_same(got, ref.search(codes[:3], codes, np.asarray(ids), 9))
