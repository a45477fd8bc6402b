"""Renderer throughput: images/s, with the k-NN normal estimation timed apart from splatting + shading.

    .venv/bin/python bench/render.py [--batches 64 256] [--sizes 112 224] [--devices cpu cuda]
                                     [--repeats 3] [--threads N] [--data FILE.npz]

For every device, batch size and image size it times, after one warm-up call,

* ``knn``   -- :func:`model.renderer.knn_geometry` (PCA normals + k-NN spacing) of the batch; it does
  not depend on the image size, so it is measured once per (device, batch) and repeated in both rows;
* ``splat`` -- :func:`model.renderer.render` with those normals/spacing passed in (projection, z-buffer,
  shading, background): the training path, where the geometry is cached per shape;

and prints a markdown table (median, min and max of ``--repeats`` runs) with images/s (from the
medians) for the splat-only path and end to end (knn + splat). Clouds are the first ``batch`` shapes
of ``--data`` (ModelNet40, 1,024 points) or synthetic primitives when the file is missing; views are
seeded ``random_view`` samples.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from model.device import cpu_name
from model.renderer import DEFAULT_K, RenderConfig, knn_geometry, random_view, render

ROOT = Path(__file__).resolve().parents[1]


def load_points(path: str, n: int) -> tuple[torch.Tensor, str]:
    if Path(path).is_file():
        from model.dataset import load_dataset

        ds = load_dataset(path)
        pts = ds.points[:n]
        source = Path(path).name
    else:
        from model.synthetic import make_synthetic

        ds = make_synthetic(n_per_class=-(-n // 8), n_points=1024, seed=0)
        pts = ds.points[:n]
        source = "synthetic primitives"
    if len(pts) < n:  # fewer shapes than the batch: repeat them
        pts = np.concatenate([pts] * -(-n // len(pts)))[:n]
    return torch.from_numpy(np.ascontiguousarray(pts)).float(), source


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` runs of ``fn()``, after one warm-up run."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def fmt(times: list[float]) -> str:
    """'median (min-max)' in milliseconds."""
    ms = [t * 1e3 for t in times]
    return f"{statistics.median(ms):,.0f} ({min(ms):,.0f}-{max(ms):,.0f})"


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA: {torch.cuda.get_device_name(device)}"
    n = torch.get_num_threads()
    return f"CPU: {cpu_name()} ({n} torch thread{'s' if n != 1 else ''}, {os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's default)")
    ap.add_argument("--k", type=int, default=DEFAULT_K)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "modelnet40_train.npz"))
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    points_all, source = load_points(args.data, max(args.batches))
    print(f"# renderer benchmark: {source}, {points_all.shape[1]} points/shape, k={args.k}, "
          f"torch {torch.__version__}, median of {args.repeats} after 1 warm-up", flush=True)

    rows = []
    for dev_name in devices:
        device = torch.device(dev_name)
        label = device_label(device)
        for batch in args.batches:
            pts = points_all[:batch].to(device)
            t_knn = timed(lambda pts=pts: knn_geometry(pts, args.k), device, args.repeats)
            normals, spacing = knn_geometry(pts, args.k)
            view = random_view(batch, torch.Generator().manual_seed(0), device=device)
            for size in args.sizes:
                cfg = RenderConfig(image_size=size, k=args.k)
                t_splat = timed(lambda pts=pts, cfg=cfg, n=normals, s=spacing, v=view:
                                render(pts, v, cfg, n, s), device, args.repeats)
                rows.append((label, batch, size, t_knn, t_splat))
                print(f"  {label} | batch {batch} | {size}px: knn {fmt(t_knn)} ms, splat {fmt(t_splat)} ms",
                      file=sys.stderr, flush=True)

    print()
    print("| device | batch | size | k-NN normals, ms/batch (min-max) | splat + shade, ms/batch (min-max) "
          "| img/s, splat only | img/s, end to end |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, batch, size, t_knn, t_splat in rows:
        knn, splat = statistics.median(t_knn), statistics.median(t_splat)
        print(f"| {label} | {batch} | {size} | {fmt(t_knn)} | {fmt(t_splat)} "
              f"| {batch / splat:,.0f} | {batch / (knn + splat):,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
