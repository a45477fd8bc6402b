"""A 3D file -> raw points (:func:`read_points`) -> the model's cloud (:func:`load_points`).

Mesh sampling
-------------
Files with faces are sampled on the surface, area-weighted: ``min(MAX_POINTS, max(8 *
POINTS_PER_CLOUD, n_vertices))`` samples, each picking a triangle with probability proportional to its
area (cumulative-area search) and a uniform point in it (``sqrt`` barycentric trick), from
``numpy.random.default_rng(seed)``. Isolated vertices not used by any face are ignored. If every face
has zero area the vertices are used as the point cloud instead. Fewer than ``MIN_POINTS`` raw points
(for point clouds) -> ``too_few_points``; more than ``MAX_POINTS`` vertices -> ``too_many_points``.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from model.io.clouds import parse_npy, parse_pcd, parse_xyz
from model.io.contract import (
    DEFAULT_MAX_BYTES,
    MAX_POINTS,
    MESH_SAMPLES,
    MIN_POINTS,
    POINTS_PER_CLOUD,
    InputError,
    plural,
    read_source,
)
from model.io.normalize import normalize_points
from model.io.off_obj import parse_obj, parse_off
from model.io.parsing import Geometry, check_vertex_count
from model.io.ply import parse_ply
from model.io.sniff import sniff_3d_format

logger = logging.getLogger(__name__)

_PARSERS = {"ply": parse_ply, "off": parse_off, "obj": parse_obj, "pcd": parse_pcd, "xyz": parse_xyz,
            "npy": parse_npy}


def _sample_surface(v: np.ndarray, tris: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray | None:
    """``n`` area-weighted uniform samples on the triangles; None if the total area is zero."""
    lo, hi = v.min(axis=0), v.max(axis=0)
    centre = lo / 2 + hi / 2
    scale = float(np.abs(v - centre).max()) if v.size else 0.0
    if not scale > 0 or not math.isfinite(scale):
        return None
    vs = (v - centre) / scale  # coordinates in [-1, 1]: the cross products cannot overflow

    def corners(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return vs[t[:, 0]], vs[t[:, 1]], vs[t[:, 2]]

    area = np.empty(len(tris), dtype=np.float64)
    step = 1 << 20
    for i in range(0, len(tris), step):
        a, b, c = corners(tris[i:i + step])
        area[i:i + step] = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    cdf = np.cumsum(area)
    total = float(cdf[-1]) if cdf.size else 0.0
    if not total > 0 or not math.isfinite(total):
        return None
    pick = np.minimum(np.searchsorted(cdf, rng.random(n) * total, side="right"), len(tris) - 1)
    r1 = np.sqrt(rng.random((n, 1)))
    r2 = rng.random((n, 1))
    a, b, c = corners(tris[pick])
    pts = (1 - r1) * a + r1 * (1 - r2) * b + r1 * r2 * c
    return pts * scale + centre


def _geometry_to_points(g: Geometry, seed: int) -> np.ndarray:
    v = np.asarray(g.vertices, dtype=np.float64).reshape(-1, 3)
    check_vertex_count(len(v), g.what)
    if not np.isfinite(v).all():
        bad = int((~np.isfinite(v).all(axis=1)).sum())
        raise InputError("non_finite", f"points contain NaN or Inf values ({bad} of {len(v)} points)")
    if g.triangles is not None and len(g.triangles):
        tris = g.triangles
        lo, hi = int(tris.min()), int(tris.max())
        if lo < 0 or hi >= len(v):
            badi = lo if lo < 0 else hi
            raise InputError("garbage", f"{g.what} face references vertex index {badi} but there are only "
                                        f"{plural(len(v), 'vertex')} (valid 0..{len(v) - 1})")
        n = min(MAX_POINTS, max(MESH_SAMPLES, len(v)))
        pts = _sample_surface(v, tris, n, np.random.default_rng(seed))
        if pts is not None and np.isfinite(pts).all():
            return pts
        logger.info("%s: all %d faces have zero area; using the vertices as points", g.what, len(tris))
    if len(v) < MIN_POINTS:
        raise InputError("too_few_points", f"{g.what} has {len(v)} point{'s' if len(v) != 1 else ''}, "
                                           f"need at least {MIN_POINTS}")
    if (v.min(axis=0) == v.max(axis=0)).all():
        raise InputError("zero_extent", f"all {len(v)} points are identical (zero extent)")
    return v


def read_points(source: str | os.PathLike | bytes, *, name: str | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES, seed: int = 0) -> np.ndarray:
    """Raw points float64 ``[M, 3]`` of a 3D file given as a path or bytes (a ``str`` is a path).

    Meshes are sampled on their surface (area-weighted, seeded; see the module docstring), point
    clouds are returned as stored. ``name`` is a file-name hint (defaults to the path's base name).
    Raises :class:`InputError` for anything unusable; no other exception escapes for any input bytes.
    """
    data, name = read_source(source, max_bytes, name)
    fmt = sniff_3d_format(data, name)
    try:
        with np.errstate(all="ignore"):
            geom = _PARSERS[fmt](data, max_bytes)
            pts = _geometry_to_points(geom, seed)
    except InputError:
        raise
    except MemoryError:
        raise InputError("too_large", f"not enough memory to read this {fmt.upper()} file") from None
    except RecursionError:
        raise InputError("garbage", f"could not parse the {fmt.upper()} file") from None
    except Exception as exc:  # never let a parser error escape as anything but InputError
        logger.debug("unexpected error parsing %s data", fmt, exc_info=True)
        raise InputError("garbage", f"could not parse the {fmt.upper()} file: {type(exc).__name__}: "
                                    f"{str(exc)[:200]}") from None
    return pts


def load_points(source: str | os.PathLike | bytes, *, name: str | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES, n_points: int = POINTS_PER_CLOUD,
                seed: int = 0) -> np.ndarray:
    """:func:`read_points` then :func:`normalize_points`: float32 ``[n_points, 3]`` in the unit sphere."""
    return normalize_points(read_points(source, name=name, max_bytes=max_bytes, seed=seed),
                            n_points=n_points, seed=seed)
