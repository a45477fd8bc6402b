"""DJSRH baseline: code format, determinism, input checks, and cross-modal retrieval on paired clusters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.djsrh import DJSRHConfig, DJSRHHasher, joint_affinity
from model.metrics import map_at_k

FAST = DJSRHConfig(epochs=15, batch_size=64, hidden=64)


def paired_clusters(n_per: int, n_classes: int = 6, noise_seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two 'modalities' of the same objects: different dimensions and unrelated cluster centres (fixed);
    ``noise_seed`` draws a new sample around the same centres."""
    centres = np.random.default_rng(1234)
    ci = centres.standard_normal((n_classes, 40)) * 2.0 + 3.0
    cp = centres.standard_normal((n_classes, 24)) * 2.0 - 1.0
    rng = np.random.default_rng(noise_seed)
    labels = np.repeat(np.arange(n_classes), n_per)
    fi = ci[labels] + 0.7 * rng.standard_normal((labels.size, 40))
    fp = cp[labels] + 0.7 * rng.standard_normal((labels.size, 24))
    return fi, fp, labels


def test_joint_affinity_matches_formula() -> None:
    g = torch.Generator().manual_seed(0)
    fi = torch.nn.functional.normalize(torch.randn(5, 7, generator=g), dim=1)
    fp = torch.nn.functional.normalize(torch.randn(5, 3, generator=g), dim=1)
    s = 0.6 * (fi @ fi.T) + 0.4 * (fp @ fp.T)
    want = 0.6 * s + 0.4 * (s @ s.T) / 5
    torch.testing.assert_close(joint_affinity(fi, fp, beta=0.6, eta=0.4), want)


@pytest.mark.parametrize("bits", [16, 12])
def test_code_shape_and_determinism(bits: int) -> None:
    fi, fp, _ = paired_clusters(10)
    a = DJSRHHasher(bits, FAST, seed=1).fit(fi, fp)
    b = DJSRHHasher(bits, FAST, seed=1).fit(fi, fp)
    for mod, x in (("image", fi), ("points", fp)):
        ca = a.encode(mod, x)
        assert ca.dtype == np.uint8 and ca.shape == (len(x), (bits + 7) // 8)
        np.testing.assert_array_equal(ca, b.encode(mod, x))
    assert a.loss_history[-1] < a.loss_history[0]


def test_cross_modal_retrieval_beats_chance_by_far() -> None:
    fi, fp, labels = paired_clusters(30)
    h = DJSRHHasher(32, FAST, seed=0).fit(fi, fp)
    qi, qp, ql = paired_clusters(8, noise_seed=1)   # unseen objects of the same classes
    i2p = map_at_k(h.encode("image", qi), h.encode("points", fp), ql, labels, 50)
    p2i = map_at_k(h.encode("points", qp), h.encode("image", fi), ql, labels, 50)
    assert i2p > 0.8 and p2i > 0.8, (i2p, p2i)  # chance: ~1/6


def test_input_errors() -> None:
    fi, fp, _ = paired_clusters(5)
    with pytest.raises(ValueError, match="paired rows"):
        DJSRHHasher(16, FAST).fit(fi, fp[:-1])
    with pytest.raises(ValueError, match="finite"):
        bad = fi.copy()
        bad[0, 0] = np.nan
        DJSRHHasher(16, FAST).fit(bad, fp)
    with pytest.raises(RuntimeError, match="fit"):
        DJSRHHasher(16, FAST).encode("image", fi)
    h = DJSRHHasher(16, FAST).fit(fi, fp)
    with pytest.raises(ValueError, match="dimension"):
        h.encode("image", fp)
