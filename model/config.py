"""Model configurations as frozen dataclasses, with named presets.

* ``paper``: the CMAH paper's sizes (image ViT-B 768x12 at 224 px, point encoder 384x12, decoders 8 / 4).
* ``cpu``: the shipped default, sized by measurement so that encoding one input on 2 CPU cores takes
  well under 25 ms and a useful model trains on 2 CPU cores in about two hours (see docs/benchmarks.md).
* ``mobile``: ``cpu`` with an ImageNet-pretrained MobileNetV2 image encoder at 128 px.
* ``tiny``: for tests (seconds on CPU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

CODE_LENGTHS = (16, 32, 64)


#: image encoder architectures: "vit" (trained from scratch) and "mobilenetv2" (torchvision's CNN,
#: started from ImageNet weights; model.backbone), whose feature width is fixed
IMAGE_ARCHS = ("vit", "mobilenetv2")
CNN_FEATURE_DIMS = {"mobilenetv2": 1280}


@dataclass(frozen=True)
class ImageEncoderConfig:
    image_size: int = 224
    #: ViT patch; for a CNN the cell of the input grid that masked views blank out (SimMIM-style)
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    arch: str = "vit"
    #: CNN only: leading feature blocks kept frozen at their ImageNet values (cheaper backward)
    frozen_blocks: int = 0

    def __post_init__(self) -> None:
        if self.arch not in IMAGE_ARCHS:
            raise ValueError(f"unknown image arch {self.arch!r}; choose one of {IMAGE_ARCHS}")
        if self.arch in CNN_FEATURE_DIMS and self.dim != CNN_FEATURE_DIMS[self.arch]:
            raise ValueError(f"image arch {self.arch} has {CNN_FEATURE_DIMS[self.arch]} features, "
                             f"not dim={self.dim}")

    @property
    def is_cnn(self) -> bool:
        return self.arch in CNN_FEATURE_DIMS

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class PointEncoderConfig:
    num_points: int = 1024
    num_groups: int = 64
    group_size: int = 32
    dim: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    #: mini-PointNet widths: first shared MLP (c1, c2), second shared MLP (c3) after concat with the max
    pointnet_widths: tuple[int, int, int] = (128, 256, 512)


@dataclass(frozen=True)
class DecoderConfig:
    image_dim: int = 512
    image_depth: int = 8
    image_heads: int = 16
    point_dim: int = 384
    point_depth: int = 4
    point_heads: int = 6


@dataclass(frozen=True)
class LossConfig:
    """Training objective; the switches reproduce the paper's ablation (Table 2)."""

    cl_full: bool = True          # CL-F: full image <-> full points
    cl_masked: bool = True        # CL-M: full <-> masked across modalities
    reconstruction: bool = True   # MR: masked image / point reconstruction
    fusion: bool = True           # MF: cross-modal fusion before the decoders (needs MR)
    temperature: float = 0.2
    contrastive: str = "ntxent"   # "ntxent" or "hard" (Robinson et al. 2021 hard negatives)
    hard_beta: float = 1.0
    hard_tau_plus: float = 0.05
    rec_weight: float = 1.0
    norm_pix_loss: bool = True    # per-patch normalised pixel targets (MAE)


