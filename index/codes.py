"""Binary hash codes, the one home of their bit-level rules: packing sign bits, unpacking, popcount,
Hamming distances and hex round trips. :mod:`model` (the encoder, the metrics, the baselines) packs and
compares codes through this module; nothing here imports :mod:`model`.

A code is the sign pattern of a real vector, packed with :func:`numpy.packbits`. The sign rule
(:func:`pack_sign_bits`, used everywhere): bit 1 means *non-negative* (``x >= 0``, so zero gives bit
1), bit 0 means negative. Bits are stored big-endian inside each byte (the first vector component is
the most significant bit of byte 0), so a batch of ``N`` codes is a C-contiguous ``uint8`` array of
shape ``[N, ceil(bits / 8)]``, the last byte padded with zero bits. The service's codes have ``bits``
in :data:`BITS_CHOICES` (:func:`pack_signs` checks it and rejects NaN); the low-level functions
(:func:`pack_sign_bits`, :func:`unpack_sign_bits`, :func:`code_words`, :func:`hamming_words`) take any
length, as the baselines and the metrics need.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

BITS_CHOICES: tuple[int, ...] = (16, 32, 64)

#: popcount of every byte value, the portable fallback when ``np.bitwise_count`` is missing (numpy < 2).
POPCOUNT_TABLE: np.ndarray = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(np.uint8)

_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")
#: unsigned word type of a code of 2, 4 or 8 bytes (one word per code: xor + popcount per item)
WORD_DTYPES = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def check_bits(bits: int) -> int:
    """Return ``bits`` as an int if it is a supported code length, else raise ``ValueError``."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or int(bits) not in BITS_CHOICES:
        raise ValueError(f"bits must be one of {BITS_CHOICES}, got {bits!r}")
    return int(bits)


def code_bytes(bits: int) -> int:
    """Bytes per packed code of ``bits`` bits (``bits // 8``)."""
    return check_bits(bits) // 8


