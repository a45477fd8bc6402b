"""Point-cloud grouping: farthest point sampling and k-nearest-neighbour groups, pure torch, batched.

Both run on CPU and GPU. FPS is a loop over the ``m`` centres (each step one batched distance update),
so its cost is ``m`` small kernels; on GPU this loop dominates bs1 latency, so the loop body is kept to
three fused-friendly ops and no host synchronisation.
"""

from __future__ import annotations

import torch


def farthest_point_sample(points: torch.Tensor, m: int) -> torch.Tensor:
    """Indices [B, m] of ``m`` farthest-point samples of points [B, N, 3], starting at point 0.

    Deterministic (no random start), so encoding a cloud twice gives the same groups.
    """
    b, n, _ = points.shape
    if m > n:
        raise ValueError(f"cannot sample {m} centres from {n} points")
    idx = torch.zeros(b, m, dtype=torch.long, device=points.device)
    dist = torch.full((b, n), float("inf"), device=points.device, dtype=points.dtype)
    last = points[:, 0, :]                                              # [B, 3]
    for i in range(1, m):
        dist = torch.minimum(dist, (points - last[:, None, :]).square().sum(-1))
        nxt = dist.argmax(dim=-1)                                       # [B]
        idx[:, i] = nxt
        last = torch.gather(points, 1, nxt[:, None, None].expand(b, 1, 3)).squeeze(1)
    return idx


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """points [B, N, C], idx [B, ...] -> [B, ..., C]."""
    b = points.shape[0]
    flat = idx.reshape(b, -1)
    out = torch.gather(points, 1, flat[..., None].expand(*flat.shape, points.shape[-1]))
    return out.reshape(*idx.shape, points.shape[-1])


def group_points(points: torch.Tensor, num_groups: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FPS centres and kNN groups: returns neighbourhoods [B, G, k, 3] (relative to their centre) and
    centres [B, G, 3]."""
    centre_idx = farthest_point_sample(points, num_groups)              # [B, G]
    centres = gather_points(points, centre_idx)                        # [B, G, 3]
    d = torch.cdist(centres, points)                                   # [B, G, N]
    knn = d.topk(group_size, dim=-1, largest=False).indices            # [B, G, k]
    groups = gather_points(points, knn) - centres[:, :, None, :]       # [B, G, k, 3]
    return groups, centres
