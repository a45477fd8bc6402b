#!/usr/bin/env python3
"""A uint8-quantised copy of a dataset file, small enough to carry to the GPU machine, and its restore.

    python scripts/quantize_dataset.py IN.npz OUT.npz                 # quantise (prints the error)
    python scripts/quantize_dataset.py --restore Q.npz OUT.npz        # back to the dataset format
    python scripts/quantize_dataset.py --restore Q.npz OUT.npz --check IN.npz   # ... and compare

A command-line wrapper of :mod:`model.quantize` (the format and the error bound are described there).
Exit status 1 when the error bound is exceeded or the input is not what the command expects, 2 for a
dataset the loader refuses.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from model.dataset import DatasetError
from model.quantize import DEFAULT_MAX_ERROR, QuantizeError, compare_datasets, quantize_file, restore_file


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
            err, same = compare_datasets(args.check, args.output)
            line += f"; measured against {args.check}: {err:.6f}, labels/names/classes {'equal' if same else 'DIFFER'}"
            if err > args.max_error or not same:
                print(line)
                return 1
        print(line)
        return 0
    except QuantizeError as exc:
        raise SystemExit(f"quantize_dataset: {exc}") from None
    except DatasetError as exc:
        print(f"quantize_dataset: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
