"""Fixtures of the index tests: an independent brute-force reference, data generators, stores."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

# tests/conftest.py puts tests/ on sys.path, where the folder tests/index would be picked up as a
# namespace package "index" before the editable install's finder runs. Searching the repository root
# first makes the real package win (a pyproject `pythonpath = ["."]` would do the same).
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
if getattr(sys.modules.get("index"), "__file__", "") is None:  # a namespace package got there first
    del sys.modules["index"]

from index import HashStore  # noqa: E402

HAS_MILVUS = importlib.util.find_spec("pymilvus") is not None and importlib.util.find_spec("milvus_lite") is not None

BACKENDS = [
    "faiss",
    pytest.param(
        "milvus",
        marks=pytest.mark.skipif(not HAS_MILVUS, reason="pymilvus / milvus-lite not installed (extra 'milvus')"),
    ),
]


def reference_search(
    query_codes: np.ndarray, db_codes: np.ndarray, db_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Brute force written independently of the package: unpacked bits, lexsort by (distance, id)."""
    q_bits = np.unpackbits(np.atleast_2d(query_codes), axis=1)
    out_d = np.full((len(q_bits), k), -1, dtype=np.int32)
    out_i = np.full((len(q_bits), k), -1, dtype=np.int64)
    if len(db_ids) == 0:
        return out_d, out_i
    db_bits = np.unpackbits(db_codes, axis=1)
    for r, qb in enumerate(q_bits):
        dist = (db_bits != qb).sum(axis=1)
        order = np.lexsort((np.asarray(db_ids), dist))[:k]  # primary key: distance, then id
        out_d[r, : len(order)] = dist[order]
        out_i[r, : len(order)] = np.asarray(db_ids)[order]
    return out_d, out_i


def random_codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """Uniformly random codes."""
    return rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)


def clustered_codes(rng: np.random.Generator, n: int, bits: int, centers: int = 4, flip: float = 0.04) -> np.ndarray:
    """Codes around a few centres with rare bit flips: many exact duplicates and distance ties."""
    c = random_codes(rng, centers, bits)
    bits_on = np.unpackbits(c[rng.integers(0, centers, size=n)], axis=1)
    flips = rng.random(bits_on.shape) < flip
    return np.packbits(bits_on ^ flips, axis=1)


def make_codes(kind: str, rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """``kind`` is ``"random"`` or ``"clustered"``."""
    return random_codes(rng, n, bits) if kind == "random" else clustered_codes(rng, n, bits)


def assert_same(actual: tuple[np.ndarray, np.ndarray], expected: tuple[np.ndarray, np.ndarray]) -> None:
    """Distances and ids equal, with dtypes int32 / int64."""
    d, i = actual
    assert d.dtype == np.int32 and i.dtype == np.int64
    np.testing.assert_array_equal(d, expected[0])
    np.testing.assert_array_equal(i, expected[1])


@pytest.fixture
def ref() -> SimpleNamespace:
    """Reference search, data generators and the comparison helper."""
    return SimpleNamespace(
        search=reference_search,
        random_codes=random_codes,
        clustered_codes=clustered_codes,
        make_codes=make_codes,
        assert_same=assert_same,
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def open_store(tmp_path: Path, backend: str) -> Iterator[Callable[..., HashStore]]:
    """``open_store(path=None, **kwargs)`` opens a store of the parametrised backend; closed at the end."""
    opened: list[HashStore] = []

    def _open(path: Path | None = None, **kwargs: object) -> HashStore:
        store = HashStore(path or tmp_path / "store", backend, **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()
