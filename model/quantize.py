"""A uint8-quantised copy of a dataset file, small enough to carry to the GPU machine, and its restore.

Quantising: every coordinate x in [lo, hi] becomes ``q = floor((x - lo) / scale)`` (clipped to
0..255) with ``scale = (hi - lo) / 256``, and is restored as the centre of its cell,
``offset + scale * q`` with ``offset = lo + scale / 2``. For points in the unit sphere (the
documented format) ``[lo, hi] = [-1, 1]``: ``scale = 2**-7``, every restored value
``(2q - 255) / 256`` is exact in float16, so the restored float16 file is off by at most
``2**-8 = 0.0039`` per coordinate. Data outside [-1, 1] uses its own min / max (and the float16
rounding adds to the error). Quantising computes the error the restore will have and refuses
(:class:`QuantizeError`) when it exceeds ``max_error`` (default 0.004).

The quantised file is an ``.npz`` with ``points_axes_uint8`` uint8 [3, N, P] (axis-major: it
compresses about 1 MB better than [N, P, 3] on ModelNet40), ``scale`` and ``offset`` (float64
scalars), ``labels``, ``names``, ``classes`` (as in the source), ``max_abs_error`` (float64: the
restore's error against the source) and ``source_sha256``. It has no ``points`` array, so
:func:`model.dataset.load_dataset` refuses it with a clear message instead of training on codes.

The restored file is a standard dataset (float16 points, see :mod:`model.dataset`); its bytes and
sha256 differ from the source's, so evaluations on it record another data sha256.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import DatasetError, load_dataset, save_dataset

FORMAT = "cmah-quantized-points-v1"
LEVELS = 256
DEFAULT_MAX_ERROR = 0.004


class QuantizeError(ValueError):
    """A quantisation refused (error above the bound) or a file that is not a quantised dataset."""


def quantize_points(points: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``points [N, P, 3]`` -> ``(uint8 [3, N, P], scale, offset)``: cell index and cell centre map."""
    p = np.asarray(points, dtype=np.float64)
    lo, hi = float(p.min()), float(p.max())
    if lo >= -1.0 and hi <= 1.0:
        lo, hi = -1.0, 1.0                      # the documented unit sphere: float16-exact levels
    elif hi == lo:
        hi = lo + 1.0
    scale = (hi - lo) / LEVELS
    q = np.clip(np.floor((p - lo) / scale), 0, LEVELS - 1).astype(np.uint8)
    return np.ascontiguousarray(q.transpose(2, 0, 1)), scale, lo + scale / 2


def dequantize_points(q_axes: np.ndarray, scale: float, offset: float, dtype: str = "float16") -> np.ndarray:
    """The inverse of :func:`quantize_points`: ``uint8 [3, N, P]`` -> ``[N, P, 3]`` cell centres."""
    if q_axes.ndim != 3 or q_axes.shape[0] != 3 or q_axes.dtype != np.uint8:
        raise DatasetError(f"quantised points must be uint8 [3, N, P], got {q_axes.dtype} {list(q_axes.shape)}")
    p = offset + scale * q_axes.astype(np.float64)
    return np.ascontiguousarray(p.transpose(1, 2, 0)).astype(dtype)


def quantize_file(src: Path, dest: Path, max_error: float = DEFAULT_MAX_ERROR) -> float:
    """Write the quantised copy of dataset ``src``; returns the restore's max abs error (checked)."""
    ds = load_dataset(src)                      # validates the source (points as float32)
    with np.load(src, allow_pickle=False) as z:
        src_points = z["points"]                # the stored values (float16 for ModelNet40)
        labels = z["labels"]
    q, scale, offset = quantize_points(src_points)
    restored = dequantize_points(q, scale, offset, "float16")
    err = float(np.abs(restored.astype(np.float64) - src_points.astype(np.float64)).max())
    if not err <= max_error:
        raise QuantizeError(f"max abs error {err:.6f} exceeds --max-error {max_error}; not writing {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp.npz")
    np.savez_compressed(tmp, format=np.array(FORMAT), points_axes_uint8=q, scale=np.float64(scale),
                        offset=np.float64(offset), labels=labels, names=ds.names, classes=ds.classes,
                        max_abs_error=np.float64(err), source_sha256=np.array(ds.sha256))
    tmp.replace(dest)
    return err


def restore_file(src: Path, dest: Path, compress: bool = True) -> dict:
    """Write the standard-format dataset (float16 points) of quantised file ``src``; validates it."""
    if not src.is_file():
        raise QuantizeError(f"{src}: no such file")
    with np.load(src, allow_pickle=False) as z:
        if "points_axes_uint8" not in z.files or "format" not in z.files or str(z["format"]) != FORMAT:
            raise QuantizeError(f"{src}: not a quantised dataset ({FORMAT}); found {sorted(z.files)}")
        points = dequantize_points(z["points_axes_uint8"], float(z["scale"]), float(z["offset"]), "float16")
        labels, names, classes = z["labels"], z["names"], z["classes"]
        info = {"max_abs_error": float(z["max_abs_error"]), "source_sha256": str(z["source_sha256"])}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp.npz")
    if compress:
        save_dataset(tmp, points, labels, names, classes, dtype="float16")
    else:  # as save_dataset, uncompressed (seconds faster for ModelNet40; the GPU machine has the disk)
        np.savez(tmp, points=points, labels=np.asarray(labels, dtype=np.uint8 if len(classes) <= 256 else np.int64),
                 names=np.asarray(names, dtype=str), classes=np.asarray(classes, dtype=str))
    tmp.replace(dest)
    ds = load_dataset(dest)                     # the loader must accept it (raises DatasetError otherwise)
    info.update(shapes=len(ds), points=int(ds.points.shape[1]), classes=len(ds.classes), sha256=ds.sha256)
    return info


def compare_datasets(original: Path, restored: Path) -> tuple[float, bool]:
    """``(max abs point difference, labels / names / classes equal)`` of two dataset files of one shape."""
    orig, rest = load_dataset(original), load_dataset(restored)
    if orig.points.shape != rest.points.shape:
        raise QuantizeError(f"--check: shapes differ {orig.points.shape} vs {rest.points.shape}")
    err = float(np.abs(orig.points.astype(np.float64) - rest.points.astype(np.float64)).max())
    same = (np.array_equal(orig.labels, rest.labels) and np.array_equal(orig.names, rest.names)
            and np.array_equal(orig.classes, rest.classes))
    return err, same
