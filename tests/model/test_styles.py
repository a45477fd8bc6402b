"""Training-picture styles (model.styles), each family on synthetic inputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model import styles as S
from model.renderer import RenderConfig, knn_geometry, random_view, render
from model.synthetic import make_synthetic

RC = RenderConfig(image_size=48)
NONE = dict(p_sphere_view=0, p_sparse=0, p_toon=0, p_icon=0, p_line=0, p_outline=0, p_photo_bg=0,
            p_dark_bg=0, p_gray=0, p_blur=0, p_jitter=0, p_lowres=0, p_jpeg=0)


def _only(**p: float) -> S.StyleConfig:
    return S.StyleConfig(**{**NONE, **p})


def _shapes(n: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pts = torch.from_numpy(make_synthetic(n_per_class=1, n_points=256, seed=0).points[:n]).float()
    return (pts, *knn_geometry(pts, 8))


def _square(b: int = 2, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(b, 1, size, size, dtype=torch.bool)
    mask[:, :, 3:9, 3:9] = True
    img = torch.full((b, 3, size, size), 0.9)
    img[:, :, 3:9, 3:9] = 0.4
    return img, mask


def test_default_view_options_change_nothing():
    pts, normals, spacing = _shapes()
    view = random_view(len(pts), torch.Generator().manual_seed(0))
    plain = render(pts, view, RC, normals, spacing)
    same = dataclasses.replace(view, splat=torch.ones(len(pts)), fill=torch.full((len(pts),), RC.fill),
                               shift=torch.zeros(len(pts), 2), toon=torch.zeros(len(pts)))
    assert torch.allclose(render(pts, same, RC, normals, spacing), plain, atol=1e-6)


def test_framing_and_drawing_options_act():
    pts, normals, spacing = _shapes()
    view = random_view(len(pts), torch.Generator().manual_seed(0))
    _, mask = render(pts, view, RC, normals, spacing, return_mask=True)
    small = dataclasses.replace(view, fill=torch.full((len(pts),), 0.4))
    _, mask_small = render(pts, small, RC, normals, spacing, return_mask=True)
    assert (mask_small.sum((1, 2, 3)) < mask.sum((1, 2, 3))).all()
    right = dataclasses.replace(view, shift=torch.tensor([[0.5, 0.0]]).expand(len(pts), 2))
    _, mask_right = render(pts, right, RC, normals, spacing, return_mask=True)
    cols = torch.arange(RC.image_size).float()
    centre = (mask.float().sum(2) * cols).sum(-1) / mask.float().sum((2, 3))
    centre_right = (mask_right.float().sum(2) * cols).sum(-1) / mask_right.float().sum((2, 3))
    assert (centre_right - centre > 5).all()                           # half a half-frame = 12 px
    toon = dataclasses.replace(view, toon=torch.full((len(pts),), 2.0))
    flat_rc = dataclasses.replace(RC, depth_cue=0.0)
    smooth = render(pts, view, flat_rc, normals, spacing)
    img = render(pts, toon, flat_rc, normals, spacing)
    for b in range(len(pts)):                       # bands (0, 1/2, 1) x specular on / off: <= 6 shades
        shades = img[b].reshape(3, -1)[0][mask[b].reshape(-1)]
        assert len(torch.unique(shades)) <= 6
        assert len(torch.unique(smooth[b].reshape(3, -1)[0][mask[b].reshape(-1)])) > 20


def test_outline_is_the_border_ring():
    _, mask = _square()
    thin = S._outline(mask, torch.tensor([1, 2]))
    ring = mask.clone()
    ring[:, :, 4:8, 4:8] = False                                       # the square's own edge pixels
    assert torch.equal(thin[0], ring[0])
    outer = torch.zeros_like(mask)
    outer[:, :, 2:10, 2:10] = True
    outer[:, :, 3:9, 3:9] = False
    assert torch.equal(thin[1], (ring | outer)[1])


def test_icons_are_flat_and_lines_are_ink_on_paper():
    img, mask = _square()
    gen = torch.Generator().manual_seed(0)
    icon = S._icons(img, mask, gen, _only(p_icon=1.0))
    inside = mask.clone()
    inside[:, :, 3:9, 3:9] = False
    inside[:, :, 4:8, 4:8] = True                                      # away from a possible outline
    for b in range(2):
        assert len(torch.unique(icon[b].permute(1, 2, 0)[inside[b, 0]], dim=0)) == 1
        away = ~S._dilate(mask, 1)[b, 0]                               # beyond a 2-px outline
        assert torch.equal(icon[b][:, away], img[b][:, away])
    line = S._icons(img, mask, gen, _only(p_line=1.0))
    edge = S._outline(mask, torch.ones(2))
    for b in range(2):
        paper = line[b][:, ~mask[b, 0] & ~S._dilate(mask, 1)[b, 0]]
        assert paper.min() >= 0.85 and torch.unique(paper).numel() == 1
        assert line[b][:, edge[b, 0]].max() <= 0.3


def test_dark_and_photo_backgrounds_leave_the_object():
    img, mask = _square()
    dark = S._backgrounds(img, mask, torch.Generator().manual_seed(0), _only(p_dark_bg=1.0))
    assert dark[:, :, ~mask[0, 0]].max() <= 0.2
    assert torch.equal(dark[:, :, mask[0, 0]], img[:, :, mask[0, 0]])
    photo = S._backgrounds(img, mask, torch.Generator().manual_seed(0), _only(p_photo_bg=1.0))
    assert photo[:, :, ~mask[0, 0]].std() > 0.05                      # clutter, not a plain colour


def test_grayscale_and_blur():
    img = torch.rand(3, 3, 16, 16)
    gray = S._colour(img, torch.Generator().manual_seed(0), _only(p_gray=1.0))
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    blur = S._colour(img, torch.Generator().manual_seed(0), _only(p_blur=1.0))
    assert blur.std() < img.std()
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(S._colour(flat, torch.Generator().manual_seed(0), _only(p_blur=1.0)), flat)


def test_low_resolution_and_jpeg():
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2
    img = checker.float().expand(1, 3, 64, 64)
    low = S.low_resolution(img, 32)
    assert low.shape == img.shape and torch.allclose(low, torch.full_like(low, 0.5), atol=0.02)
    flat = torch.full((1, 3, 64, 64), 0.25)
    assert torch.allclose(S.low_resolution(flat, 40), flat, atol=1e-5)
    pic = torch.rand(3, 40, 56)
    out = S.jpeg(pic, 30)
    assert out.shape == pic.shape and not torch.equal(out, pic)
    smooth = torch.linspace(0, 1, 56).expand(3, 40, 56).clone()
    assert (S.jpeg(smooth, 90) - smooth).abs().mean() < 0.02


def test_training_pictures_are_seeded_and_families_switch():
    pts, normals, spacing = _shapes()
    a = S.draw_training_images(pts, normals, spacing, torch.Generator().manual_seed(3), RC)
    b = S.draw_training_images(pts, normals, spacing, torch.Generator().manual_seed(3), RC)
    assert a.shape == (4, 3, 48, 48) and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    plain = S.draw_training_images(pts, normals, spacing, torch.Generator().manual_seed(3), RC,
                                   S.StyleConfig(families=()))
    ref = render(pts, random_view(4, torch.Generator().manual_seed(3)), RC, normals, spacing)
    assert torch.equal(plain, ref)                                     # no family: the renderer's views
    with pytest.raises(ValueError, match="unknown style families"):
        S.StyleConfig(families=("draw", "oil painting"))
