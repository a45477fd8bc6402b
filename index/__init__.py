"""Binary hash-code storage and exact Hamming search (no models, no HTTP: numpy in, numpy out).

Public entry points:

* :mod:`index.codes` -- packing real vectors into codes, Hamming distances, hex round trips;
* :class:`index.store.HashStore` -- the durable store (SQLite metadata + FAISS snapshots);
* :func:`index.exact.brute_force_search` -- the numpy reference search.

Search results are exact and deterministic: rows are ordered by ascending Hamming distance and,
among equal distances, by ascending item id (see :mod:`index.exact`).
"""

from index.codes import (
    BITS_CHOICES,
    code_bytes,
    codes_to_hex,
    hamming_distances,
    hex_to_codes,
    pack_signs,
    unpack_codes,
)
from index.errors import IndexStoreError, StoreClosedError, StoreCorruptError, StoreLockedError
from index.exact import brute_force_search
from index.records import MODALITIES, ItemRecord

__all__ = [
    "BITS_CHOICES",
    "MODALITIES",
    "HashStore",
    "IndexStoreError",
    "ItemRecord",
    "StoreClosedError",
    "StoreCorruptError",
    "StoreLockedError",
    "brute_force_search",
    "code_bytes",
    "codes_to_hex",
    "hamming_distances",
    "hex_to_codes",
    "pack_signs",
    "unpack_codes",
]


def __getattr__(name: str):
    """``HashStore`` on first use: it needs FAISS, which ``index.codes`` and ``index.exact`` do not (the GPU
    machine has no FAISS, and model/ imports index.codes)."""
    if name == "HashStore":
        from index.store import HashStore

        return HashStore
    raise AttributeError(f"module 'index' has no attribute {name!r}")
