#!/usr/bin/env python3
"""A small copy of a training checkpoint to start another run from (``cmah train --init-from``).

    python scripts/slim_checkpoint.py runs/RUN/checkpoint.pt OUT.pt [--dtype float16]

A full checkpoint (model, AdamW moments, RNG states) of the ``cpu`` config is about 77 MB: too big to
come back from the GPU machine (16 MiB per file) or to carry there next to the dataset. The slim
copy keeps the model's state in float16 (12.8 MB for ``cpu``), the model and training configs, the
step / epoch / elapsed counters and the loss history, and drops the optimiser and RNG states, so
it continues a chain with ``--init-from`` (every module's weights; a fresh optimiser and schedule),
not with ``--resume``. The trainer checks that the model config matches.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

KEEP = ("model_config", "train_config", "step", "epoch", "elapsed_s", "history")


def slim(src: Path, dest: Path, dtype: torch.dtype = torch.float16) -> dict:
    ck = torch.load(src, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or "model" not in ck or "model_config" not in ck:
        raise SystemExit(f"slim_checkpoint: {src}: not a cmah training checkpoint (no 'model' / 'model_config')")
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in ck["model"].items()}
    out = {"model": state, **{k: ck[k] for k in KEEP if k in ck}, "slim": {"from": str(src), "dtype": str(dtype)}}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    torch.save(out, tmp)
    os.replace(tmp, dest)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    args = p.parse_args(argv)
    if not args.checkpoint.is_file():
        raise SystemExit(f"slim_checkpoint: {args.checkpoint}: no such file")
    out = slim(args.checkpoint, args.output, getattr(torch, args.dtype))
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB, from "
          f"{args.checkpoint.stat().st_size / 1e6:.1f} MB): config {out['model_config'].get('name')!r}, "
          f"step {out.get('step')}, epoch {out.get('epoch')}; continue with cmah train --init-from {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
