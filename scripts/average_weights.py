#!/usr/bin/env python3
"""Average inference weights of the same config into a new weights directory (checkpoint averaging).

    python scripts/average_weights.py A_DIR B_DIR [C_DIR ...] --out OUT_DIR [--weights 0.5 0.5 ...]

Every floating-point tensor of the output is the weighted mean of the inputs' (computed in float32,
stored as float16 like every weights directory); the hash layers' BatchNorm running statistics are
averaged the same way, integer buffers (BatchNorm's batch counters) come from the first input. The
inputs must have the same config; each is verified by the loader (sha256, config) first. The
manifest is the first input's, with ``files`` rewritten and a ``weight_average`` record (the
inputs' weights ids and the coefficients); evaluate the result with ``cmah eval`` before shipping it.
The shipped weights have been made this way since 4d184c4 (docs/training-log.md, docs/model.md).

Exit status 2 with a one-line message for a bad input (missing or corrupt weights, mismatched
configs, wrong number of coefficients); nothing is written then.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model.weights import MANIFEST_FILE, WeightsError, load_weights, save_weights, weights_id  # noqa: E402


def average_weights(dirs: Sequence[str | Path], out: str | Path, coefficients: Sequence[float] | None = None) -> Path:
    """Write the weighted mean of the weights in ``dirs`` to ``out``; returns ``out``."""
    if len(dirs) < 2:
        raise WeightsError(f"give at least two weights directories to average, got {len(dirs)}")
    coef = [1.0 / len(dirs)] * len(dirs) if coefficients is None else [float(c) for c in coefficients]
    if len(coef) != len(dirs):
        raise WeightsError(f"{len(coef)} coefficients for {len(dirs)} weights directories")
    if any(c < 0 for c in coef) or abs(sum(coef) - 1.0) > 1e-6:
        raise WeightsError(f"coefficients must be >= 0 and sum to 1, got {coef}")
    if Path(out).resolve() in {Path(d).resolve() for d in dirs}:
        raise WeightsError(f"--out {out} is one of the inputs")
    models = [load_weights(d) for d in dirs]
    first = models[0]
    for d, m in zip(dirs[1:], models[1:], strict=True):
        if m.cfg.to_dict() != first.cfg.to_dict():
            raise WeightsError(f"{d}: config {m.cfg.name!r} differs from {dirs[0]}'s {first.cfg.name!r}; "
                               "only weights of one config can be averaged")
    states = [m.state_dict() for m in models]
    mean = {k: sum(c * s[k].float() for c, s in zip(coef, states, strict=True)) if v.is_floating_point() else v
            for k, v in states[0].items()}
    first.load_state_dict(mean)
    manifest = json.loads((Path(dirs[0]) / MANIFEST_FILE).read_text())
    extra = {k: v for k, v in manifest.items() if k not in ("format_version", "config", "bits", "parameters", "files")}
    extra["weight_average"] = {"inputs": [{"dir": str(d), "weights_id": weights_id(d), "coefficient": c}
                                          for d, c in zip(dirs, coef, strict=True)]}
    return save_weights(first, out, extra)


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
