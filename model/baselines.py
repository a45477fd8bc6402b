"""Unsupervised hashing baselines on continuous features: LSH, PCA-sign and ITQ (pure numpy).

Every hasher follows one interface::

    hasher = ITQHasher(bits=64, seed=0).fit(X_train)   # X_train float [n, d]
    codes = hasher.encode(X)                           # uint8 [N, ceil(bits / 8)]

Codes follow the project's one sign rule, :func:`index.codes.pack_sign_bits`: bit 1 where the
projected value is non-negative, zero padding up to a whole byte.

Cross-modal use: these hashers have no notion of modality. For image <-> point-cloud retrieval the
two modalities' features must live in one space of the same dimension ``d`` (e.g. the model's
continuous embeddings before the hash layer); fit one hasher on the concatenation of both modalities'
*training* features (:func:`fit_cross_modal`) and encode each modality with it, so that both sides
share the mean, the projection and the rotation.

``bits > d`` raises ``ValueError`` for every hasher (PCA / ITQ cannot produce more than ``d``
components; LSH follows the same rule so that the three baselines are comparable).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from index.codes import pack_sign_bits

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "Hasher",
    "ITQHasher",
    "LSHHasher",
    "PCASignHasher",
    "fit_cross_modal",
    "make_hasher",
]


class Hasher(Protocol):
    """What every baseline provides."""

    bits: int

    def fit(self, x: np.ndarray) -> Hasher: ...

    def encode(self, x: np.ndarray) -> np.ndarray: ...


def _as_features(x: np.ndarray, what: str = "features") -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array [n, d], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contain NaN or inf")
    return arr


def _check_bits(bits: int) -> int:
    bits = int(bits)
    if bits < 1:
        raise ValueError(f"bits must be >= 1, got {bits}")
    return bits


def _check_fit_input(x: np.ndarray, bits: int, name: str, min_rows: int = 1) -> np.ndarray:
    arr = _as_features(x, "training features")
    n, d = arr.shape
    if n < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} training rows, got {n}")
    if bits > d:
        raise ValueError(f"{name}: bits={bits} exceeds the feature dimension d={d}; use bits <= d")
    return arr


def _pca(xc: np.ndarray, bits: int) -> np.ndarray:
    """Top-``bits`` principal directions of centred data xc [n, d] -> float64 [d, bits].

    Columns are sorted by decreasing variance; each column's sign is fixed so that its entry of
    largest magnitude is positive (eigenvectors are only defined up to sign).
    """
    cov = xc.T @ xc / max(xc.shape[0] - 1, 1)  # [d, d]
    evals, evecs = np.linalg.eigh(cov)  # ascending
    top = evecs[:, np.argsort(evals)[::-1][:bits]]
    flip = np.sign(top[np.argmax(np.abs(top), axis=0), np.arange(bits)])
    return top * np.where(flip == 0, 1.0, flip)


class _Fitted:
    """Shared state checks."""

    mean_: np.ndarray | None = None

    def _encode_input(self, x: np.ndarray) -> np.ndarray:
        if self.mean_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call .fit(X) first")
        arr = _as_features(x)
        if arr.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"expected features of dimension {self.mean_.shape[0]}, got {arr.shape[1]}")
        return arr - self.mean_


class LSHHasher(_Fitted):
    """Random-hyperplane LSH: ``sign((x - mean) @ W)``, W float [d, bits] ~ N(0, 1) from ``seed``."""

    def __init__(self, bits: int, seed: int = 0) -> None:
        self.bits = _check_bits(bits)
        self.seed = int(seed)
        self.projection_: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> LSHHasher:
        """x float [n, d] -> self (stores the training mean [d] and the hyperplanes [d, bits])."""
        arr = _check_fit_input(x, self.bits, "LSHHasher")
        self.mean_ = arr.mean(axis=0)
        rng = np.random.default_rng(self.seed)
        self.projection_ = rng.standard_normal((arr.shape[1], self.bits))
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        """x float [N, d] -> uint8 [N, ceil(bits / 8)] packed codes."""
        xc = self._encode_input(x)
        return pack_sign_bits(xc @ self.projection_)


class PCASignHasher(_Fitted):
    """PCA hashing: centre, project on the top-``bits`` principal components, take the sign."""

    def __init__(self, bits: int) -> None:
        self.bits = _check_bits(bits)
        self.projection_: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> PCASignHasher:
        """x float [n, d] (n >= 2) -> self (mean [d], components [d, bits])."""
        arr = _check_fit_input(x, self.bits, "PCASignHasher", min_rows=2)
        self.mean_ = arr.mean(axis=0)
        self.projection_ = _pca(arr - self.mean_, self.bits)
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        """x float [N, d] -> uint8 [N, ceil(bits / 8)] packed codes."""
        return pack_sign_bits(self._encode_input(x) @ self.projection_)


class ITQHasher(_Fitted):
    """Iterative quantisation (Gong & Lazebnik, CVPR 2011).

    Fit: centre, PCA to ``bits`` dimensions (V float [n, bits]), start from a random orthogonal
    rotation R (``seed``), then alternate ``n_iter`` times

    * ``B = sign(V R)`` (entries in {-1, +1}; 0 maps to +1),
    * ``R = S_hat S^T`` where ``B^T V = S Omega S_hat^T`` (orthogonal Procrustes),

    each step not increasing the quantisation loss ``||B - V R||_F^2``. ``quantization_loss_`` holds
    that loss divided by n, float [n_iter + 1]: entry t is measured with the rotation after t updates
    (entry 0 = the random start), so it is non-increasing.
    Encode: ``sign((x - mean) @ W_pca @ R)``.
    """

    def __init__(self, bits: int, n_iter: int = 50, seed: int = 0) -> None:
        self.bits = _check_bits(bits)
        if int(n_iter) < 0:
            raise ValueError(f"n_iter must be >= 0, got {n_iter}")
        self.n_iter = int(n_iter)
        self.seed = int(seed)
        self.projection_: np.ndarray | None = None
        self.rotation_: np.ndarray | None = None
        self.quantization_loss_: np.ndarray = np.zeros(0)

    def fit(self, x: np.ndarray) -> ITQHasher:
        """x float [n, d] (n >= 2) -> self (mean [d], PCA [d, bits], rotation [bits, bits], losses)."""
        arr = _check_fit_input(x, self.bits, "ITQHasher", min_rows=2)
        self.mean_ = arr.mean(axis=0)
        xc = arr - self.mean_
        pca = _pca(xc, self.bits)
        v = xc @ pca  # [n, bits]
        rng = np.random.default_rng(self.seed)
        r, _ = np.linalg.qr(rng.standard_normal((self.bits, self.bits)))
        losses = []
        n = v.shape[0]
        for _ in range(self.n_iter):
            vr = v @ r
            b = np.where(vr >= 0, 1.0, -1.0)
            losses.append(float(np.sum((b - vr) ** 2)) / n)
            s, _, s_hat_t = np.linalg.svd(b.T @ v)  # B^T V = S Omega S_hat^T
            r = s_hat_t.T @ s.T
        vr = v @ r
        losses.append(float(np.sum((np.where(vr >= 0, 1.0, -1.0) - vr) ** 2)) / n)
        self.projection_ = pca
        self.rotation_ = r
        self.quantization_loss_ = np.asarray(losses)
        logger.debug("ITQ bits=%d: quantisation loss %.4f -> %.4f", self.bits, losses[0], losses[-1])
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        """x float [N, d] -> uint8 [N, ceil(bits / 8)] packed codes."""
        return pack_sign_bits(self._encode_input(x) @ self.projection_ @ self.rotation_)


#: Name -> hasher class, for scripts and configs.
BASELINES: dict[str, type] = {"lsh": LSHHasher, "pca": PCASignHasher, "itq": ITQHasher}


def make_hasher(name: str, bits: int, seed: int = 0) -> Hasher:
    """Build an unfitted baseline by name (``"lsh"``, ``"pca"`` or ``"itq"``)."""
    key = name.lower()
    if key == "lsh":
        return LSHHasher(bits, seed=seed)
    if key == "pca":
        return PCASignHasher(bits)
    if key == "itq":
        return ITQHasher(bits, seed=seed)
    raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")


def fit_cross_modal(hasher: Hasher, features: Sequence[np.ndarray]) -> Hasher:
    """Fit ``hasher`` on the row-wise concatenation of several modalities' training features.

    Args:
        hasher: an unfitted baseline.
        features: e.g. ``[image_train float [n1, d], points_train float [n2, d]]`` (same d).

    Returns:
        the fitted hasher; encode each modality with it.
    """
    arrays = [_as_features(f, "modality features") for f in features]
    if not arrays:
        raise ValueError("no feature arrays given")
    dims = {a.shape[1] for a in arrays}
    if len(dims) != 1:
        raise ValueError(f"all modalities must share the feature dimension, got {sorted(dims)}")
    return hasher.fit(np.concatenate(arrays, axis=0))
