#!/usr/bin/env python3
"""A small copy of a training checkpoint to start another run from (``cmah train --init-from``).

    python scripts/slim_checkpoint.py runs/RUN/checkpoint.pt OUT.pt [--dtype float16]

A command-line wrapper of :func:`model.checkpoints.slim_checkpoint` (what it keeps is described there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from model.checkpoints import CheckpointError, slim_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    args = p.parse_args(argv)
    if not args.checkpoint.is_file():
        raise SystemExit(f"slim_checkpoint: {args.checkpoint}: no such file")
    try:
        out = slim_checkpoint(args.checkpoint, args.output, getattr(torch, args.dtype))
    except CheckpointError as exc:
        raise SystemExit(f"slim_checkpoint: {exc}") from None
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB, from "
          f"{args.checkpoint.stat().st_size / 1e6:.1f} MB): config {out['model_config'].get('name')!r}, "
          f"step {out.get('step')}, epoch {out.get('epoch')}; continue with cmah train --init-from {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
