"""index.codes: packing, unpacking, distances, hex."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from index import codes as codes_mod
from index.codes import (
    BITS_CHOICES,
    as_codes,
    code_words,
    codes_to_hex,
    hamming_distances,
    hamming_words,
    hex_to_codes,
    pack_sign_bits,
    pack_signs,
    unpack_codes,
    unpack_sign_bits,
)

REPO = Path(__file__).resolve().parents[2]

bits_st = st.sampled_from(BITS_CHOICES)


def test_pack_signs_bit_order_and_zero() -> None:
    x = np.full((1, 16), -1.0)
    x[0, 0] = 2.0  # most significant bit of byte 0
    x[0, 15] = 0.5  # least significant bit of byte 1
    x[0, 7] = 0.0  # zero counts as non-negative: bit 1, as the encoder has always packed it
    np.testing.assert_array_equal(pack_signs(x), [[0b1000_0001, 0b0000_0001]])
    assert pack_signs(np.zeros(32)).tolist() == [[255, 255, 255, 255]]
    assert pack_signs(-np.ones(32)).tolist() == [[0, 0, 0, 0]]
    assert pack_signs(np.ones((2, 64), dtype=np.int64)).shape == (2, 8)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 8)), np.zeros((2, 3, 16)), np.zeros((1, 16), dtype=complex), np.full((1, 32), np.nan)],
)
def test_pack_signs_rejects(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        pack_signs(bad)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), bits=bits_st)
def test_pack_unpack_roundtrip(data: st.DataObject, bits: int) -> None:
    n = data.draw(st.integers(1, 6))
    x = data.draw(arrays(np.float32, (n, bits), elements=st.floats(-4, 4, width=32)))
    packed = pack_signs(x)
    assert packed.dtype == np.uint8 and packed.shape == (n, bits // 8)
    signs = unpack_codes(packed, bits)
    assert signs.dtype == np.int8
    np.testing.assert_array_equal(signs, np.where(x >= 0, 1, -1))
    np.testing.assert_array_equal(pack_signs(signs), packed)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), bits=bits_st)
def test_hex_roundtrip(data: st.DataObject, bits: int) -> None:
    n = data.draw(st.integers(0, 5))
    codes = data.draw(arrays(np.uint8, (n, bits // 8)))
    hexes = codes_to_hex(codes)
    assert all(len(h) == bits // 4 and h == h.lower() for h in hexes)
    np.testing.assert_array_equal(hex_to_codes(hexes, bits), codes)
    if n:
        np.testing.assert_array_equal(hex_to_codes([h.upper() for h in hexes]), codes)


def test_hex_format_and_errors() -> None:
    assert codes_to_hex(np.array([[0xAB, 0x01]], dtype=np.uint8)) == ["ab01"]
    np.testing.assert_array_equal(hex_to_codes("ab01"), [[0xAB, 0x01]])
    for bad in (["abc"], ["zz01"], ["ab01", "ab01cd02"], ["ab"], [1234]):
        with pytest.raises(ValueError):
            hex_to_codes(bad)
    with pytest.raises(ValueError):
        hex_to_codes("ab01", bits=32)
    with pytest.raises(ValueError):
        hex_to_codes([])


@pytest.mark.parametrize("bits", BITS_CHOICES)
@pytest.mark.parametrize("table", [False, True], ids=["bitwise_count", "table"])
def test_hamming_distances(bits: int, table: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if table:
        monkeypatch.setattr(codes_mod, "_HAS_BITWISE_COUNT", False)
    rng = np.random.default_rng(bits)
    q = rng.integers(0, 256, (7, bits // 8), dtype=np.uint8)
    db = rng.integers(0, 256, (50, bits // 8), dtype=np.uint8)
    expected = (np.unpackbits(q, axis=1)[:, None, :] != np.unpackbits(db, axis=1)[None, :, :]).sum(-1)
    got = hamming_distances(q, db)
    assert got.dtype == np.int32 and got.shape == (7, 50)
    np.testing.assert_array_equal(got, expected)
    # the unpacked form agrees: d = (bits - <a, b>) / 2
    dots = unpack_codes(q, bits).astype(np.int32) @ unpack_codes(db, bits).astype(np.int32).T
    np.testing.assert_array_equal(got, (bits - dots) // 2)


def test_popcount_table() -> None:
    assert codes_mod.POPCOUNT_TABLE.tolist() == [bin(i).count("1") for i in range(256)]


@pytest.mark.parametrize(
    ("value", "bits"),
    [
        (np.zeros((2, 4), dtype=np.float32), 32),  # unpacked / float codes
        (np.zeros((2, 3), dtype=np.uint8), None),  # 24 bits
        (np.zeros((2, 4), dtype=np.uint8), 64),  # wrong width for bits
        (np.zeros((2, 2, 2), dtype=np.uint8), 16),
        ([[1, 2]], 16),  # not an array
    ],
)
def test_as_codes_rejects(value: object, bits: int | None) -> None:
    with pytest.raises(ValueError):
        as_codes(value, bits)


def test_as_codes_accepts_single_code_and_bytes() -> None:
    assert as_codes(np.arange(8, dtype=np.uint8), 64).shape == (1, 8)
    assert as_codes(b"\x01\x02", 16).tolist() == [[1, 2]]
    with pytest.raises(ValueError):
        as_codes(np.zeros(4, dtype=np.uint8), 7)


@pytest.mark.parametrize("n_bits", [1, 7, 12, 24, 40, 72, 130])
@pytest.mark.parametrize("table", [False, True], ids=["bitwise_count", "table"])
def test_low_level_functions_take_any_length(n_bits: int, table: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the baselines and the metrics use: any number of bits, the last byte padded with zeros."""
    if table:
        monkeypatch.setattr(codes_mod, "_HAS_BITWISE_COUNT", False)
    rng = np.random.default_rng(n_bits)
    x = rng.standard_normal((9, n_bits))
    x[0, 0] = 0.0
    packed = pack_sign_bits(x)
    assert packed.shape == (9, -(-n_bits // 8)) and packed[0, 0] >> 7 == 1
    assert not np.unpackbits(packed, axis=1)[:, n_bits:].any()
    np.testing.assert_array_equal(unpack_sign_bits(packed, n_bits), np.where(x >= 0, 1, -1))
    signs = x >= 0
    expected = (signs[:4, None, :] != signs[None, :, :]).sum(-1)
    np.testing.assert_array_equal(hamming_words(code_words(packed[:4]), code_words(packed)), expected)


def test_packbits_has_one_home() -> None:
    """Sign bits are packed in index/codes.py only, so every code in the project follows one rule."""
    callers = sorted(
        str(path.relative_to(REPO))
        for package in ("model", "index", "service")
        for path in (REPO / package).rglob("*.py")
        if re.search(r"\bnp\.packbits\(", path.read_text())
    )
    assert callers == ["index/codes.py"]
