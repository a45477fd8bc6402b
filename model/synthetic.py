"""Synthetic point-cloud datasets of simple primitives, in the project's dataset format.

Eight classes (:data:`CLASSES`): sphere, box, cylinder, cone, torus, plane (a thin square sheet),
pyramid and capsule. Each shape is made in three steps:

1. **surface sampling** in the shape's own frame (z up, roughly centred at the origin): random sizes
   and aspect ratios, points drawn uniformly over the *surface* -- every face / part gets a share of
   the points proportional to its area (the torus by rejection on its area element);
2. **random pose**: a rotation about z by any angle, after a small tilt about x and y (at most
   :data:`MAX_TILT_DEG`), so shapes stay upright like ModelNet's aligned objects;
3. **normalisation** as in the ModelNet files: centroid at the origin, largest point norm 1.

Shapes are seeded per ``(seed, class, index)``, so ``torus_0003`` is the same cloud whatever
``n_per_class`` or ``classes`` are asked for. Pure numpy; 200 shapes of 1,024 points take about 0.1 s.

>>> ds = make_synthetic(n_per_class=2, seed=0)
>>> ds.points.shape, ds.names[:2].tolist()
((16, 1024, 3), ['sphere_0001', 'sphere_0002'])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.dataset import PointDataset, save_dataset

CLASSES: tuple[str, ...] = ("sphere", "box", "cylinder", "cone", "torus", "plane", "pyramid", "capsule")
#: Largest tilt (degrees) of a shape's up axis away from z in the random pose.
MAX_TILT_DEG = 10.0

_Rng = np.random.Generator


@dataclass(frozen=True)
class SyntheticShape:
    """One sampled shape: points in its own frame, its parameters and its pose.

    ``points`` are on the surface described by ``params`` (the shape's own frame, z up);
    :meth:`normalised` gives the cloud as stored in a dataset: ``points @ rotation.T``, centred on its
    centroid and scaled to max norm 1.
    """

    kind: str
    points: np.ndarray                      # float64 [P, 3], shape frame
    params: dict[str, float] = field(default_factory=dict)
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))  # [3, 3], shape frame -> world

    def posed(self) -> np.ndarray:
        return self.points @ self.rotation.T

    def normalised(self) -> np.ndarray:
        return normalise(self.posed())


def normalise(points: np.ndarray) -> np.ndarray:
    """Centre a cloud ``[P, 3]`` on its centroid and scale it to a largest norm of 1."""
    centred = points - points.mean(axis=0, keepdims=True)
    scale = float(np.linalg.norm(centred, axis=1).max())
    return centred / (scale if scale > 0 else 1.0)


# ---------------------------------------------------------------------------------------------------
# surface samplers (shape frame); each returns (points [n, 3], params)


def _split_by_area(n: int, areas: list[float], rng: _Rng) -> np.ndarray:
    a = np.asarray(areas, dtype=np.float64)
    return rng.multinomial(n, a / a.sum())


def _disc(n: int, radius: float, rng: _Rng) -> np.ndarray:
    """Uniform points on a disc of ``radius`` in the plane z = 0, [n, 3]."""
    rho = radius * np.sqrt(rng.random(n))
    phi = rng.uniform(0.0, 2.0 * math.pi, n)
    return np.stack([rho * np.cos(phi), rho * np.sin(phi), np.zeros(n)], axis=1)


def _unit_sphere(n: int, rng: _Rng) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return v / norms


def _sample_mesh(vertices: np.ndarray, faces: np.ndarray, n: int, rng: _Rng) -> np.ndarray:
    """Uniform points on a triangle mesh: triangles chosen by area, uniform barycentric inside."""
    tri = vertices[faces]                                           # [F, 3, 3]
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    idx = rng.choice(len(faces), size=n, p=areas / areas.sum())
    r1 = np.sqrt(rng.random(n))[:, None]
    r2 = rng.random(n)[:, None]
    t = tri[idx]
    return (1.0 - r1) * t[:, 0] + r1 * (1.0 - r2) * t[:, 1] + r1 * r2 * t[:, 2]


_BOX_FACES = np.array([
    [0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5],   # x = -a, x = +a
    [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],   # y = -b, y = +b
    [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3],   # z = -c, z = +c
])


def _box_surface(n: int, a: float, b: float, c: float, rng: _Rng) -> np.ndarray:
    corners = np.array([[x, y, z] for x in (-a, a) for y in (-b, b) for z in (-c, c)], dtype=np.float64)
    return _sample_mesh(corners, _BOX_FACES, n, rng)


def _sphere(n: int, rng: _Rng) -> tuple[np.ndarray, dict[str, float]]:
    r = rng.uniform(0.5, 1.5)
    return r * _unit_sphere(n, rng), {"radius": r}


def _box(n: int, rng: _Rng) -> tuple[np.ndarray, dict[str, float]]:
    a, b, c = rng.uniform(0.25, 1.0, 3)
    return _box_surface(n, a, b, c, rng), {"half_x": a, "half_y": b, "half_z": c}


def _plane(n: int, rng: _Rng) -> tuple[np.ndarray, dict[str, float]]:
    a = rng.uniform(0.5, 1.0)
    b = a * rng.uniform(0.8, 1.0)
    c = a * rng.uniform(0.005, 0.02)
    return _box_surface(n, a, b, c, rng), {"half_x": a, "half_y": b, "half_z": c}


def _cylinder(n: int, rng: _Rng) -> tuple[np.ndarray, dict[str, float]]:
    r = rng.uniform(0.2, 0.8)
    h = rng.uniform(0.2, 1.0)                      # half height
    n_side, n_top, n_bottom = _split_by_area(n, [2 * math.pi * r * 2 * h, math.pi * r * r,
                                                 math.pi * r * r], rng)
    phi = rng.uniform(0.0, 2.0 * math.pi, n_side)
    side = np.stack([r * np.cos(phi), r * np.sin(phi), rng.uniform(-h, h, n_side)], axis=1)
    top = _disc(n_top, r, rng) + [0.0, 0.0, h]
    bottom = _disc(n_bottom, r, rng) - [0.0, 0.0, h]
    return np.concatenate([side, top, bottom]), {"radius": r, "half_height": h}


def _cone(n: int, rng: _Rng) -> tuple[np.ndarray, dict[str, float]]:
    r = rng.uniform(0.3, 1.0)
    height = rng.uniform(0.5, 2.0)
    slant = math.hypot(r, height)
    n_side, n_base = _split_by_area(n, [math.pi * r * slant, math.pi * r * r], rng)
    t = np.sqrt(rng.random(n_side))                # distance from the apex / slant, area-uniform
    phi = rng.uniform(0.0, 2.0 * math.pi, n_side)
    side = np.stack([r * t * np.cos(phi), r * t * np.sin(phi), height * (1.0 - t)], axis=1)
    pts = np.concatenate([side, _disc(n_base, r, rng)]) - [0.0, 0.0, height / 4.0]  # centroid-ish at 0
    return pts, {"radius": r, "height": height, "base_z": -height / 4.0}


def _torus(n: int, rng: _Rng) -> tuple[np.ndarray, dict[str, float]]:
    big = rng.uniform(0.6, 1.0)
    small = big * rng.uniform(0.15, 0.45)
    chunks: list[np.ndarray] = []
    have = 0
    while have < n:                                 # rejection on the area element (R + r cos v)
        m = 2 * (n - have) + 16
        v = rng.uniform(0.0, 2.0 * math.pi, m)
        keep = v[rng.random(m) * (big + small) < big + small * np.cos(v)]
        chunks.append(keep)
        have += len(keep)
    v = np.concatenate(chunks)[:n]
    u = rng.uniform(0.0, 2.0 * math.pi, n)
    ring = big + small * np.cos(v)
    pts = np.stack([ring * np.cos(u), ring * np.sin(u), small * np.sin(v)], axis=1)
    return pts, {"major_radius": big, "minor_radius": small}


def _pyramid(n: int, rng: _Rng) -> tuple[np.ndarray, dict[str, float]]:
    a, b = rng.uniform(0.4, 1.0, 2)                # half sides of the rectangular base
    height = rng.uniform(0.5, 2.0)
    z0 = -height / 4.0
    verts = np.array([[-a, -b, z0], [a, -b, z0], [a, b, z0], [-a, b, z0], [0.0, 0.0, z0 + height]])
    faces = np.array([[0, 2, 1], [0, 3, 2], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])
    return _sample_mesh(verts, faces, n, rng), {"half_x": a, "half_y": b, "height": height, "base_z": z0}


def _capsule(n: int, rng: _Rng) -> tuple[np.ndarray, dict[str, float]]:
    r = rng.uniform(0.2, 0.6)
    h = rng.uniform(0.2, 1.0)                      # half length of the cylindrical part
    n_side, n_caps = _split_by_area(n, [2 * math.pi * r * 2 * h, 4 * math.pi * r * r], rng)
    phi = rng.uniform(0.0, 2.0 * math.pi, n_side)
    side = np.stack([r * np.cos(phi), r * np.sin(phi), rng.uniform(-h, h, n_side)], axis=1)
    caps = r * _unit_sphere(n_caps, rng)
    caps[:, 2] += np.where(caps[:, 2] >= 0, h, -h)  # upper half-sphere up, lower half down
    return np.concatenate([side, caps]), {"radius": r, "half_length": h}


_SAMPLERS: dict[str, Callable[[int, _Rng], tuple[np.ndarray, dict[str, float]]]] = {
    "sphere": _sphere, "box": _box, "cylinder": _cylinder, "cone": _cone,
    "torus": _torus, "plane": _plane, "pyramid": _pyramid, "capsule": _capsule,
}


def random_pose(rng: _Rng, max_tilt_deg: float = MAX_TILT_DEG) -> np.ndarray:
    """A rotation ``Rz(yaw) @ Ry(tilt_y) @ Rx(tilt_x)``: any yaw, tilts uniform in +-max_tilt_deg."""
    yaw = rng.uniform(0.0, 2.0 * math.pi)
    tx, ty = np.radians(rng.uniform(-max_tilt_deg, max_tilt_deg, 2))
    cx, sx = math.cos(tx), math.sin(tx)
    cy, sy = math.cos(ty), math.sin(ty)
    cz, sz = math.cos(yaw), math.sin(yaw)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    return rz @ ry @ rx


def sample_shape(kind: str, n_points: int = 1024, rng: _Rng | None = None) -> SyntheticShape:
    """Sample one shape of class ``kind``: surface points, random size and random pose."""
    if kind not in _SAMPLERS:
        raise ValueError(f"unknown synthetic class {kind!r}; choose from {list(CLASSES)}")
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    rng = np.random.default_rng() if rng is None else rng
    points, params = _SAMPLERS[kind](n_points, rng)
    # shuffle so that the parts are not in blocks (callers may take the first k points)
    points = points[rng.permutation(len(points))]
    params = {k: float(v) for k, v in params.items()}
    return SyntheticShape(kind, points, params, random_pose(rng))


def make_synthetic(n_per_class: int = 20, n_points: int = 1024, seed: int = 0,
                   classes: list[str] | None = None) -> PointDataset:
    """A synthetic dataset: ``n_per_class`` shapes of each class, ``n_points`` points each.

    Points are float32 ``[N, n_points, 3]`` (centroid 0, max norm 1, z up), labels int64 index
    ``classes`` (all of :data:`CLASSES` by default, in that order), names ``"<class>_<0001..>"``.
    """
    classes = list(CLASSES) if classes is None else list(classes)
    unknown = [c for c in classes if c not in _SAMPLERS]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {list(CLASSES)}, got {classes}")
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    n = n_per_class * len(classes)
    points = np.empty((n, n_points, 3), dtype=np.float32)
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), n_per_class)
    names: list[str] = []
    for ci, cls in enumerate(classes):
        for i in range(n_per_class):
            rng = np.random.default_rng([seed, CLASSES.index(cls), i])
            points[ci * n_per_class + i] = sample_shape(cls, n_points, rng).normalised()
            names.append(f"{cls}_{i + 1:04d}")
    return PointDataset(points, labels, np.asarray(names, dtype=str), np.asarray(classes, dtype=str),
                        source=f"synthetic(seed={seed})")


def write_synthetic(path: str | Path, *, dtype: str = "float16", n_per_class: int = 20,
                    n_points: int = 1024, seed: int = 0, classes: list[str] | None = None) -> PointDataset:
    """Generate with :func:`make_synthetic` and save to ``path`` (``.npz``, ``dtype`` points); returns it."""
    ds = make_synthetic(n_per_class=n_per_class, n_points=n_points, seed=seed, classes=classes)
    save_dataset(path, ds.points, ds.labels, ds.names, ds.classes, dtype=dtype)
    return ds
