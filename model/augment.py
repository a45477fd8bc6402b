"""Point-cloud augmentation for training (batched torch): rotation about z (up), anisotropic scale,
jitter and point dropout. Output keeps [B, N, 3] and stays within the unit sphere."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PointAugment:
    rotate_z: bool = True
    scale_range: tuple[float, float] = (0.8, 1.2)
    jitter_sigma: float = 0.01
    jitter_clip: float = 0.03
    max_dropout: float = 0.5       # up to this fraction of points replaced by copies of kept points

    def __call__(self, points: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """points [B, N, 3] -> augmented [B, N, 3] (a new tensor; the input is not modified)."""
        b, n, _ = points.shape
        dev = points.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator).to(dev)

        x = points.float()
        if self.rotate_z:
            theta = rand(b) * 2 * math.pi
            c, s = theta.cos(), theta.sin()
            zeros, ones = torch.zeros_like(c), torch.ones_like(c)
            rot = torch.stack([c, -s, zeros, s, c, zeros, zeros, zeros, ones], dim=-1).view(b, 3, 3)
            x = x @ rot.transpose(1, 2)
        lo, hi = self.scale_range
        x = x * (lo + (hi - lo) * rand(b, 1, 3))
        if self.jitter_sigma > 0:
            noise = torch.randn(b, n, 3, generator=generator).to(dev) * self.jitter_sigma
            x = x + noise.clamp(-self.jitter_clip, self.jitter_clip)
        if self.max_dropout > 0:
            drop = rand(b, n) < rand(b, 1) * self.max_dropout                  # [B, N]
            drop[:, 0] = False                                                  # point 0 always kept
            # replace each dropped point by a random kept point (the cloud keeps N rows)
            src = torch.where(drop, torch.zeros_like(drop, dtype=torch.long),
                              torch.arange(n, device=dev).expand(b, n))
            kept_counts = (~drop).sum(1, keepdim=True)
            order = torch.argsort(drop.float(), dim=1, stable=True)            # kept points first
            pick = (rand(b, n) * kept_counts).long().clamp(max=n - 1)
            replacement = torch.gather(order, 1, pick)
            src = torch.where(drop, replacement, src)
            x = torch.gather(x, 1, src[..., None].expand(b, n, 3))
        # back into the unit sphere (centroid at the origin, max norm 1), the dataset's normalisation
        x = x - x.mean(1, keepdim=True)
        return x / x.norm(dim=-1).amax(1).clamp_min(1e-6)[:, None, None]
