"""CMAH: contrastive masked autoencoders for image <-> point-cloud hashing (Wei et al., ICME 2024).

:class:`HashEncoder` is the inference model (encoders + hash heads; what ships in weights/).
:class:`CMAH` wraps it with the training-only parts (fusion blocks, decoders) and the objective:

    L = Lc + Lr,  Lc = L_ff + L_fm + L_mf (NT-Xent between hash outputs),  Lr = L_2D + L_3D.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import CMAHConfig
from .decoders import ImageDecoder, PointDecoder
from .encoders import PointEncoder, build_image_encoder
from .fusion import FusionBlock
from .hash_head import MultiHashHead
from .losses import chamfer_l2, hard_nt_xent, masked_patch_mse, nt_xent, soft_nt_xent
from .masking import random_masking, take_tokens

#: Image normalisation applied inside the model (inputs are RGB in [0, 1]); ImageNet's for a CNN.
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HashEncoder(nn.Module):
    """Image and point encoders, each followed by hash heads for every code length."""

    def __init__(self, cfg: CMAHConfig):
        super().__init__()
        self.cfg = cfg
        self.image_encoder = build_image_encoder(cfg.image)
        self.point_encoder = PointEncoder(cfg.points)
        self.image_hash = MultiHashHead(cfg.image.dim, cfg.hash_hidden, cfg.bits, cfg.hash_head, cfg.head_overrides)
        self.point_hash = MultiHashHead(cfg.points.dim, cfg.hash_hidden, cfg.bits, cfg.hash_head, cfg.head_overrides)
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if cfg.image.is_cnn else (IMAGE_MEAN, IMAGE_STD)
        self.register_buffer("img_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("img_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize_images(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.img_mean) / self.img_std

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """RGB [B, 3, H, W] in [0, 1] -> [CLS] features [B, D_img]."""
        return self.image_encoder(self.normalize_images(images))

    def point_features(self, points: torch.Tensor) -> torch.Tensor:
        """[B, N, 3] -> [CLS] features [B, D_pts]."""
        return self.point_encoder(points)

    def encode_images(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """Continuous codes in (-1, 1) per code length; sign them for the binary codes."""
        return self.image_hash(self.image_features(images))

    def encode_points(self, points: torch.Tensor) -> dict[int, torch.Tensor]:
        return self.point_hash(self.point_features(points))


@dataclass
class LossOutput:
    loss: torch.Tensor
    parts: dict[str, float]


class CMAH(nn.Module):
    """The training model: :class:`HashEncoder` + fusion blocks + decoders + the CMAH objective."""

    def __init__(self, cfg: CMAHConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = HashEncoder(cfg)
        lc, ic, pc, dc = cfg.loss, cfg.image, cfg.points, cfg.decoder
        if lc.fusion and not lc.reconstruction:
            raise ValueError("fusion needs reconstruction (the fused tokens only feed the decoders)")
        #: masked pictures are reconstructed by the ViT only (a CNN's features are not per patch)
        self.image_reconstruction = lc.reconstruction and not ic.is_cnn
        if lc.reconstruction:
            if lc.fusion and self.image_reconstruction:
                self.image_fusion = FusionBlock(ic.dim, pc.dim, ic.heads)
            if lc.fusion:
                self.point_fusion = FusionBlock(pc.dim, ic.dim, pc.heads)
            if self.image_reconstruction:
                self.image_decoder = ImageDecoder(ic.dim, dc.image_dim, dc.image_depth, dc.image_heads,
                                                  ic.num_patches, ic.patch_size)
            self.point_decoder = PointDecoder(pc.dim, dc.point_dim, dc.point_depth, dc.point_heads,
                                              pc.group_size)

    def contrastive(self, a: torch.Tensor, b: torch.Tensor, neighbours: torch.Tensor | None = None,
                    alpha: float = 0.0) -> torch.Tensor:
        """The configured contrastive loss between paired rows of a and b; with ``neighbours`` [B, B]
        and ``alpha`` > 0, NT-Xent with targets shared with in-batch neighbours (:func:`soft_nt_xent`)."""
        lc = self.cfg.loss
        if neighbours is not None and alpha > 0:
            if lc.contrastive != "ntxent":
                raise ValueError("neighbour positives work with the ntxent contrastive loss only")
            return soft_nt_xent(a, b, lc.temperature, neighbours, alpha)
        if lc.contrastive == "hard":
            return hard_nt_xent(a, b, lc.temperature, lc.hard_beta, lc.hard_tau_plus)
        if lc.contrastive != "ntxent":
            raise ValueError(f"unknown contrastive loss {lc.contrastive!r}")
        return nt_xent(a, b, lc.temperature)

    def forward_encoder(self, images: torch.Tensor, points: torch.Tensor,
                        generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Encode both views of both modalities.

        images [B, 3, H, W] in [0, 1]; points [B, N, 3]. Returns full / visible token outputs and masks.
        """
        enc = self.encoder
        b = images.shape[0]
        img_tok = enc.image_encoder.embed(enc.normalize_images(images))    # [B, P, Di]
        groups, centres = enc.point_encoder.group(points)                  # [B, G, k, 3], [B, G, 3]
        pt_tok = enc.point_encoder.embed_groups(groups, centres)           # [B, G, Dp]
        out = {
            "img_full": enc.image_encoder.forward_features(img_tok),       # [B, 1+P, Di]
            "pt_full": enc.point_encoder.forward_features(pt_tok),         # [B, 1+G, Dp]
            "groups": groups, "centres": centres,
        }
        lc = self.cfg.loss
        if lc.cl_masked or lc.reconstruction:
            ik, im = random_masking(b, img_tok.shape[1], self.cfg.image_mask_ratio, images.device, generator)
            pk, pm = random_masking(b, pt_tok.shape[1], self.cfg.point_mask_ratio, images.device, generator)
            out.update(img_keep=ik, img_mask=im, pt_keep=pk, pt_mask=pm,
                       img_vis=enc.image_encoder.forward_features(img_tok, ik),   # [B, 1+Pv, Di]
                       pt_vis=enc.point_encoder.forward_features(pt_tok, pk))     # [B, 1+Gv, Dp]
        return out

    def forward_decoder(self, enc: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Fuse (optionally) and decode: predicted masked patches [B, Pm, p*p*3] (None when pictures are
        not reconstructed) and groups [B, Gm, k, 3]."""
        img_vis, pt_vis = enc["img_vis"][:, 1:], enc["pt_vis"][:, 1:]
        img_pred = None
        if self.cfg.loss.fusion:
            pt_vis = self.point_fusion(pt_vis, enc["img_full"])
        if self.image_reconstruction:
            if self.cfg.loss.fusion:
                img_vis = self.image_fusion(img_vis, enc["pt_full"])
            img_pred = self.image_decoder(img_vis, enc["img_keep"], enc["img_mask"])
        pt_pred = self.point_decoder(pt_vis, enc["pt_keep"], enc["pt_mask"], enc["centres"])
        return img_pred, pt_pred

    def forward_loss(self, images: torch.Tensor, points: torch.Tensor,
                     generator: torch.Generator | None = None, neighbours: torch.Tensor | None = None,
                     alpha: float = 0.0) -> LossOutput:
        """The CMAH objective on a batch of pairs; ``neighbours`` [B, B] bool (pairs of shapes that are
        neighbours, :mod:`model.neighbours`) and ``alpha`` soften every contrastive term's targets."""
        lc, enc_m = self.cfg.loss, self.encoder
        nb = (neighbours, alpha)
        enc = self.forward_encoder(images, points, generator)
        h_i = enc_m.image_hash(enc["img_full"][:, 0])
        h_p = enc_m.point_hash(enc["pt_full"][:, 0])
        parts: dict[str, torch.Tensor] = {}
        zero = images.new_zeros(())
        l_c = zero
        if lc.cl_masked:
            h_iv = enc_m.image_hash(enc["img_vis"][:, 0], update_stats=False)
            h_pv = enc_m.point_hash(enc["pt_vis"][:, 0], update_stats=False)
        for bits in self.cfg.bits:
            if lc.cl_full:
                l_c = l_c + self.contrastive(h_p[bits], h_i[bits], *nb)       # L_ff
            if lc.cl_masked:
                l_c = l_c + self.contrastive(h_p[bits], h_iv[bits], *nb)      # L_fm: full points, masked image
                l_c = l_c + self.contrastive(h_pv[bits], h_i[bits], *nb)      # L_mf: masked points, full image
        l_c = l_c / len(self.cfg.bits)
        parts["contrastive"] = l_c
        loss = l_c
        if lc.reconstruction:
            img_pred, pt_pred = self.forward_decoder(enc)
            l2d = zero if img_pred is None else masked_patch_mse(img_pred, images, enc["img_mask"],
                                                                 self.cfg.image.patch_size, lc.norm_pix_loss)
            target = take_tokens(enc["groups"].flatten(2), enc["pt_mask"])   # [B, Gm, k*3]
            target = target.view(*target.shape[:2], -1, 3)
            l3d = chamfer_l2(pt_pred.flatten(0, 1), target.flatten(0, 1))
            parts["rec_2d"], parts["rec_3d"] = l2d, l3d
            loss = loss + lc.rec_weight * (l2d + l3d)
        return LossOutput(loss, {k: float(v.detach()) for k, v in parts.items()})
