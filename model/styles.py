"""Training pictures drawn the many ways users' pictures are drawn (``TrainConfig.image_styles``).

A user's picture of an object is rarely our canonical render: it is a CAD render, an icon, a line
drawing, a photo on a busy background, a small JPEG, a grayscale scan. Each training picture here is
drawn by the point renderer with a random style, then changed in image space:

* ``draw`` — splat size and point density (sparse to surface-like), smooth or banded ("toon") shading;
* ``framing`` — object size (small to cropped), off-centre, views from anywhere on the sphere;
* ``icon`` — flat-coloured silhouettes and outlined drawings (clip art, icons, sketches);
* ``background`` — white, dark, gradients and photo-like clutter behind the object;
* ``colour`` — colour jitter, grayscale, blur;
* ``encoding`` — low resolution (32–64 px), JPEG at quality 20–90.

Every family can be switched off (:class:`StyleConfig` ``families``) to measure what it is worth. All
randomness comes from the trainer's generator, so a run and its resume draw the same pictures.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .renderer import RenderConfig, ViewParams, random_view, render

FAMILIES = ("draw", "framing", "icon", "background", "colour", "encoding")


@dataclass(frozen=True)
class StyleConfig:
    families: tuple[str, ...] = FAMILIES
    p_sphere_view: float = 0.3        # framing: elevation uniform over the sphere instead of [-15, 60]
    fill_range: tuple[float, float] = (0.5, 1.1)   # framing: > 1 crops the object
    max_shift: float = 0.25           # framing: offset in half-frame units
    splat_range: tuple[float, float] = (0.5, 2.2)  # draw: splat radius multiplier (log-uniform)
    p_sparse: float = 0.25            # draw: keep only 30-80 % of the points
    p_toon: float = 0.25              # draw: 2-4 bands of light
    p_icon: float = 0.12              # icon: flat silhouette in one colour (outlined half the time)
    p_line: float = 0.12              # icon: outline only, on paper
    p_outline: float = 0.15           # icon: a dark outline around a shaded object
    p_photo_bg: float = 0.25          # background: photo-like clutter
    p_dark_bg: float = 0.15           # background: dark plain
    p_gray: float = 0.15              # colour
    p_blur: float = 0.1               # colour
    p_jitter: float = 0.5             # colour: brightness / contrast / saturation
    p_lowres: float = 0.15            # encoding: 32-64 px
    p_jpeg: float = 0.25              # encoding: JPEG quality 20-90

    def __post_init__(self) -> None:
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown style families {unknown}; choose from {FAMILIES}")


def _u(gen: torch.Generator, *shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=gen)


def _coin(gen: torch.Generator, b: int, p: float) -> torch.Tensor:
    return torch.rand(b, generator=gen) < p


def styled_view(batch: int, gen: torch.Generator, sc: StyleConfig, azim_spread: float = 360.0) -> ViewParams:
    """The renderer's random view plus this batch's drawing and framing options."""
    view = random_view(batch, gen, azim_spread=azim_spread)
    if "framing" in sc.families:
        sphere = _coin(gen, batch, sc.p_sphere_view)
        elev = torch.rad2deg(torch.asin(_u(gen, batch, lo=-1.0, hi=1.0)))     # uniform over the sphere
        view.elev = torch.where(sphere, elev.clamp(-89.0, 89.0), view.elev)
        view.fill = _u(gen, batch, lo=sc.fill_range[0], hi=sc.fill_range[1])
        view.shift = _u(gen, batch, 2, lo=-sc.max_shift, hi=sc.max_shift)
    if "draw" in sc.families:
        lo, hi = math.log(sc.splat_range[0]), math.log(sc.splat_range[1])
        view.splat = _u(gen, batch, lo=lo, hi=hi).exp()
        bands = torch.randint(2, 5, (batch,), generator=gen).float()
        view.toon = torch.where(_coin(gen, batch, sc.p_toon), bands, torch.zeros(batch))
    return view


def _sparse(points: torch.Tensor, normals: torch.Tensor, spacing: torch.Tensor, gen: torch.Generator,
            p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop 20-70 % of the points of a random ``p`` of the clouds (kept ones are repeated in their place,
    so the batch keeps one size; a repeat draws over itself)."""
    b, n, _ = points.shape
    keep = _u(gen, b, 1, lo=0.3, hi=0.8)
    sparse = _coin(gen, b, p)[:, None]
    drop = sparse & (torch.rand(b, n, generator=gen) > keep)
    drop[:, 0] = False
    src = torch.arange(n).expand(b, n)
    src = torch.where(drop, torch.zeros_like(src), src)                # dropped points -> point 0
    take = src.to(points.device)
    return (torch.gather(points, 1, take[..., None].expand(b, n, 3)),
            torch.gather(normals, 1, take[..., None].expand(b, n, 3)),
            torch.gather(spacing, 1, take))


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(mask.float(), 2 * r + 1, 1, r) > 0