def as_codes(codes: object, bits: int | None = None, *, name: str = "codes") -> np.ndarray:
    """Validate a batch of packed codes and return it as a C-contiguous ``uint8 [N, bits // 8]`` array.

    A single code (1-D array of ``bits // 8`` bytes, or a ``bytes`` object) is promoted to ``[1, B]``.
    With ``bits=None`` the length is inferred from the array width (2, 4 or 8 bytes).

    Raises:
        ValueError: wrong dtype (e.g. an unpacked float vector), wrong number of dimensions or width.
    """
    if isinstance(codes, bytes | bytearray | memoryview):
        arr = np.frombuffer(bytes(codes), dtype=np.uint8)[None, :]
    elif isinstance(codes, np.ndarray):
        arr = codes
    else:
        raise ValueError(f"{name} must be a numpy uint8 array (packed with pack_signs), got {type(codes)!r}")
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{name} must have dtype uint8 (packed codes, see index.codes.pack_signs), got dtype {arr.dtype}"
        )
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [N, bits/8], got shape {arr.shape}")
    if bits is None:
        if arr.shape[1] * 8 not in BITS_CHOICES:
            raise ValueError(f"{name} width {arr.shape[1]} bytes is not a supported code length {BITS_CHOICES} bits")
    else:
        nbytes = code_bytes(bits)
        if arr.shape[1] != nbytes:
            raise ValueError(f"{name} for {bits}-bit codes must have shape [N, {nbytes}], got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def pack_signs(x: np.ndarray) -> np.ndarray:
    """Pack the signs of real vectors into codes.

    Args:
        x: real array ``[N, bits]`` (or a single vector ``[bits]``), ``bits`` in :data:`BITS_CHOICES`.

    Returns:
        ``uint8 [N, bits // 8]``: bit 1 where ``x >= 0``, bit 0 where ``x < 0`` (:func:`pack_sign_bits`).

    Raises:
        ValueError: non-real dtype, unsupported length, or NaN values (whose sign is undefined).
    """
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"x must have shape [N, bits], got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"x must be a real array, got dtype {arr.dtype}")
    check_bits(arr.shape[1])
    if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
        raise ValueError("x contains NaN: the sign of NaN is undefined")
    return pack_sign_bits(arr)


def pack_sign_bits(x: np.ndarray) -> np.ndarray:
    """The sign rule of every code: real ``[N, n]`` -> ``uint8 [N, ceil(n / 8)]``, bit 1 where ``x >= 0``.

    No checks (any ``n``, NaN gives bit 0): the encoder, the baselines and :func:`pack_signs` call it on
    arrays they have already validated. This is the only place the project calls :func:`numpy.packbits`.
    """
    return np.packbits(np.asarray(x) >= 0, axis=1)


def unpack_sign_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_sign_bits`: ``uint8 [N, B]`` -> ``int8 [N, bits]`` of +1 (bit set) / -1."""
    signs = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1, count=int(bits)).astype(np.int8)
    return signs * 2 - 1


def unpack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unpack codes into ``int8 [N, bits]`` vectors of +1 (bit set) and -1 (bit clear)."""
    return unpack_sign_bits(as_codes(codes, bits), bits)


def code_words(codes: np.ndarray) -> np.ndarray:
    """``uint8 [N, B]`` codes as ``[N, W]`` unsigned words, for a word-wise XOR + popcount.

    A code of 2, 4 or 8 bytes is one word of that width (a view when the input is C-contiguous); any
    other width is zero-padded to whole ``uint64`` words (padding never changes a distance).
    """
    arr = np.ascontiguousarray(codes, dtype=np.uint8)
    n, nbytes = arr.shape
    dtype = WORD_DTYPES.get(nbytes)
    if dtype is not None:
        return arr.view(dtype)
    padded = np.zeros((n, max(1, -(-nbytes // 8)) * 8), dtype=np.uint8)
    padded[:, :nbytes] = arr
    return padded.view(np.uint64)


def popcount(x: np.ndarray) -> np.ndarray:
    """Number of set bits of every element of an unsigned integer array (``uint8`` result)."""
    if _HAS_BITWISE_COUNT:
        return np.bitwise_count(x)
    as_bytes = np.ascontiguousarray(x).view(np.uint8).reshape(*x.shape, x.dtype.itemsize)
    return POPCOUNT_TABLE[as_bytes].sum(axis=-1, dtype=np.uint8)


def hamming_words(query_words: np.ndarray, db_words: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances of codes in :func:`code_words` form (``[Q, W]`` and ``[N, W]``).

    Returns:
        ``int32 [Q, N]``, ``popcount(q XOR db)`` summed over the words.
    """
    out = np.zeros((query_words.shape[0], db_words.shape[0]), dtype=np.int32)
    for w in range(query_words.shape[1]):  # one word for codes of up to 64 bits
        out += popcount(query_words[:, w, None] ^ db_words[None, :, w])
    return out


def hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances between two batches of codes of the same length.

    Returns:
        ``int32 [Q, N]``.
    """
    q = as_codes(query_codes, name="query_codes")
    db = as_codes(db_codes, q.shape[1] * 8, name="db_codes")
    return hamming_words(code_words(q), code_words(db))


def codes_to_hex(codes: np.ndarray) -> list[str]:
    """Lower-case hex string (``bits // 4`` characters, most significant bit first) of every code."""
    arr = as_codes(codes)
    return [row.tobytes().hex() for row in arr]


def hex_to_codes(hexes: str | Iterable[str], bits: int | None = None) -> np.ndarray:
    """Inverse of :func:`codes_to_hex`: parse hex strings into ``uint8 [N, bits // 8]`` codes.

    Args:
        hexes: one hex string or an iterable of them (case-insensitive).
        bits: expected code length; inferred from the first string when ``None``.

    Raises:
        ValueError: invalid hex, mixed lengths, or a length that is not a supported code length.
    """
    items = [hexes] if isinstance(hexes, str) else list(hexes)
    if bits is None:
        if not items:
            raise ValueError("cannot infer bits from an empty list of hex codes; pass bits=")
        if not isinstance(items[0], str):
            raise ValueError(f"hex codes must be strings, got {type(items[0]).__name__}")
        bits = len(items[0]) * 4
    nbytes = code_bytes(bits)
    out = np.empty((len(items), nbytes), dtype=np.uint8)
    for i, text in enumerate(items):
        if not isinstance(text, str) or len(text) != nbytes * 2:
            raise ValueError(f"hex code #{i} must be a string of {nbytes * 2} hex digits, got {text!r}")
        try:
            out[i] = np.frombuffer(bytes.fromhex(text), dtype=np.uint8)
        except ValueError as exc:
            raise ValueError(f"hex code #{i} is not valid hex: {text!r}") from exc
    return out
