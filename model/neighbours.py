"""Neighbour positives for training: a k-NN graph of the training shapes from the model's own features.

Instance-level NT-Xent treats every other shape in a batch as a negative, including shapes of the same
kind (ModelNet40's largest class holds 11 % of the shapes, so a batch of 64 has several same-class
pairs). ``cmah train --neighbours K`` softens that without labels: the model in training encodes every
training shape (canonical render and clean cloud, as retrieval sees them), each shape's ``K`` nearest
shapes by *joint* similarity (the mean of the image-image and point-point cosine similarities of the
[CLS] features: two shapes close in both modalities) become its neighbours, every batch holds anchor
shapes and one neighbour of each, and the contrastive targets put part of their mass on the in-batch
neighbours (:func:`model.losses.soft_nt_xent`). The graph is rebuilt from the current model every few
epochs. Labels are never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .cmah import HashEncoder
from .renderer import RenderConfig, canonical_view, render

#: rows of the similarity matrix computed at once (memory: block x N floats)
SIM_BLOCK = 1024


@torch.no_grad()
def joint_features(model: HashEncoder, points: np.ndarray, device: torch.device, batch_size: int = 128,
                   progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised [CLS] features of each shape's canonical render [N, Di] and cloud [N, Dp]
    (on the CPU), with ``model`` in eval mode for the pass (its mode is restored after)."""
    was_training = model.training
    model.eval()
    rc = RenderConfig(image_size=model.cfg.image.image_size)
    img, pts = [], []
    try:
        for s in tqdm(range(0, len(points), batch_size), desc="neighbour graph", unit="batch",
                      leave=False, disable=not progress):
            p = torch.from_numpy(np.ascontiguousarray(points[s:s + batch_size])).float().to(device)
            images = render(p, canonical_view(p.shape[0], device), rc)
            img.append(torch.nn.functional.normalize(model.image_features(images).float(), dim=-1).cpu())
            pts.append(torch.nn.functional.normalize(model.point_features(p).float(), dim=-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(img), torch.cat(pts)


def knn_joint(img: torch.Tensor, pts: torch.Tensor, k: int) -> np.ndarray:
    """Indices [N, k] of each row's ``k`` nearest other rows by joint similarity
    ``(img @ img.T + pts @ pts.T) / 2`` (rows L2-normalised), nearest first."""
    n = img.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"--neighbours must lie in [1, {n - 1}] for {n} training shapes, got {k}")
    out = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, SIM_BLOCK):
        sim = (img[s:s + SIM_BLOCK] @ img.T + pts[s:s + SIM_BLOCK] @ pts.T) / 2      # [b, N]
        rows = torch.arange(s, min(s + SIM_BLOCK, n))
        sim[rows - s, rows] = -float("inf")                                          # not itself
        out[s:s + SIM_BLOCK] = sim.topk(k, dim=1).indices.numpy()
    return out


@dataclass
class NeighbourGraph:
    """``knn[i]``: the neighbours of training shape ``i`` (positions in the training set, nearest first)."""

    knn: np.ndarray   # [N, k] int

    def __post_init__(self) -> None:
        n = len(self.knn)
        self._rows = np.repeat(np.arange(n), self.knn.shape[1])
        # symmetric membership, as a set of i * n + j codes (sorted, for np.isin)
        pairs = np.concatenate([self._rows * n + self.knn.ravel(), self.knn.ravel() * n + self._rows])
        self._codes = np.unique(pairs)

    def __len__(self) -> int:
        return len(self.knn)

    def batch(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Batch positions: each anchor followed by one of its neighbours (a random one not yet in the
        batch; when all are, a random shape that is not); no position twice."""
        n = len(self.knn)
        if 2 * len(anchors) > n:
            raise ValueError(f"a batch of {2 * len(anchors)} needs at least that many training shapes, got {n}")
        taken = set(int(a) for a in anchors)
        out = []
        for a in anchors:
            out.append(int(a))
            cand = [int(j) for j in rng.permutation(self.knn[a]) if int(j) not in taken]
            j = cand[0] if cand else None
            while j is None:
                r = int(rng.integers(n))
                j = r if r not in taken else None
            taken.add(j)
            out.append(j)
        return np.asarray(out, dtype=np.int64)

    def mask(self, idx: np.ndarray) -> torch.Tensor:
        """[B, B] bool: positions ``idx[r]`` and ``idx[c]`` are neighbours (either way); diagonal False."""
        idx = np.asarray(idx, dtype=np.int64)
        codes = idx[:, None] * len(self.knn) + idx[None, :]
        m = np.isin(codes, self._codes)
        np.fill_diagonal(m, False)
        return torch.from_numpy(m)