@dataclass(frozen=True)
class CMAHConfig:
    name: str = "paper"
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    points: PointEncoderConfig = field(default_factory=PointEncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    bits: tuple[int, ...] = CODE_LENGTHS
    hash_hidden: int = 512
    image_mask_ratio: float = 0.75
    point_mask_ratio: float = 0.6
    #: hash layer kind (model.hash_head.HEAD_KINDS): "bn" is trained with the encoders; "normed" is
    #: what ``cmah refit-heads`` fits on frozen encoder features
    hash_head: str = "bn"
    #: per-length exceptions to (hash_head, hash_hidden), as (bits, kind, hidden) triples: e.g. a trained
    #: 16-bit head kept beside re-fitted 32- and 64-bit heads (``cmah refit-heads --bits 32 64``)
    head_overrides: tuple[tuple[int, str, int], ...] = ()

    def head_spec(self, bits: int) -> tuple[str, int]:
        """(kind, hidden units) of the hash layer for ``bits``-bit codes."""
        for b, kind, hidden in self.head_overrides:
            if b == bits:
                return kind, hidden
        return self.hash_head, self.hash_hidden

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CMAHConfig:
        d = dict(d)
        pts = dict(d.get("points", {}))
        if "pointnet_widths" in pts:
            pts["pointnet_widths"] = tuple(pts["pointnet_widths"])
        return cls(
            name=d.get("name", "custom"),
            image=ImageEncoderConfig(**d.get("image", {})),
            points=PointEncoderConfig(**pts),
            decoder=DecoderConfig(**d.get("decoder", {})),
            loss=LossConfig(**d.get("loss", {})),
            bits=tuple(d.get("bits", CODE_LENGTHS)),
            hash_hidden=d.get("hash_hidden", 512),
            image_mask_ratio=d.get("image_mask_ratio", 0.75),
            point_mask_ratio=d.get("point_mask_ratio", 0.6),
            hash_head=d.get("hash_head", "bn"),
            head_overrides=tuple((int(b), str(kind), int(hidden)) for b, kind, hidden in d.get("head_overrides", ())),
        )

    def with_loss(self, **changes: Any) -> CMAHConfig:
        return dataclasses.replace(self, loss=dataclasses.replace(self.loss, **changes))


PAPER = CMAHConfig()

CPU = CMAHConfig(
    name="cpu",
    image=ImageEncoderConfig(image_size=112, patch_size=16, dim=192, depth=4, heads=3),
    points=PointEncoderConfig(dim=192, depth=4, heads=3, pointnet_widths=(32, 64, 128)),
    decoder=DecoderConfig(image_dim=128, image_depth=2, image_heads=4, point_dim=128, point_depth=2,
                          point_heads=4),
    hash_hidden=256,
)

#: ``cpu`` with an ImageNet-pretrained MobileNetV2 for pictures (model.backbone) at 128 px; the point
#: side is ``cpu``'s. Masked picture views blank 16-px cells of the input; only points are reconstructed.
MOBILE = dataclasses.replace(
    CPU, name="mobile",
    image=ImageEncoderConfig(image_size=128, patch_size=16, dim=1280, depth=0, heads=1, arch="mobilenetv2",
                             frozen_blocks=4),
)

TINY = CMAHConfig(
    name="tiny",
    image=ImageEncoderConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=2),
    points=PointEncoderConfig(num_points=256, num_groups=16, group_size=8, dim=32, depth=1, heads=2,
                              pointnet_widths=(16, 32, 32)),
    decoder=DecoderConfig(image_dim=32, image_depth=1, image_heads=2, point_dim=32, point_depth=1,
                          point_heads=2),
    hash_hidden=32,
)

#: ``tiny`` with the MobileNetV2 picture encoder at 32 px (tests of the CNN path)
TINY_MOBILE = dataclasses.replace(
    TINY, name="tiny-mobile",
    image=ImageEncoderConfig(image_size=32, patch_size=8, dim=1280, depth=0, heads=1, arch="mobilenetv2"),
)

PRESETS: dict[str, CMAHConfig] = {"paper": PAPER, "cpu": CPU, "mobile": MOBILE, "tiny": TINY,
                                  "tiny-mobile": TINY_MOBILE}

#: Ablation switches of the paper's Table 2.
ABLATIONS: dict[str, dict[str, bool]] = {
    "cl-f": dict(cl_full=True, cl_masked=False, reconstruction=False, fusion=False),
    "cl-f+cl-m": dict(cl_full=True, cl_masked=True, reconstruction=False, fusion=False),
    "cl+mr": dict(cl_full=True, cl_masked=True, reconstruction=True, fusion=False),
    "full": dict(cl_full=True, cl_masked=True, reconstruction=True, fusion=True),
}


def get_config(name: str) -> CMAHConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(PRESETS)}") from None
