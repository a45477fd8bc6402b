"""index.flat / index.exact: every search path equals the brute-force reference, ties included."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from index.codes import BITS_CHOICES
from index.exact import brute_force_search, resolve_ties
from index.flat import FAISS_CODE_BYTES, FaissFlatIndex, load_scan_kernel

needs_numba = pytest.mark.skipif(load_scan_kernel() is None, reason="numba not installed")
NUMBA = pytest.param("numba", marks=needs_numba)
#: both scans: the compiled kernel (index.scan_kernel) and FAISS + tie resolution
SCANS = ["faiss", NUMBA]


def _ks(n: int) -> list[int]:
    return sorted({1, 3, 10, max(n - 1, 1), max(n, 1), n + 7})


@pytest.mark.parametrize("bits", BITS_CHOICES)
@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.parametrize("n", [0, 1, 40, 1500])
@pytest.mark.parametrize(
    ("scan", "tie_margin"), [("faiss", 1), ("faiss", 128), pytest.param("numba", 128, marks=needs_numba)]
)
@pytest.mark.parametrize("id_order", ["ascending", "shuffled"])  # band fetch: prefix scan / range search
def test_faiss_search_matches_reference(
    ref: SimpleNamespace,
    rng: np.random.Generator,
    bits: int,
    kind: str,
    n: int,
    scan: str,
    tie_margin: int,
    id_order: str,
) -> None:
    codes = ref.make_codes(kind, rng, n, bits)
    ids = rng.choice(10 * n + 10, size=n, replace=False).astype(np.int64)
    if id_order == "ascending":
        ids.sort()
    index = FaissFlatIndex(bits, tie_margin=tie_margin, max_tie_margin=tie_margin, scan=scan)
    assert index.scan == scan
    index.add(ids, codes)
    assert index._rows_in_id_order == (id_order == "ascending" or n < 2)
    assert index.ntotal == n
    queries = np.concatenate([codes[:6], ref.make_codes(kind, rng, 6, bits)])
    for k in _ks(n):
        expected = ref.search(queries, codes, ids, k)
        ref.assert_same(index.search(queries, k), expected)
        ref.assert_same(brute_force_search(queries, codes, ids, k), expected)
    if kind == "clustered" and n == 1500 and tie_margin == 1:
        assert index.band_fallbacks > 0  # the range-search path was exercised
    if scan == "numba":
        assert index.band_fallbacks == 0  # the kernel is exact by itself


@pytest.mark.parametrize("scan", SCANS)
def test_duplicate_codes_smallest_ids_win(ref: SimpleNamespace, scan: str) -> None:
    """200 identical codes: the k-th distance band overflows; the k smallest ids must be returned."""
    codes = np.zeros((200, 8), dtype=np.uint8)
    ids = np.arange(1000, 800, -1, dtype=np.int64)  # inserted in descending id order
    index = FaissFlatIndex(64, tie_margin=4, max_tie_margin=4, scan=scan)
    index.add(ids, codes)
    d, i = index.search(codes[:1], 5)
    assert d.tolist() == [[0] * 5]
    assert i.tolist() == [[801, 802, 803, 804, 805]]


@pytest.mark.parametrize("scan", SCANS)
def test_sixteen_bit_codes_are_padded_without_changing_distances(ref: SimpleNamespace, rng, scan: str) -> None:
    codes = ref.random_codes(rng, 300, 16)
    index = FaissFlatIndex(16, scan=scan)
    index.add(np.arange(300), codes)
    assert index.faiss_bytes == FAISS_CODE_BYTES[16] == 4
    np.testing.assert_array_equal(index.codes(), codes)
    ref.assert_same(index.search(codes[:5], 300), ref.search(codes[:5], codes, np.arange(300), 300))


@pytest.mark.parametrize("bits", BITS_CHOICES)  # 16 bits: the kernel's compact copy must follow changes
@pytest.mark.parametrize("scan", SCANS)
def test_remove_and_readd(ref: SimpleNamespace, rng: np.random.Generator, bits: int, scan: str) -> None:
    codes = ref.clustered_codes(rng, 500, bits)
    ids = np.arange(1, 501, dtype=np.int64)
    index = FaissFlatIndex(bits, tie_margin=2, max_tie_margin=2, scan=scan)
    index.add(ids, codes)
    gone = ids[::3]
    assert index.remove(np.append(gone, 10_000)) == len(gone)
    assert index._rows_in_id_order  # removal keeps the order
    keep = np.setdiff1d(ids, gone)
    ref.assert_same(index.search(codes[:8], 20), ref.search(codes[:8], codes[keep - 1], keep, 20))
    index.add(gone, codes[gone - 1])  # re-added ids land after larger ones
    assert not index._rows_in_id_order
    ref.assert_same(index.search(codes[:8], 20), ref.search(codes[:8], codes, ids, 20))
    assert sorted(index.ids().tolist()) == ids.tolist()


def test_serialize_roundtrip(ref: SimpleNamespace, rng: np.random.Generator) -> None:
    codes = ref.random_codes(rng, 100, 64)
    index = FaissFlatIndex(64, scan="faiss")
    index.add(np.arange(100, 200), codes)
    copy = FaissFlatIndex.deserialize(64, index.serialize())  # the scan is not stored: "auto"
    ref.assert_same(copy.search(codes[:4], 7), index.search(codes[:4], 7))
    with pytest.raises(ValueError):
        FaissFlatIndex.deserialize(64, b"garbage" * 10)
    with pytest.raises(ValueError):
        FaissFlatIndex.deserialize(32, index.serialize())  # wrong code length


def test_search_validates_input() -> None:
    index = FaissFlatIndex(32)
    with pytest.raises(ValueError):
        index.search(np.zeros((1, 8), dtype=np.uint8), 1)
    with pytest.raises(ValueError):
        index.search(np.zeros((1, 4), dtype=np.uint8), 0)
    d, i = index.search(np.zeros((2, 4), dtype=np.uint8), 3)  # empty index: all padding
    assert d.tolist() == i.tolist() == [[-1] * 3] * 2


def test_resolve_ties_with_adversarial_candidates() -> None:
    """Candidates keep the *largest* ids of the tie band; resolve_ties must fetch the band."""
    all_d = np.array([0, 1, 1, 1, 1, 1, 2])
    all_i = np.array([50, 10, 11, 12, 13, 14, 1])
    cand_d, cand_i = np.array([[0, 1, 1]]), np.array([[50, 14, 13]])  # 3 candidates for k=2

    def fetch(rows: np.ndarray, band_d: np.ndarray, need: np.ndarray) -> list[np.ndarray]:
        assert rows.tolist() == [0] and band_d.tolist() == [1] and need.tolist() == [1]
        return [all_i[all_d == band_d[0]][::-1]]  # any order, more than needed

    d, i, n = resolve_ties(cand_d, cand_i, 2, len(all_i), fetch)
    assert (d.tolist(), i.tolist(), n) == ([[0, 1]], [[50, 10]], 1)
    # when the band fits (last candidate strictly farther), no fetch happens
    d, i, n = resolve_ties(np.array([[2, 1, 0]]), np.array([[1, 10, 50]]), 2, 7, fetch)
    assert (d.tolist(), i.tolist(), n) == ([[0, 1]], [[50, 10]], 0)


def test_tie_margin_grows_when_bands_overflow(ref: SimpleNamespace, rng: np.random.Generator) -> None:
    codes = np.repeat(ref.random_codes(rng, 2, 32), 100, axis=0)  # two codes, 100 copies each
    index = FaissFlatIndex(32, tie_margin=8, max_tie_margin=64, scan="faiss")
    index.add(np.arange(200), codes)
    for _ in range(5):
        ref.assert_same(index.search(codes[:1], 3), ref.search(codes[:1], codes, np.arange(200), 3))
    assert index.tie_margin == 64


@pytest.mark.parametrize("scan", SCANS)
def test_huge_ids(ref: SimpleNamespace, rng: np.random.Generator, scan: str) -> None:
    """Ids beyond the packed sort key (>= 2**47) take the two-key sort."""
    codes = ref.clustered_codes(rng, 300, 64)
    ids = (1 << 60) + rng.choice(10_000, size=300, replace=False).astype(np.int64)
    index = FaissFlatIndex(64, tie_margin=2, max_tie_margin=2, scan=scan)
    index.add(ids, codes)
    for k in (1, 10, 300):
        ref.assert_same(index.search(codes[:6], k), ref.search(codes[:6], codes, ids, k))
