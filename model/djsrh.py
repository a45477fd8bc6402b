"""DJSRH-style unsupervised cross-modal hashing on frozen features (a published-method baseline).

Deep Joint-Semantics Reconstructing Hashing (Su, Zhong & Zhang, ICCV 2019), re-implemented on top of
continuous features of paired training data (here: the [CLS] features of our image and point encoders
for the same shapes). Unlike LSH / PCA / ITQ it needs no shared feature space: each modality gets its own
hash function and the two are tied together only through the joint similarity of the training pairs.

Per minibatch of ``m`` pairs (features L2-normalised):

* intra-modal cosine similarities ``S_I = F_I F_I^T`` and ``S_P = F_P F_P^T``;
* joint-semantics affinity ``S = beta S_I + (1 - beta) S_P``, refined with second-order neighbours
  ``S <- (1 - eta) S + eta S S^T / m``;
* hash outputs ``H = tanh(alpha * MLP(F))`` per modality, row-normalised to ``Hn``;
* loss ``||mu S - Hn_I Hn_P^T||^2 + lambda_i ||mu S - Hn_I Hn_I^T||^2 + lambda_p ||mu S - Hn_P Hn_P^T||^2``
  (mean over entries), i.e. the codes' cosine similarities reconstruct the scaled joint affinity.

``alpha`` grows during training so that ``tanh`` approaches ``sign`` (the continuation trick used for
such models). Codes: the sign bits packed by :func:`index.codes.pack_sign_bits`, as everywhere.
Defaults follow the paper's settings (``mu = 1.5``, ``eta = 0.4``, ``beta = 0.6``, ``lambda = 0.1``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from index.codes import pack_sign_bits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DJSRHConfig:
    hidden: int = 512
    mu: float = 1.5
    eta: float = 0.4
    beta: float = 0.6
    lambda_image: float = 0.1
    lambda_points: float = 0.1
    epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    alpha_start: float = 1.0
    alpha_end: float = 5.0


def _mlp(d_in: int, hidden: int, bits: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, bits))


def joint_affinity(fi: torch.Tensor, fp: torch.Tensor, beta: float, eta: float) -> torch.Tensor:
    """fi [m, di], fp [m, dp] (rows L2-normalised, paired) -> joint affinity [m, m]."""
    s = beta * (fi @ fi.T) + (1.0 - beta) * (fp @ fp.T)
    return (1.0 - eta) * s + eta * (s @ s.T) / s.shape[0]


class DJSRHHasher:
    """Two hash functions (image, points) learnt from paired features; ``fit`` then ``encode``."""

    def __init__(self, bits: int, cfg: DJSRHConfig = DJSRHConfig(), seed: int = 0) -> None:
        if int(bits) < 1:
            raise ValueError(f"bits must be >= 1, got {bits}")
        self.bits = int(bits)
        self.cfg = cfg
        self.seed = int(seed)
        self.nets: dict[str, nn.Module] = {}
        self.stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.loss_history: list[float] = []

    @staticmethod
    def _check(x: np.ndarray, what: str) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float32)
        if arr.ndim != 2 or not np.all(np.isfinite(arr)):
            raise ValueError(f"{what} must be a finite 2-D array [n, d], got shape {arr.shape}")
        return arr

    def _prep(self, modality: str, x: np.ndarray) -> torch.Tensor:
        """Standardise with the training statistics, then L2-normalise rows."""
        mean, std = self.stats[modality]
        t = torch.from_numpy((x - mean) / std)
        return nn.functional.normalize(t, dim=1)

    def fit(self, image_feats: np.ndarray, point_feats: np.ndarray) -> DJSRHHasher:
        """image_feats [n, di] and point_feats [n, dp]: row i of both is the same object."""
        fi = self._check(image_feats, "image features")
        fp = self._check(point_feats, "point features")
        if len(fi) != len(fp) or len(fi) < 2:
            raise ValueError(f"need the same number (>= 2) of paired rows, got {len(fi)} and {len(fp)}")
        c = self.cfg
        for mod, x in (("image", fi), ("points", fp)):
            self.stats[mod] = (x.mean(0), x.std(0) + 1e-6)
        xi, xp = self._prep("image", fi), self._prep("points", fp)
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        self.nets = {"image": _mlp(fi.shape[1], c.hidden, self.bits), "points": _mlp(fp.shape[1], c.hidden, self.bits)}
        params = [p for net in self.nets.values() for p in net.parameters()]
        opt = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        n = len(xi)
        bs = min(c.batch_size, n)
        steps = max(n // bs, 1)
        self.loss_history = []
        for epoch in range(c.epochs):
            alpha = c.alpha_start + (c.alpha_end - c.alpha_start) * epoch / max(c.epochs - 1, 1)
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            for s in range(steps):
                idx = perm[s * bs:(s + 1) * bs]
                target = c.mu * joint_affinity(xi[idx], xp[idx], c.beta, c.eta)          # [m, m]
                hi = nn.functional.normalize(torch.tanh(alpha * self.nets["image"](xi[idx])), dim=1)
                hp = nn.functional.normalize(torch.tanh(alpha * self.nets["points"](xp[idx])), dim=1)
                loss = (((target - hi @ hp.T) ** 2).mean()
                        + c.lambda_image * ((target - hi @ hi.T) ** 2).mean()
                        + c.lambda_points * ((target - hp @ hp.T) ** 2).mean())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
            self.loss_history.append(total / steps)
        logger.debug("DJSRH %d bits: loss %.4f -> %.4f", self.bits, self.loss_history[0], self.loss_history[-1])
        return self

    @torch.no_grad()
    def encode(self, modality: str, x: np.ndarray) -> np.ndarray:
        """Features [N, d] of ``modality`` ("image" or "points") -> uint8 [N, ceil(bits / 8)] codes."""
        if modality not in self.nets:
            raise RuntimeError(f"DJSRHHasher has no fitted {modality!r} hash function; call .fit first")
        arr = self._check(x, f"{modality} features")
        if arr.shape[1] != self.stats[modality][0].shape[0]:
            raise ValueError(f"expected {modality} features of dimension {self.stats[modality][0].shape[0]}, "
                             f"got {arr.shape[1]}")
        out = self.nets[modality](self._prep(modality, arr)).numpy()
        return pack_sign_bits(out)
