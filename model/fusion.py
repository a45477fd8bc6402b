"""Cross-modal fusion block (training only): self-attention -> cross-attention -> FFN.

Queries are this modality's masked-view (visible) tokens; keys/values are the other modality's
full-view tokens, projected to this modality's width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """x [B, Tq, D], ctx [B, Tk, D] -> [B, Tq, D]."""
        b, tq, d = x.shape
        h = self.heads
        q = self.q(x).view(b, tq, h, d // h).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)                 # [B, h, Tq, D/h]
        return self.proj(out.transpose(1, 2).reshape(b, tq, d))


class FusionBlock(nn.Module):
    def __init__(self, dim: int, other_dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ctx_proj = nn.Linear(other_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.norm_ctx = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """x: visible tokens [B, t, D]; other: the other modality's full tokens [B, T', D'] -> [B, t, D]."""
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        x = x + self.cross_attn(self.norm2(x), self.norm_ctx(self.ctx_proj(other)))
        return x + self.mlp(self.norm3(x))
