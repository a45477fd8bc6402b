"""The encoders: an image ViT or CNN (MobileNetV2) and a Point-MAE-style point transformer.

Both expose the same two-step interface so the CMAH model can run them on all tokens (full view) or
on a subset (masked view):

* ``embed(x)`` -> tokens [B, T, D] with positional information added (no [CLS]);
* ``forward_features(tokens, keep_idx=None)`` -> [B, 1 + t, D]: prepends [CLS], runs the transformer
  on the kept tokens (all when ``keep_idx`` is None), final LayerNorm. Index 0 is the [CLS] output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from timm.models.vision_transformer import Block
from torch import nn

from .config import ImageEncoderConfig, PointEncoderConfig
from .masking import take_tokens
from .pointops import group_points


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TransformerTrunk(nn.Module):
    """[CLS] + transformer blocks + final norm, shared by both encoders."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    def forward(self, tokens: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        if keep_idx is not None:
            tokens = take_tokens(tokens, keep_idx)                       # [B, t, D]
        cls = (self.cls_token + self.cls_pos).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)                              # [B, 1 + t, D]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class ImageEncoder(nn.Module):
    """ViT: 16x16 patches (by default), learned positional embeddings, [CLS]."""

    def __init__(self, cfg: ImageEncoderConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(3, cfg.dim, cfg.patch_size, cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches, cfg.dim))
        self.trunk = TransformerTrunk(cfg.dim, cfg.depth, cfg.heads, cfg.mlp_ratio)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        self.trunk.apply(_init_weights)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] (normalised) -> patch tokens [B, P, D]."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        return x + self.pos_embed

    def forward_features(self, tokens: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        return self.trunk(tokens, keep_idx)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [CLS] features [B, D]."""
        return self.forward_features(self.embed(images))[:, 0]


class CNNImageEncoder(nn.Module):
    """torchvision's MobileNetV2 behind the encoders' two-step interface (masked views SimMIM-style).

    ``embed`` cuts the image into ``patch_size`` cells ("tokens" [B, P, 3*p*p]); ``forward_features``
    blanks the cells not in ``keep_idx`` (zero = the normalised mean colour), runs the CNN on the whole
    image and returns [B, 1 + T, 1280]: the global average pool first, then the T cells of the last
    feature map (what the point side's fusion block attends to). The first ``frozen_blocks`` feature
    blocks keep their ImageNet values and statistics (no gradient, always in eval mode).
    """

    def __init__(self, cfg: ImageEncoderConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        self.features = torchvision.models.mobilenet_v2().features   # ImageNet weights: model.backbone
        for p in self.features[:cfg.frozen_blocks].parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> CNNImageEncoder:
        super().train(mode)
        self.features[:self.cfg.frozen_blocks].eval()
        return self

    def load_imagenet(self) -> None:
        """Start from the pinned ImageNet weights (:mod:`model.backbone`); the classifier is dropped."""
        from .backbone import load_pretrained

        net = torchvision.models.mobilenet_v2()
        load_pretrained(self.cfg.arch, net)
        self.features.load_state_dict(net.features.state_dict())

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] (normalised) -> cells [B, P, 3*p*p] (row-major, like ViT patches)."""
        return F.unfold(images, self.cfg.patch_size, stride=self.cfg.patch_size).transpose(1, 2)

    def forward_features(self, tokens: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        if keep_idx is not None:
            keep = torch.zeros(tokens.shape[:2], device=tokens.device, dtype=tokens.dtype)
            keep.scatter_(1, keep_idx, 1.0)
            tokens = tokens * keep[..., None]                             # [B, P, 3*p*p]
        s = self.cfg.image_size
        x = F.fold(tokens.transpose(1, 2), (s, s), self.cfg.patch_size, stride=self.cfg.patch_size)
        n = self.cfg.frozen_blocks
        if n:
            with torch.no_grad():
                x = self.features[:n](x)
        fmap = self.features[n:](x)                                       # [B, 1280, h, w]
        cells = fmap.flatten(2).transpose(1, 2)                           # [B, T, 1280]
        return torch.cat([cells.mean(1, keepdim=True), cells], dim=1)     # [B, 1 + T, 1280]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] (normalised) -> pooled features [B, 1280]."""
        return self.features(images).mean((2, 3))


def build_image_encoder(cfg: ImageEncoderConfig) -> nn.Module:
    return CNNImageEncoder(cfg) if cfg.is_cnn else ImageEncoder(cfg)


class MiniPointNet(nn.Module):
    """Point-MAE style token embedding of a group, made cheaper for CPU.

    Shared MLP (3 -> c1 -> c2) per point, max-pool to a group feature, concat it back to every point,
    one shared layer (2*c2 -> c3) per point, max-pool, then a linear map to the token width. The concat
    is computed as ``W_f f + W_g g`` so the group term is evaluated once per group, not per point.
    Max-pools are ``amax`` (values only): ``max(dim).values`` also computes the indices, which on CPU
    made it ~20x slower over the k axis (6.4 vs 0.31 ms for 8 clouds' [8, 64, 32, 128] activations).
    """

    def __init__(self, dim: int, widths: tuple[int, int, int]):
        super().__init__()
        c1, c2, c3 = widths
        self.first = nn.Sequential(nn.Linear(3, c1), nn.LayerNorm(c1), nn.GELU(), nn.Linear(c1, c2))
        self.point_proj = nn.Linear(c2, c3)
        self.group_proj = nn.Linear(c2, c3, bias=False)
        self.norm = nn.LayerNorm(c3)
        self.act = nn.GELU()
        self.out = nn.Linear(c3, dim)

    #: without autograd, groups are embedded this many at a time: the per-point activations of a whole
    #: batch (B*G*k rows, 131k x 128 floats per tensor at B = 64) fall out of the CPU caches, which made a
    #: batch slower per cloud than chunks of 8 clouds (3.9 vs 1.9 ms per cloud measured on 2 cores).
    #: Row-wise operations only, so chunking gives the same result.
    inference_chunk_groups: int = 512

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        """groups [B, G, k, 3] -> tokens [B, G, D]."""
        b, g = groups.shape[:2]
        if torch.is_grad_enabled() or b * g <= self.inference_chunk_groups:
            return self.embed(groups)
        per = max(1, self.inference_chunk_groups // g)
        return torch.cat([self.embed(chunk) for chunk in groups.split(per)])

    def embed(self, groups: torch.Tensor) -> torch.Tensor:
        """groups [B, G, k, 3] -> tokens [B, G, D] in one pass."""
        f = self.first(groups)                                           # [B, G, k, c2]
        g = f.amax(dim=2, keepdim=True)                                  # [B, G, 1, c2]
        f = self.act(self.norm(self.point_proj(f) + self.group_proj(g)))  # [B, G, k, c3]
        return self.out(f.amax(dim=2))                                   # [B, G, D]


class PointEncoder(nn.Module):
    """Point-MAE style: FPS centres, kNN groups, mini-PointNet tokens, centre positional MLP, [CLS]."""

    def __init__(self, cfg: PointEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = MiniPointNet(cfg.dim, cfg.pointnet_widths)
        self.pos_mlp = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, cfg.dim))
        self.trunk = TransformerTrunk(cfg.dim, cfg.depth, cfg.heads, cfg.mlp_ratio)
        self.apply(_init_weights)

    def group(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points [B, N, 3] -> groups [B, G, k, 3] (centred), centres [B, G, 3]."""
        return group_points(points, self.cfg.num_groups, self.cfg.group_size)

    def embed_groups(self, groups: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        return self.tokenizer(groups) + self.pos_mlp(centres)            # [B, G, D]

    def embed(self, points: torch.Tensor) -> torch.Tensor:
        return self.embed_groups(*self.group(points))

    def forward_features(self, tokens: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        return self.trunk(tokens, keep_idx)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """[B, N, 3] -> [CLS] features [B, D]."""
        return self.forward_features(self.embed(points))[:, 0]
