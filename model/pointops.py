"""Point-cloud grouping: farthest point sampling and k-nearest-neighbour groups, pure torch, batched.

Both run on CPU and GPU. FPS is a loop over the ``m`` centres (each step one batched distance update),
so its cost is ``m`` small kernels; on GPU this loop dominates bs1 latency, so the loop body is kept to
three fused-friendly ops and no host synchronisation.
"""

from __future__ import annotations

import torch


def farthest_point_sample(points: torch.Tensor, m: int) -> torch.Tensor:
    """Indices [B, m] of ``m`` farthest-point samples of points [B, N, 3], starting at point 0.

    Deterministic (no random start), so encoding a cloud twice gives the same groups. On CPU the loop
    runs on one coordinate plane at a time (``_fps_planar``: the same distances bit for bit, so the
    same indices, about 3x faster on a CPU: docs/benchmarks-service.md); elsewhere on [B, N, 3] (``_fps_batched``:
    fewer kernels per step, which is what counts on a GPU).
    """
    b, n, _ = points.shape
    if m > n:
        raise ValueError(f"cannot sample {m} centres from {n} points")
    return (_fps_planar if points.device.type == "cpu" else _fps_batched)(points, m)


def _fps_batched(points: torch.Tensor, m: int) -> torch.Tensor:
    """``farthest_point_sample`` on [B, N, 3] directly: three small kernels a step (GPU path)."""
    b, n, _ = points.shape
    idx = torch.zeros(b, m, dtype=torch.long, device=points.device)
    dist = torch.full((b, n), float("inf"), device=points.device, dtype=points.dtype)
    last = points[:, 0, :]                                              # [B, 3]
    for i in range(1, m):
        dist = torch.minimum(dist, (points - last[:, None, :]).square().sum(-1))
        nxt = dist.argmax(dim=-1)                                       # [B]
        idx[:, i] = nxt
        last = torch.gather(points, 1, nxt[:, None, None].expand(b, 1, 3)).squeeze(1)
    return idx


def _fps_planar(points: torch.Tensor, m: int) -> torch.Tensor:
    """``farthest_point_sample`` on coordinate planes [3, B, N] with preallocated buffers (CPU path).

    The squared distance is summed in the same order as ``(p - q).square().sum(-1)`` (x, then y, then
    z), so the distances, and with them the argmax ties, are identical to ``_fps_batched``'s.
    """
    b, n, _ = points.shape
    idx = torch.zeros(b, m, dtype=torch.long)
    planes = points.permute(2, 0, 1).contiguous()                      # [3, B, N]
    dist = torch.full((b, n), float("inf"), dtype=points.dtype)
    d, tmp = torch.empty_like(dist), torch.empty_like(dist)
    rows = torch.arange(b)
    last = planes[:, :, :1]                                             # [3, B, 1]
    for i in range(1, m):
        torch.sub(planes[0], last[0], out=d).square_()
        torch.sub(planes[1], last[1], out=tmp).square_()
        d += tmp
        torch.sub(planes[2], last[2], out=tmp).square_()
        d += tmp
        torch.minimum(dist, d, out=dist)
        nxt = dist.argmax(dim=-1)                                       # [B]
        idx[:, i] = nxt
        last = planes[:, rows, nxt][..., None]                          # [3, B, 1]
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
