"""The point-cloud renderer: shapes and ranges, determinism, z-buffer occlusion, backgrounds, camera
frame and orientation, k-NN normals. Small clouds and images only (the whole file runs in seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.renderer import (
    CANONICAL_AZIM,
    CANONICAL_DIST,
    RenderConfig,
    ViewParams,
    camera_frame,
    canonical_view,
    knn_geometry,
    random_view,
    render,
    render_canonical,
    to_uint8,
)
from model.synthetic import make_synthetic


@pytest.fixture(scope="module")
def shapes() -> torch.Tensor:
    """Three synthetic shapes (sphere, box, cylinder) of 512 points, [3, 512, 3]."""
    ds = make_synthetic(n_per_class=1, n_points=512, seed=0, classes=("sphere", "box", "cylinder"))
    return torch.from_numpy(ds.points)


def _view(azim: float, elev: float, dist: float = CANONICAL_DIST) -> ViewParams:
    v = canonical_view(1)
    v.azim[:], v.elev[:], v.dist[:] = azim, elev, dist
    return v


def _disc(centre: torch.Tensor, normal: torch.Tensor, radius: float, n: int, seed: int) -> torch.Tensor:
    """n points uniformly on a disc of ``radius`` around ``centre``, perpendicular to ``normal``, [n, 3]."""
    g = torch.Generator().manual_seed(seed)
    normal = normal / normal.norm()
    a = torch.linalg.cross(normal, torch.tensor([0.3, 0.5, 0.8]), dim=-1)
    a = a / a.norm()
    b = torch.linalg.cross(normal, a, dim=-1)
    rho = radius * torch.rand(n, generator=g).sqrt()
    phi = 2 * math.pi * torch.rand(n, generator=g)
    return centre + (rho * phi.cos())[:, None] * a + (rho * phi.sin())[:, None] * b


def _foreground(img: torch.Tensor, bg: float = 1.0) -> torch.Tensor:
    """[3, H, W] image on a plain ``bg`` background -> bool [H, W] of the pixels that are not background."""
    return (img != bg).any(dim=0)


# --- output format ----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [32, 64])
def test_output_shape_dtype_range(shapes: torch.Tensor, batch: int, size: int) -> None:
    cfg = RenderConfig(image_size=size)
    for view in (canonical_view(batch), random_view(batch, torch.Generator().manual_seed(batch))):
        img = render(shapes[:batch], view, cfg)
        assert img.shape == (batch, 3, size, size) and img.dtype == torch.float32
        assert torch.isfinite(img).all() and img.min() >= 0 and img.max() <= 1
    canon = render_canonical(shapes[:batch], cfg)
    assert canon.shape == (batch, 3, size, size)
    assert (canon < 1).any(dim=1).flatten(1).sum(1).min() > size  # each image shows an object
    u8 = to_uint8(canon)
    assert u8.shape == (batch, size, size, 3) and u8.dtype == torch.uint8


def test_render_canonical_accepts_one_cloud(shapes: torch.Tensor) -> None:
    cfg = RenderConfig(image_size=32)
    assert torch.equal(render_canonical(shapes[0], cfg), render_canonical(shapes[:1], cfg))


def test_bad_points_shape_raises() -> None:
    with pytest.raises(ValueError, match=r"\[B, N, 3\]"):
        render(torch.zeros(10, 3), canonical_view(1))


# --- determinism ------------------------------------------------------------------------------------


def _same_view(v1: ViewParams, v2: ViewParams) -> bool:
    pairs = [(getattr(v1, f), getattr(v2, f)) for f in v1.__dict__]
    return all(a is b is None or (a is not None and b is not None and torch.equal(a, b)) for a, b in pairs)


def test_canonical_view_is_deterministic(shapes: torch.Tensor) -> None:
    cfg = RenderConfig(image_size=64)
    a, b = render_canonical(shapes, cfg), render_canonical(shapes, cfg)
    assert torch.equal(a, b)  # bitwise
    v1, v2 = canonical_view(3), canonical_view(3)
    assert _same_view(v1, v2)


def test_random_view_reproducible_with_seed(shapes: torch.Tensor) -> None:
    cfg = RenderConfig(image_size=32)
    v1 = random_view(3, torch.Generator().manual_seed(7))
    v2 = random_view(3, torch.Generator().manual_seed(7))
    v3 = random_view(3, torch.Generator().manual_seed(8))
    assert _same_view(v1, v2)
    assert not torch.equal(v1.azim, v3.azim)
    assert torch.equal(render(shapes, v1, cfg), render(shapes, v2, cfg))
    assert not torch.equal(render(shapes, v1, cfg), render(shapes, v3, cfg))


def test_random_view_ranges() -> None:
    v = random_view(500, torch.Generator().manual_seed(0))
    lo, hi = CANONICAL_AZIM - 180, CANONICAL_AZIM + 180
    assert ((v.azim >= lo) & (v.azim <= hi)).all() and ((v.elev >= -15) & (v.elev <= 60)).all()
    assert ((v.dist >= 2.2) & (v.dist <= 3.2)).all()
    assert torch.allclose(v.light.norm(dim=-1), torch.ones(500), atol=1e-5)
    for t in (v.color, v.bg_top, v.bg_bottom):
        assert ((t >= 0) & (t <= 1)).all()
    assert v.azim.std() > 50  # actually spread over the circle
    narrow = random_view(500, torch.Generator().manual_seed(0), azim_spread=60.0)
    assert ((narrow.azim >= CANONICAL_AZIM - 30) & (narrow.azim <= CANONICAL_AZIM + 30)).all()
    assert narrow.azim.std() > 10


def test_precomputed_geometry_gives_the_same_image(shapes: torch.Tensor) -> None:
    """Training passes cached normals/spacing; that must be the image render() computes itself."""
    cfg = RenderConfig(image_size=32)
    view = random_view(3, torch.Generator().manual_seed(1))
    normals, spacing = knn_geometry(shapes, cfg.k)
    assert torch.equal(render(shapes, view, cfg, normals, spacing), render(shapes, view, cfg))


def test_batch_matches_single_renders(shapes: torch.Tensor) -> None:
    cfg = RenderConfig(image_size=32)
    view = random_view(3, torch.Generator().manual_seed(2))
    batched = render(shapes, view, cfg)
    for i in range(3):
        one = view.map(lambda t, i=i: t[i:i + 1])
        assert torch.allclose(render(shapes[i:i + 1], one, cfg)[0], batched[i], atol=1e-6)


# --- z-buffer and background ------------------------------------------------------------------------


def test_front_patch_hides_back_patch() -> None:
    """Two discs on the view ray through the image centre: the near one wins the centre pixels, and the
    bigger far one still shows around it."""
    cfg = RenderConfig(image_size=64)
    view = canonical_view(1)
    eye, rot = camera_frame(view)
    to_cam = (eye / eye.norm())[0]                      # unit vector origin -> camera
    front = _disc(0.4 * to_cam, to_cam, 0.15, 400, seed=0)
    back = _disc(-0.4 * to_cam, to_cam, 0.45, 3600, seed=1)  # same density, 3x the radius
    both = torch.cat([back, front])  # the back patch first: its points have the lower indices
    img_front, img_back, img_both = (render(p[None], view, cfg)[0] for p in (front, back, both))
    c = cfg.image_size // 2
    centre = (slice(None), slice(c - 2, c + 2), slice(c - 2, c + 2))
    assert _foreground(img_front)[centre[1:]].all() and _foreground(img_back)[centre[1:]].all()
    assert torch.equal(img_both[centre], img_front[centre])
    assert not torch.allclose(img_both[centre], img_back[centre])  # the depth cue tells them apart
    # outside the front disc's footprint the back disc is what is seen
    only_back = _foreground(img_back) & ~_foreground(img_front)
    assert only_back.sum() > 100
    assert torch.allclose(img_both[:, only_back], img_back[:, only_back], atol=1e-6)


def test_point_order_does_not_matter(shapes: torch.Tensor) -> None:
    cfg = RenderConfig(image_size=64)
    perm = torch.randperm(shapes.shape[1], generator=torch.Generator().manual_seed(0))
    a = render_canonical(shapes, cfg)
    b = render_canonical(shapes[:, perm], cfg)
    assert torch.allclose(a, b, atol=1e-5)


def test_background_colour() -> None:
    cfg = RenderConfig(image_size=64)
    small = _disc(torch.zeros(3), torch.tensor([1.0, 0.0, 0.0]), 0.2, 300, seed=0)[None]
    img = render_canonical(small, cfg)[0]
    fg = _foreground(img)
    assert 0 < fg.sum() < 0.25 * 64 * 64
    assert (img[:, ~fg] == 1.0).all()                      # canonical: white
    assert (img[:, :8, :] == 1.0).all() and (img[:, -8:, :] == 1.0).all()  # borders are empty
    # a training view with a vertical gradient: top row = bg_top, bottom row = bg_bottom
    view = canonical_view(1)
    view.bg_top[:] = torch.tensor([0.1, 0.2, 0.3])
    view.bg_bottom[:] = torch.tensor([0.9, 0.5, 0.0])
    img = render(small, view, cfg)[0]
    assert torch.allclose(img[:, 0, :], view.bg_top[0, :, None].expand(3, 64), atol=1e-6)
    assert torch.allclose(img[:, -1, :], view.bg_bottom[0, :, None].expand(3, 64), atol=1e-6)


def test_points_outside_the_frame_do_not_crash(shapes: torch.Tensor) -> None:
    cfg = RenderConfig(image_size=32)
    view = canonical_view(1)
    eye, _ = camera_frame(view)
    far = torch.tensor([[40.0, -30.0, 5.0], [0.0, 0.0, 25.0], [-3.0, 8.0, -9.0]])
    behind = 2.0 * eye                                   # behind the camera
    pts = torch.cat([shapes[0], far, behind])[None]
    img = render(pts, view, cfg)
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()
    # nothing at all in the frame: only background
    img = render(far[None], view, cfg)
    assert (img == 1.0).all()


def test_one_point_cloud_renders() -> None:
    img = render(torch.full((2, 1, 3), 0.01), canonical_view(2), RenderConfig(image_size=33))
    assert torch.isfinite(img).all() and img.shape == (2, 3, 33, 33)


# --- geometry ---------------------------------------------------------------------------------------


def test_knn_normals_of_a_plane() -> None:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 400, 2, generator=g) * 2 - 1
    pts = torch.cat([xy, torch.zeros(2, 400, 1)], dim=-1)
    normals, spacing = knn_geometry(pts, k=16)
    assert normals.shape == (2, 400, 3) and spacing.shape == (2, 400)
    assert (normals @ torch.tensor([0.0, 0.0, 1.0])).abs().min() > 0.99
    assert torch.allclose(normals.norm(dim=-1), torch.ones(2, 400), atol=1e-5)
    assert (spacing > 0).all() and spacing.max() < 0.5


@pytest.mark.parametrize("elev", [-90.0, -45.0, 0.0, 25.0, 89.0, 90.0])
@pytest.mark.parametrize("azim", [0.0, 35.0, 180.0, 300.0])
def test_camera_frame_orthonormal(azim: float, elev: float) -> None:
    view = _view(azim, elev)
    eye, rot = camera_frame(view)
    r = rot[0]
    assert torch.isfinite(r).all()
    assert torch.allclose(r @ r.T, torch.eye(3), atol=1e-5)
    # rows right, up, forward: x right, y up, z into the scene is a left-handed frame, so det = -1
    assert abs(abs(float(torch.linalg.det(r))) - 1) < 1e-5
    assert torch.allclose(eye[0].norm(), torch.tensor(CANONICAL_DIST))
    assert torch.allclose(r[2], -eye[0] / eye[0].norm(), atol=1e-5)  # looks at the origin
    if abs(elev) < 90:
        assert abs(float(r[0, 2])) < 1e-6                # no roll: "right" is horizontal
        assert float(r[1, 2]) > 0                        # "up" points up


def test_image_is_not_mirrored_or_upside_down() -> None:
    """Camera on +x (azimuth 0) with z up: +y is on the right of the image, +z at the top."""
    cfg = RenderConfig(image_size=64)
    view = _view(0.0, 0.0)
    for target, axis, sign in (([0.0, 0.7, 0.0], 1, 1), ([0.0, 0.0, 0.7], 0, -1)):
        blob = _disc(torch.tensor(target), torch.tensor([1.0, 0.0, 0.0]), 0.1, 200, seed=0)
        ys, xs = torch.nonzero(_foreground(render(blob[None], view, cfg)[0]), as_tuple=True)
        coord = (ys, xs)[axis].float().mean() - (cfg.image_size - 1) / 2
        assert sign * coord > 10


def test_azimuth_0_and_180_differ_for_an_asymmetric_shape() -> None:
    """A ball with an arm along +y: seen from +x the arm is on the right, from -x on the left."""
    cfg = RenderConfig(image_size=64)
    g = torch.Generator().manual_seed(0)
    ball = torch.nn.functional.normalize(torch.randn(600, 3, generator=g), dim=-1) * 0.4
    t = torch.rand(200, 1, generator=g)
    arm = torch.cat([torch.zeros(200, 1), 0.4 + 0.55 * t, torch.zeros(200, 1)], dim=-1)
    arm = arm + 0.04 * torch.randn(200, 3, generator=g)
    pts = torch.cat([ball, arm])[None].expand(2, -1, -1)
    view = canonical_view(2)
    view.azim[:] = torch.tensor([0.0, 180.0])
    view.elev[:] = 0.0
    img = render(pts, view, cfg)
    assert not torch.allclose(img[0], img[1], atol=0.05)
    fg0, fg1 = _foreground(img[0]), _foreground(img[1])
    mid = (cfg.image_size - 1) / 2
    x0 = torch.nonzero(fg0, as_tuple=True)[1].float().mean() - mid
    x1 = torch.nonzero(fg1, as_tuple=True)[1].float().mean() - mid
    assert x0 > 2 and x1 < -2                                 # arm on the right, then on the left
    assert torch.equal(fg0, fg1.flip(-1)) or (fg0 ^ fg1.flip(-1)).float().mean() < 0.05


def test_smallest_eigenvector_matches_numpy_and_keeps_the_device_and_dtype():
    from model.renderer import _smallest_eigenvector

    rng = np.random.default_rng(3)
    a = rng.normal(size=(50, 3, 3))
    cov = a @ a.transpose(0, 2, 1) + np.diag([0.0, 1e-3, 2e-3])      # symmetric, distinct eigenvalues
    got = _smallest_eigenvector(torch.from_numpy(cov).float())
    _, v = np.linalg.eigh(cov)
    want = v[..., 0]
    assert got.dtype == torch.float32 and got.shape == (50, 3)
    # an eigenvector up to sign: |<got, want>| = 1
    np.testing.assert_allclose(np.abs((got.numpy() * want).sum(-1)), 1.0, atol=1e-4)
    if torch.cuda.is_available():
        on_gpu = _smallest_eigenvector(torch.from_numpy(cov).float().cuda())
        assert on_gpu.is_cuda and torch.allclose(on_gpu.cpu(), got)
