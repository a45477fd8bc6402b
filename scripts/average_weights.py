#!/usr/bin/env python3
"""Average inference weights of the same config into a new weights directory (checkpoint averaging).

    python scripts/average_weights.py A_DIR B_DIR [C_DIR ...] --out OUT_DIR [--weights 0.5 0.5 ...]

A command-line wrapper of :func:`model.checkpoints.average_weights` (what it computes is described there).
Exit status 2 with a one-line message for a bad input (missing or corrupt weights, mismatched
configs, wrong number of coefficients); nothing is written then.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from model.checkpoints import average_weights
from model.weights import WeightsError


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", help="weights directories (same config)")
    ap.add_argument("--out", required=True, help="output weights directory")
    ap.add_argument("--weights", type=float, nargs="+", help="coefficients (default: equal), summing to 1")
    args = ap.parse_args(argv)
    try:
        out = average_weights(args.dirs, args.out, args.weights)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"averaged {len(args.dirs)} weights directories into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
