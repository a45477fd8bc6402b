"""Contact sheet of the renderer: the first shape of every class, canonical view + 3 training views.

    .venv/bin/python scripts/contact_sheet.py [--data ../shared/data/modelnet40_train.npz]
                                              [--out docs/contact_sheet.png] [--size 160] [--seed 0]

One row per class (class name on the left); column 1 is ``render_canonical``, columns 2-4 are
``random_view`` samples from a seeded generator (the training distribution: any azimuth, elevation
-15..60 deg, random light, colours and backgrounds). Rows are laid out in ``--blocks`` side-by-side
grids (2 by default: 20 rows each for ModelNet40).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from model.dataset import load_dataset
from model.renderer import RenderConfig, random_view, render, render_canonical, to_uint8

ROOT = Path(__file__).resolve().parents[1]

LABEL_W = 110   # px for the class name column
GAP = 4         # px between tiles
BLOCK_GAP = 24  # px between the side-by-side grids
HEADER_H = 18


def first_of_each_class(labels: np.ndarray, n_classes: int) -> list[int]:
    """Index of the first shape of each class (classes without shapes are skipped)."""
    out = []
    for c in range(n_classes):
        hits = np.flatnonzero(labels == c)
        if hits.size:
            out.append(int(hits[0]))
    return out


def render_rows(points: torch.Tensor, size: int, n_random: int, seed: int, batch: int = 8) -> np.ndarray:
    """[C, N, 3] -> uint8 tiles [C, 1 + n_random, size, size, 3] (canonical first)."""
    cfg = RenderConfig(image_size=size)
    gen = torch.Generator().manual_seed(seed)
    tiles = []
    for s in range(0, len(points), batch):
        pts = points[s:s + batch]
        cols = [to_uint8(render_canonical(pts, cfg))]
        for _ in range(n_random):
            cols.append(to_uint8(render(pts, random_view(len(pts), gen), cfg)))
        tiles.append(torch.stack(cols, dim=1).numpy())
    return np.concatenate(tiles)


def compose(tiles: np.ndarray, names: list[str], blocks: int) -> Image.Image:
    c, ncol, size = tiles.shape[0], tiles.shape[1], tiles.shape[2]
    rows = math.ceil(c / blocks)
    block_w = LABEL_W + ncol * (size + GAP)
    width = blocks * block_w + (blocks - 1) * BLOCK_GAP
    height = HEADER_H + rows * (size + GAP)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    headers = ["canonical"] + [f"random {i}" for i in range(1, ncol)]
    for b in range(blocks):
        x0 = b * (block_w + BLOCK_GAP)
        for j, h in enumerate(headers):
            draw.text((x0 + LABEL_W + j * (size + GAP) + 4, 3), h, fill=(0, 0, 0))
    for i in range(c):
        b, r = divmod(i, rows)
        x0 = b * (block_w + BLOCK_GAP)
        y0 = HEADER_H + r * (size + GAP)
        draw.text((x0 + 4, y0 + size // 2 - 6), names[i], fill=(0, 0, 0))
        for j in range(ncol):
            tile = Image.fromarray(tiles[i, j])
            x = x0 + LABEL_W + j * (size + GAP)
            sheet.paste(tile, (x, y0))
            draw.rectangle([x - 1, y0 - 1, x + size, y0 + size], outline=(200, 200, 200))
    return sheet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "modelnet40_train.npz"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "contact_sheet.png"))
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--random-views", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=2, help="side-by-side grids")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ds = load_dataset(args.data)
    idx = first_of_each_class(ds.labels, len(ds.classes))
    points = torch.from_numpy(ds.points[idx]).float()
    names = [str(ds.classes[ds.labels[i]]) for i in idx]
    tiles = render_rows(points, args.size, args.random_views, args.seed)
    sheet = compose(tiles, names, args.blocks)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    print(f"wrote {out} ({sheet.width}x{sheet.height}, {out.stat().st_size / 1e6:.2f} MB, "
          f"{len(idx)} classes, {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
