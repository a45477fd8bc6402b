"""Normalisation (:func:`normalize_points`): raw points -> the model's fixed-size cloud in the unit sphere.

1. **Resample** to exactly ``n_points`` rows with ``numpy.random.default_rng(seed)``: with more points
   a uniform random subset without replacement (it keeps the sampling density of the input, like the
   i.i.d. surface samples of ModelNet-style training data, and is O(M)); with fewer, all points
   followed by ``n_points - M`` points drawn with replacement.
2. **Centre** on the centroid (mean) of the resampled points (the PointNet ``pc_normalize``
   convention), so the output mean is 0.
3. **Scale** so that the largest point norm is exactly 1 (unit sphere).

The result is float32 ``[n_points, 3]`` and deterministic for a given input and seed. The work is done
in float64 after dividing by the largest absolute coordinate, so even coordinates near the float64
limits neither overflow nor lose the shape.
"""

from __future__ import annotations

import math

import numpy as np

from model.io.contract import POINTS_PER_CLOUD, InputError


def normalize_points(points: np.ndarray, n_points: int = POINTS_PER_CLOUD, seed: int = 0) -> np.ndarray:
    """float32 ``[n_points, 3]``: resampled (seeded random subset / all + draws with replacement),
    centred on the centroid, scaled to max norm 1. Deterministic for a given input and seed.

    Raises :class:`InputError`: ``empty``, ``garbage`` (not an ``[M, 3]`` numeric array),
    ``non_finite``, ``zero_extent``.
    """
    n_points = int(n_points)
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("garbage", "points are not a numeric array") from None
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError("garbage", f"points must be an [M, 3] array, got shape {tuple(pts.shape)}")
    m = pts.shape[0]
    if m == 0:
        raise InputError("empty", "there are no points")
    with np.errstate(all="ignore"):
        if not np.isfinite(pts).all():
            raise InputError("non_finite", "points contain NaN or Inf values")
        if (pts.min(axis=0) == pts.max(axis=0)).all():
            raise InputError("zero_extent", f"all {m} points are identical (zero extent)")
        rng = np.random.default_rng(seed)
        if m > n_points:
            idx = rng.choice(m, size=n_points, replace=False)
        elif m < n_points:
            idx = np.concatenate([np.arange(m), rng.integers(0, m, size=n_points - m)])
        else:
            idx = np.arange(m)
        sel = pts[idx]
        if (sel.min(axis=0) == sel.max(axis=0)).all():
            # the subset happened to hit only copies of one point: swap in the farthest point
            idx[-1] = int(np.abs(pts - sel[0]).max(axis=1).argmax())
            sel = pts[idx]
        s0 = float(np.abs(sel).max())
        sel = sel / s0                       # |sel| <= 1: nothing below can overflow
        sel = sel - sel.mean(axis=0)
        radius = float(np.sqrt((sel * sel).sum(axis=1)).max())
        if not (radius > 0 and math.isfinite(radius)):
            raise InputError("zero_extent", "points have no measurable extent")
        out = (sel / radius).astype(np.float32)
    return out
