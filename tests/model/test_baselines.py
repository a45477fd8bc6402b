"""Hashing baselines: code format, determinism, ITQ convergence, retrieval quality on clustered data."""

from __future__ import annotations

import numpy as np
import pytest

from model.baselines import ITQHasher, LSHHasher, PCASignHasher, fit_cross_modal, make_hasher
from model.metrics import map_at_k

HASHERS = ["lsh", "pca", "itq"]


def clustered(
    n_per: int, n_classes: int = 8, d: int = 48, seed: int = 0, spread: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """float [n_per * n_classes, d] Gaussian blobs around well separated random centres, labels [N]."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, d)) * 3.0 + 5.0  # offset: centring must matter
    labels = np.repeat(np.arange(n_classes), n_per)
    x = centres[labels] + spread * rng.standard_normal((labels.size, d))
    return x, labels


@pytest.mark.parametrize("name", HASHERS)
@pytest.mark.parametrize("bits", [8, 16, 32, 12])
def test_codes_shape_and_dtype(name: str, bits: int) -> None:
    x, _ = clustered(20)
    codes = make_hasher(name, bits, seed=1).fit(x).encode(x[:17])
    assert codes.dtype == np.uint8
    assert codes.shape == (17, (bits + 7) // 8)
    if bits % 8:  # packbits pads with zero bits
        assert not np.any(np.unpackbits(codes, axis=1)[:, bits:])


@pytest.mark.parametrize("name", HASHERS)
def test_deterministic_given_seed(name: str) -> None:
    x, _ = clustered(20)
    a = make_hasher(name, 32, seed=3).fit(x).encode(x)
    b = make_hasher(name, 32, seed=3).fit(x).encode(x)
    np.testing.assert_array_equal(a, b)


def test_lsh_seed_changes_hyperplanes() -> None:
    x, _ = clustered(20)
    a = LSHHasher(32, seed=0).fit(x).encode(x)
    b = LSHHasher(32, seed=1).fit(x).encode(x)
    assert not np.array_equal(a, b)


def test_itq_quantisation_loss_non_increasing() -> None:
    x, _ = clustered(40, seed=2)
    h = ITQHasher(16, n_iter=30, seed=0).fit(x)
    loss = h.quantization_loss_
    assert loss.shape == (31,)
    assert np.all(np.diff(loss) <= 1e-9 * loss[0])
    assert loss[-1] < loss[0]
    r = h.rotation_
    np.testing.assert_allclose(r @ r.T, np.eye(16), atol=1e-10)  # stays a rotation


def test_pca_sign_uses_top_components() -> None:
    # variance concentrated on 2 axes: the first two PCA bits split along them
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 6)) * np.array([10.0, 5.0, 0.1, 0.1, 0.1, 0.1])
    h = PCASignHasher(2).fit(x)
    np.testing.assert_allclose(np.abs(h.projection_[:2]), np.eye(2), atol=0.05)


@pytest.mark.parametrize("name", HASHERS)
def test_map_well_above_random_on_clusters(name: str) -> None:
    x_train, _ = clustered(60, seed=0)
    x_test, labels = clustered(30, seed=0)  # same centres (same seed), fresh noise draws below
    x_test = x_test + 0.3 * np.random.default_rng(7).standard_normal(x_test.shape)
    h = make_hasher(name, 32, seed=0).fit(x_train)
    codes = h.encode(x_test)
    q = np.arange(labels.size) % 3 == 0  # every third item is a query: all classes on both sides
    score = map_at_k(codes[q], codes[~q], labels[q], labels[~q], 50)
    chance = 1 / 8
    assert score > 0.6, f"{name}: mAP@50 {score:.3f} (chance ~{chance:.3f})"


def test_fit_cross_modal_concatenates_modalities() -> None:
    x, _ = clustered(20)
    img, pts = x[::2], x[1::2]
    h = fit_cross_modal(ITQHasher(16, seed=0), [img, pts])
    np.testing.assert_allclose(h.mean_, np.concatenate([img, pts]).mean(axis=0))
    assert h.encode(img).shape == (img.shape[0], 2) and h.encode(pts).shape == (pts.shape[0], 2)
    with pytest.raises(ValueError, match="feature dimension"):
        fit_cross_modal(LSHHasher(8), [img, pts[:, :10]])


@pytest.mark.parametrize("name", HASHERS)
def test_bits_above_dimension_raises(name: str) -> None:
    x = np.random.default_rng(0).standard_normal((50, 8))
    with pytest.raises(ValueError, match=r"bits=16 exceeds the feature dimension d=8"):
        make_hasher(name, 16).fit(x)


def test_misuse_errors() -> None:
    x = np.random.default_rng(0).standard_normal((20, 16))
    with pytest.raises(RuntimeError, match="not fitted"):
        ITQHasher(8).encode(x)
    with pytest.raises(ValueError, match="dimension"):
        LSHHasher(8).fit(x).encode(x[:, :4])
    with pytest.raises(ValueError, match="unknown baseline"):
        make_hasher("sh", 8)
    with pytest.raises(ValueError, match="bits must be"):
        PCASignHasher(0)
