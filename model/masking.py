"""Random token masking, independent per sample (MAE style)."""

from __future__ import annotations

import torch


def random_masking(batch: int, num_tokens: int, ratio: float, device: torch.device | str = "cpu",
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Split token positions into kept and masked ones for each sample.

    Returns ``(keep_idx [B, n_keep], mask_idx [B, n_mask])``, each sorted ascending; ``n_mask =
    round(ratio * num_tokens)`` clipped so at least one token stays visible.
    """
    n_mask = min(int(round(ratio * num_tokens)), num_tokens - 1)
    noise = torch.rand(batch, num_tokens, generator=generator).to(device)
    order = noise.argsort(dim=1)
    mask_idx = order[:, :n_mask].sort(dim=1).values
    keep_idx = order[:, n_mask:].sort(dim=1).values
    return keep_idx, mask_idx


def take_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, T, C], idx [B, t] -> [B, t, C]."""
    return torch.gather(x, 1, idx[..., None].expand(*idx.shape, x.shape[-1]))
