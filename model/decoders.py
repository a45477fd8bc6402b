"""Training-only decoders with a shared learnable mask token (MAE / Point-MAE style)."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .masking import take_tokens


class MaskedDecoder(nn.Module):
    """Projects visible tokens to the decoder width, inserts the mask token at the masked positions,
    adds positional information, runs ``depth`` blocks and predicts ``out_dim`` values per masked token."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, 4.0, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, vis: torch.Tensor, keep_idx: torch.Tensor, mask_idx: torch.Tensor,
                pos: torch.Tensor) -> torch.Tensor:
        """vis [B, t, Din] (visible tokens, in keep_idx order); pos [B, T, dim] positional embedding of
        all T positions -> predictions for the masked positions [B, T - t, out_dim]."""
        b, t, _ = vis.shape
        n_mask = mask_idx.shape[1]
        x = torch.cat([self.proj(vis), self.mask_token.expand(b, n_mask, -1)], dim=1)
        order = torch.cat([keep_idx, mask_idx], dim=1)                  # token position of each row
        x = x + take_tokens(pos, order)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, t:]))


class ImageDecoder(MaskedDecoder):
    """Predicts the pixels of each masked patch (p * p * 3 values)."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, num_patches: int, patch_size: int):
        super().__init__(in_dim, dim, depth, heads, patch_size * patch_size * 3)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, vis, keep_idx, mask_idx):  # type: ignore[override]
        return super().forward(vis, keep_idx, mask_idx, self.pos_embed.expand(vis.shape[0], -1, -1))


class PointDecoder(MaskedDecoder):
    """Predicts the k points (relative to the centre) of each masked group; positions from the centres."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, group_size: int):
        super().__init__(in_dim, dim, depth, heads, group_size * 3)
        self.group_size = group_size
        self.pos_mlp = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))

    def forward(self, vis, keep_idx, mask_idx, centres):  # type: ignore[override]
        out = super().forward(vis, keep_idx, mask_idx, self.pos_mlp(centres))
        return out.view(out.shape[0], out.shape[1], self.group_size, 3)  # [B, M, k, 3]
