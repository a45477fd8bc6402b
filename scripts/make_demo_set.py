#!/usr/bin/env python3
"""Build the small demo gallery shipped in ``model/assets/demo_modelnet40.npz``.

Takes up to ``--per-class`` shapes of every class from the QUERY part of the documented split
(:func:`model.dataset.make_split` on the input file), so the demo gallery never holds a training shape,
chosen at random with ``--seed`` and written in file order as float16 with :func:`model.dataset.save_dataset`.

    python scripts/make_demo_set.py                       # ../shared/data/modelnet40_train.npz
    python scripts/make_demo_set.py --input other.npz --out /tmp/demo.npz --per-class 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from model.dataset import load_dataset, make_split, save_dataset

REPO = Path(__file__).resolve().parent.parent

DEFAULT_INPUT = REPO.parent / "shared" / "data" / "modelnet40_train.npz"
DEFAULT_OUT = REPO / "model" / "assets" / "demo_modelnet40.npz"


def select(labels: np.ndarray, candidates: np.ndarray, n_classes: int, per_class: int,
           seed: int) -> np.ndarray:
    """Up to ``per_class`` random indices of each class among ``candidates``; sorted (file order)."""
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for c in range(n_classes):
        pool = candidates[labels[candidates] == c]
        take = min(per_class, len(pool))
        if take:
            chosen.append(rng.choice(pool, size=take, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="dataset .npz (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .npz (default: %(default)s)")
    ap.add_argument("--per-class", type=int, default=8, help="shapes per class (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="selection seed (default: %(default)s)")
    args = ap.parse_args(argv)

    ds = load_dataset(args.input)
    split = make_split(len(ds))
    idx = select(ds.labels, split.query, len(ds.classes), args.per_class, args.seed)
    if len(idx) == 0:
        print("no shapes selected", file=sys.stderr)
        return 1
    counts = np.bincount(ds.labels[idx], minlength=len(ds.classes))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_dataset(args.out, ds.points[idx], ds.labels[idx], ds.names[idx], ds.classes, dtype="float16")
    short = [str(c) for c, k in zip(ds.classes, counts, strict=True) if k < args.per_class]
    print(f"{args.input}: {len(ds)} shapes, query split {len(split.query)}")
    print(f"wrote {args.out}: {len(idx)} shapes, {int((counts > 0).sum())}/{len(ds.classes)} classes, "
          f"{args.out.stat().st_size / 1e6:.2f} MB")
    if short:
        print(f"fewer than {args.per_class} in: {', '.join(short)}")
    print(f"input sha256 {ds.sha256}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