def _outline(mask: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Pixels on the object's border, 1 or 2 px wide per image: [B, 1, H, W] bool."""
    inner = mask & _dilate(~mask, 1)                                   # the object's own edge pixels
    outer = _dilate(mask, 1) & ~mask                                   # the ring just outside
    return torch.where((width > 1)[:, None, None, None], inner | outer, inner)


def _photo_background(b: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Clutter: smooth random colour fields at two scales plus fine grain, [B, 3, S, S] in [0, 1]."""
    coarse = F.interpolate(_u(gen, b, 3, 4, 4), size=(size, size), mode="bicubic", align_corners=False)
    fine = F.interpolate(_u(gen, b, 3, 16, 16), size=(size, size), mode="bilinear", align_corners=False)
    grain = torch.randn(b, 1, size, size, generator=gen) * 0.04
    mix = _u(gen, b, 1, 1, 1, lo=0.2, hi=0.6)
    return (coarse * (1 - mix) + fine * mix + grain).clamp(0, 1)


def _icons(img: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, sc: StyleConfig) -> torch.Tensor:
    """Flat silhouettes, outline-only drawings and outlined shaded objects."""
    b = img.shape[0]
    ink = _u(gen, b, 3, 1, 1, hi=0.3)                                  # dark line colour
    width = torch.randint(1, 3, (b,), generator=gen)
    edge = _outline(mask, width)
    kind = torch.rand(b, generator=gen)
    icon = (kind < sc.p_icon)[:, None, None, None]
    line = ((kind >= sc.p_icon) & (kind < sc.p_icon + sc.p_line))[:, None, None, None]
    outlined = ((kind >= sc.p_icon + sc.p_line) & (kind < sc.p_icon + sc.p_line + sc.p_outline))[:, None, None, None]
    flat = _u(gen, b, 3, 1, 1).expand_as(img)
    paper = _u(gen, b, 1, 1, 1, lo=0.85, hi=1.0).expand_as(img)
    icon_edge = icon & _coin(gen, b, 0.5)[:, None, None, None]
    out = torch.where(icon & mask, flat, img)
    out = torch.where(line, paper, out)
    return torch.where((line | outlined | icon_edge) & edge, ink.expand_as(img), out)


def _backgrounds(img: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, sc: StyleConfig) -> torch.Tensor:
    b, _, s, _ = img.shape
    kind = torch.rand(b, generator=gen)
    photo = (kind < sc.p_photo_bg)[:, None, None, None]
    dark = ((kind >= sc.p_photo_bg) & (kind < sc.p_photo_bg + sc.p_dark_bg))[:, None, None, None]
    bg = torch.where(photo, _photo_background(b, s, gen), _u(gen, b, 3, 1, 1, hi=0.2).expand_as(img))
    return torch.where((photo | dark) & ~mask, bg, img)


def _colour(img: torch.Tensor, gen: torch.Generator, sc: StyleConfig) -> torch.Tensor:
    b = img.shape[0]
    jitter = _coin(gen, b, sc.p_jitter)[:, None, None, None]
    bright = _u(gen, b, 1, 1, 1, lo=0.75, hi=1.25)
    contrast = _u(gen, b, 1, 1, 1, lo=0.7, hi=1.3)
    sat = _u(gen, b, 1, 1, 1, lo=0.3, hi=1.5)
    grey = img.mean(1, keepdim=True)
    mean = img.mean((1, 2, 3), keepdim=True)
    j = ((grey + (img - grey) * sat - mean) * contrast + mean) * bright
    img = torch.where(jitter, j.clamp(0, 1), img)
    gray = _coin(gen, b, sc.p_gray)[:, None, None, None]
    lum = (img * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    img = torch.where(gray, lum.expand_as(img), img)
    blur = _coin(gen, b, sc.p_blur)[:, None, None, None]
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None, :] / 256.0).expand(3, 1, 5, 5)
    blurred = F.conv2d(F.pad(img, (2, 2, 2, 2), mode="replicate"), k, groups=3)
    return torch.where(blur, blurred, img)


def low_resolution(img: torch.Tensor, side: int) -> torch.Tensor:
    """What a ``side``-px picture looks like after the encode path's resize back to [.., S, S]."""
    s = img.shape[-1]
    small = F.interpolate(img, size=(side, side), mode="area")
    return F.interpolate(small, size=(s, s), mode="bicubic", align_corners=False).clamp(0, 1)


def jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip of one [3, H, W] picture in [0, 1] (Pillow, 4:2:0 as most encoders)."""
    arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(out).permute(2, 0, 1)


def _encodings(img: torch.Tensor, gen: torch.Generator, sc: StyleConfig) -> torch.Tensor:
    b = img.shape[0]
    low = _coin(gen, b, sc.p_lowres)
    sides = torch.randint(32, 65, (b,), generator=gen)
    comp = _coin(gen, b, sc.p_jpeg)
    quality = torch.randint(20, 91, (b,), generator=gen)
    out = img.clone()
    for i in range(b):
        if low[i]:
            out[i] = low_resolution(out[i:i + 1], int(sides[i]))[0]
        if comp[i]:
            out[i] = jpeg(out[i], int(quality[i]))
    return out


def draw_training_images(points: torch.Tensor, normals: torch.Tensor, spacing: torch.Tensor,
                         gen: torch.Generator, render_cfg: RenderConfig, sc: StyleConfig = StyleConfig(),
                         azim_spread: float = 360.0) -> torch.Tensor:
    """Points [B, N, 3] (with their normals and k-NN spacing) -> styled pictures [B, 3, S, S] in [0, 1].

    Rendering runs on the points' device; the image-space styles run on the CPU (they are cheap next
    to the encoders, and JPEG needs Pillow)."""
    view = styled_view(points.shape[0], gen, sc, azim_spread)
    if "draw" in sc.families:
        points, normals, spacing = _sparse(points, normals, spacing, gen, sc.p_sparse)
    img, mask = render(points, view, render_cfg, normals, spacing, return_mask=True)
    img, mask = img.cpu(), mask.cpu()
    if "icon" in sc.families:
        img = _icons(img, mask, gen, sc)
    if "background" in sc.families:
        img = _backgrounds(img, mask, gen, sc)
    if "colour" in sc.families:
        img = _colour(img, gen, sc)
    if "encoding" in sc.families:
        img = _encodings(img, gen, sc)
    return img.to(points.device)
