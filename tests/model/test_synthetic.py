"""The synthetic primitive generator: format, determinism, and that points lie on each class's surface."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from model.dataset import load_dataset
from model.synthetic import (
    CLASSES,
    MAX_TILT_DEG,
    SyntheticShape,
    make_synthetic,
    normalise,
    sample_shape,
    write_synthetic,
)

TOL = 1e-9  # points are computed in float64 in the shape frame


def _shape(kind: str, n: int = 2048, seed: int = 1) -> SyntheticShape:
    return sample_shape(kind, n, np.random.default_rng(seed))


def test_shapes_dtypes_and_names() -> None:
    ds = make_synthetic(n_per_class=5, n_points=256, seed=3)
    n = 5 * len(CLASSES)
    assert ds.points.shape == (n, 256, 3) and ds.points.dtype == np.float32
    assert ds.labels.shape == (n,) and ds.labels.dtype == np.int64
    assert list(ds.classes) == list(CLASSES)
    assert np.array_equal(np.bincount(ds.labels), [5] * len(CLASSES))
    assert ds.names[0] == "sphere_0001" and ds.names[-1] == "capsule_0005"
    assert all(name.startswith(ds.classes[lab] + "_") for name, lab in zip(ds.names, ds.labels, strict=True))
    assert len(set(ds.names)) == n


def test_default_size_and_speed() -> None:
    t0 = time.perf_counter()
    ds = make_synthetic()
    elapsed = time.perf_counter() - t0
    assert ds.points.shape == (20 * len(CLASSES), 1024, 3)
    assert elapsed < 5.0, f"200 shapes took {elapsed:.2f} s (target < 1 s)"  # loose: shared CI cores


def test_normalised_unit_sphere_centred() -> None:
    ds = make_synthetic(n_per_class=4, seed=5)
    norms = np.linalg.norm(ds.points, axis=-1)
    assert np.isfinite(ds.points).all()
    assert norms.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(norms.max(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(ds.points.mean(axis=1), 0.0, atol=1e-5)


def test_sphere_norms_after_normalisation() -> None:
    ds = make_synthetic(n_per_class=3, classes=["sphere"], seed=2)
    norms = np.linalg.norm(ds.points, axis=-1)
    # the centroid of 1,024 surface samples is within a few % of the true centre
    assert norms.min() > 0.9


def test_deterministic_and_seed_dependent() -> None:
    a = make_synthetic(n_per_class=3, n_points=128, seed=7)
    b = make_synthetic(n_per_class=3, n_points=128, seed=7)
    c = make_synthetic(n_per_class=3, n_points=128, seed=8)
    assert np.array_equal(a.points, b.points) and np.array_equal(a.names, b.names)
    assert not np.allclose(a.points, c.points)


def test_shape_independent_of_selection() -> None:
    """``torus_0003`` is the same cloud whatever else was generated with it."""
    full = make_synthetic(n_per_class=5, n_points=64, seed=4)
    only = make_synthetic(n_per_class=3, n_points=64, seed=4, classes=["torus", "box"])
    assert list(only.classes) == ["torus", "box"] and only.labels.tolist() == [0, 0, 0, 1, 1, 1]
    i_full = int(np.flatnonzero(full.names == "torus_0003")[0])
    i_only = int(np.flatnonzero(only.names == "torus_0003")[0])
    assert np.array_equal(full.points[i_full], only.points[i_only])


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "synth.npz"
    ds = write_synthetic(path, n_per_class=3, n_points=512, seed=1)
    with np.load(path) as raw:
        assert raw["points"].dtype == np.float16 and raw["points"].shape == (24, 512, 3)
        assert raw["labels"].dtype == np.uint8
    back = load_dataset(path)
    np.testing.assert_allclose(back.points, ds.points, atol=1e-3)
    assert np.array_equal(back.labels, ds.labels)
    assert list(back.names) == list(ds.names) and list(back.classes) == list(CLASSES)
    assert np.linalg.norm(back.points, axis=-1).max() <= 1.0 + 1e-3


@pytest.mark.parametrize(
    "bad",
    [
        {"classes": ["blob"]},
        {"classes": []},
        {"classes": ["box", "box"]},
        {"n_per_class": 0},
        {"n_points": 0},
        {"seed": -1},
    ],
)
def test_invalid_arguments(bad: dict) -> None:
    with pytest.raises(ValueError):
        make_synthetic(**bad)


def test_pose_is_mostly_about_z() -> None:
    for seed in range(20):
        s = _shape("box", 64, seed)
        r = s.rotation
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
        tilt = math.degrees(math.acos(np.clip(r[2, 2], -1.0, 1.0)))
        assert tilt <= math.sqrt(2) * MAX_TILT_DEG + 1e-6
    yaws = [
        math.atan2(_shape("box", 8, s).rotation[1, 0], _shape("box", 8, s).rotation[0, 0]) for s in range(50)
    ]
    assert np.ptp(yaws) > math.pi  # yaw covers the circle, not just small angles


def test_dataset_points_are_the_normalised_posed_shape() -> None:
    ds = make_synthetic(n_per_class=2, n_points=300, seed=9, classes=["cone"])
    s = sample_shape("cone", 300, np.random.default_rng([9, CLASSES.index("cone"), 1]))
    np.testing.assert_allclose(ds.points[1], s.normalised(), atol=1e-6)
    np.testing.assert_allclose(s.normalised(), normalise(s.points @ s.rotation.T))


# --- geometry in the shape's own frame -----------------------------------------------------------


def _on_box(p: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    half = np.array([a, b, c])
    inside = (np.abs(p) <= half + TOL).all(axis=1)
    on_face = (np.abs(half - np.abs(p)) < 1e-7).any(axis=1)
    return inside & on_face


def test_sphere_surface() -> None:
    s = _shape("sphere")
    np.testing.assert_allclose(np.linalg.norm(s.points, axis=1), s.params["radius"], atol=TOL)


@pytest.mark.parametrize("kind", ["box", "plane"])
def test_box_and_plane_surface(kind: str) -> None:
    s = _shape(kind)
    a, b, c = s.params["half_x"], s.params["half_y"], s.params["half_z"]
    assert _on_box(s.points, a, b, c).all()
    if kind == "plane":
        assert c < 0.03 * max(a, b) and 0.75 <= b / a <= 1.0  # a thin, nearly square sheet


def test_box_faces_area_weighted() -> None:
    s = _shape("box", 40_000, seed=3)
    a, b, c = s.params["half_x"], s.params["half_y"], s.params["half_z"]
    p = s.points
    face_axis = np.argmin(np.abs(np.array([a, b, c]) - np.abs(p)), axis=1)
    got = np.bincount(face_axis, minlength=3) / len(p)
    areas = np.array([b * c, a * c, a * b])
    np.testing.assert_allclose(got, areas / areas.sum(), atol=0.015)


def test_cylinder_surface_and_caps_share() -> None:
    s = _shape("cylinder", 40_000)
    r, h = s.params["radius"], s.params["half_height"]
    rho, z = np.hypot(s.points[:, 0], s.points[:, 1]), s.points[:, 2]
    side = (np.abs(rho - r) < 1e-7) & (np.abs(z) <= h + TOL)
    cap = (np.abs(np.abs(z) - h) < 1e-7) & (rho <= r + TOL)
    assert (side | cap).all()
    cap_share = (2 * math.pi * r * r) / (2 * math.pi * r * r + 4 * math.pi * r * h)
    assert abs((cap & ~side).mean() - cap_share) < 0.015


def test_cone_surface() -> None:
    s = _shape("cone")
    r, height, z0 = s.params["radius"], s.params["height"], s.params["base_z"]
    rho, z = np.hypot(s.points[:, 0], s.points[:, 1]), s.points[:, 2] - z0
    side = (np.abs(rho - r * (1.0 - z / height)) < 1e-7) & (z >= -TOL) & (z <= height + TOL)
    base = (np.abs(z) < 1e-9) & (rho <= r + TOL)
    assert (side | base).all()
    assert side.sum() > base.sum() * 0.5  # both parts present (side area >= base area)


def test_torus_surface_and_area_weighting() -> None:
    s = _shape("torus", 40_000)
    big, small = s.params["major_radius"], s.params["minor_radius"]
    assert 0 < small < big
    rho, z = np.hypot(s.points[:, 0], s.points[:, 1]), s.points[:, 2]
    np.testing.assert_allclose(np.hypot(rho - big, z), small, atol=1e-9)
    # area element (R + r cos v): the outer half (rho > R) holds 1/2 + r / (pi R) of the points
    assert abs((rho > big).mean() - (0.5 + small / (math.pi * big))) < 0.015


def test_pyramid_surface() -> None:
    s = _shape("pyramid")
    a, b, height, z0 = s.params["half_x"], s.params["half_y"], s.params["height"], s.params["base_z"]
    x, y, z = s.points[:, 0], s.points[:, 1], s.points[:, 2] - z0
    base = (np.abs(z) < 1e-9) & (np.abs(x) <= a + TOL) & (np.abs(y) <= b + TOL)
    side = np.abs(np.maximum(np.abs(x) / a, np.abs(y) / b) - (1.0 - z / height)) < 1e-7
    assert (base | side).all()
    assert base.any() and side.any()


def test_capsule_surface() -> None:
    s = _shape("capsule")
    r, h = s.params["radius"], s.params["half_length"]
    z_on_axis = np.clip(s.points[:, 2], -h, h)
    dist_to_segment = np.hypot(np.hypot(s.points[:, 0], s.points[:, 1]), s.points[:, 2] - z_on_axis)
    np.testing.assert_allclose(dist_to_segment, r, atol=1e-9)
    assert (np.abs(s.points[:, 2]) > h).any() and (np.abs(s.points[:, 2]) < h).any()


@pytest.mark.parametrize("kind", CLASSES)
def test_every_class_samples_exact_count(kind: str) -> None:
    for n in (1, 7, 1024):
        s = _shape(kind, n)
        assert s.points.shape == (n, 3) and np.isfinite(s.points).all()
