#!/usr/bin/env python3
"""A uint8-quantised copy of a dataset file, small enough to carry to the GPU machine, and its restore.

    python scripts/quantize_dataset.py IN.npz OUT.npz                 # quantise (prints the error)
    python scripts/quantize_dataset.py --restore Q.npz OUT.npz        # back to the dataset format
    python scripts/quantize_dataset.py --restore Q.npz OUT.npz --check IN.npz   # ... and compare

Quantising: every coordinate x in [lo, hi] becomes ``q = floor((x - lo) / scale)`` (clipped to
0..255) with ``scale = (hi - lo) / 256``, and is restored as the centre of its cell,
``offset + scale * q`` with ``offset = lo + scale / 2``. For points in the unit sphere (the
documented format) ``[lo, hi] = [-1, 1]``: ``scale = 2**-7``, every restored value
``(2q - 255) / 256`` is exact in float16, so the restored float16 file is off by at most
``2**-8 = 0.0039`` per coordinate. Data outside [-1, 1] uses its own min / max (and the float16
rounding adds to the error). Quantising computes the error the restore will have and refuses
(exit status 1) when it exceeds ``--max-error`` (default 0.004).

The quantised file is an ``.npz`` with ``points_axes_uint8`` uint8 [3, N, P] (axis-major: it
compresses about 1 MB better than [N, P, 3] on ModelNet40), ``scale`` and ``offset`` (float64
scalars), ``labels``, ``names``, ``classes`` (as in the source), ``max_abs_error`` (float64: the
restore's error against the source) and ``source_sha256``. It has no ``points`` array, so
``model.dataset.load_dataset`` refuses it with a clear message instead of training on codes.

The restored file is a standard dataset (float16 points, see ``model/dataset.py``); its bytes and
sha256 differ from the source's, so evaluations on it record another data sha256.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.dataset import DatasetError, load_dataset, save_dataset  # noqa: E402

FORMAT = "cmah-quantized-points-v1"
LEVELS = 256
DEFAULT_MAX_ERROR = 0.004


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
        raise SystemExit(f"quantize_dataset: max abs error {err:.6f} exceeds --max-error {max_error}; "
                         f"not writing {dest}")
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
        raise SystemExit(f"quantize_dataset: {src}: no such file")
    with np.load(src, allow_pickle=False) as z:
        if "points_axes_uint8" not in z.files or "format" not in z.files or str(z["format"]) != FORMAT:
            raise SystemExit(f"quantize_dataset: {src}: not a quantised dataset ({FORMAT}); found {sorted(z.files)}")
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", type=Path, help="dataset .npz (or, with --restore, a quantised .npz)")
    p.add_argument("output", type=Path)
    p.add_argument("--restore", action="store_true", help="write the standard dataset of a quantised file")
    p.add_argument("--check", type=Path, metavar="ORIGINAL.npz",
                   help="with --restore: compare the restored points with this file (labels, names too)")
    p.add_argument("--no-compress", action="store_true", help="with --restore: write an uncompressed .npz")
    p.add_argument("--max-error", type=float, default=DEFAULT_MAX_ERROR,
                   help=f"largest max abs point error accepted (default {DEFAULT_MAX_ERROR})")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    try:
        if not args.restore:
            err = quantize_file(args.input, args.output, args.max_error)
            size = args.output.stat().st_size
            print(f"wrote {args.output} ({size / 1e6:.1f} MB, from {args.input.stat().st_size / 1e6:.1f} MB) in "
                  f"{time.monotonic() - t0:.1f} s; max abs error after restore: {err:.6f}")
            return 0
        info = restore_file(args.input, args.output, compress=not args.no_compress)
        line = (f"wrote {args.output}: {info['shapes']} shapes x {info['points']} points, {info['classes']} classes "
                f"(loader accepts it) in {time.monotonic() - t0:.1f} s; max abs error vs the source "
                f"(recorded when quantising): {info['max_abs_error']:.6f}")
        if args.check:
            orig, rest = load_dataset(args.check), load_dataset(args.output)
            if orig.points.shape != rest.points.shape:
                raise SystemExit(f"quantize_dataset: --check: shapes differ {orig.points.shape} vs {rest.points.shape}")
            err = float(np.abs(orig.points.astype(np.float64) - rest.points.astype(np.float64)).max())
            same = (np.array_equal(orig.labels, rest.labels) and np.array_equal(orig.names, rest.names)
                    and np.array_equal(orig.classes, rest.classes))
            line += f"; measured against {args.check}: {err:.6f}, labels/names/classes {'equal' if same else 'DIFFER'}"
            if err > args.max_error or not same:
                print(line)
                return 1
        print(line)
        return 0
    except DatasetError as exc:
        print(f"quantize_dataset: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
