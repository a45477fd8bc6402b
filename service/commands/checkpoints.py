"""``cmah weights average`` and ``cmah checkpoint slim``: weights and checkpoints made from others
(:mod:`model.checkpoints` says what each keeps and computes)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model.checkpoints import CheckpointError, average_weights, slim_checkpoint

from .common import CLIError


def cmd_average(args: argparse.Namespace) -> int:
    out = average_weights(args.dirs, args.out, args.weights)
    print(f"averaged {len(args.dirs)} weights directories into {out}")  # noqa: T201
    return 0


def cmd_slim(args: argparse.Namespace) -> int:
    if not args.checkpoint.is_file():
        raise CLIError(f"{args.checkpoint}: no such file")
    try:
        out = slim_checkpoint(args.checkpoint, args.output, getattr(torch, args.dtype))
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB, from "  # noqa: T201
          f"{args.checkpoint.stat().st_size / 1e6:.1f} MB): config {out['model_config'].get('name')!r}, "
          f"step {out.get('step')}, epoch {out.get('epoch')}; continue with cmah train --init-from {args.output}")
    return 0


def _weights_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    w = sub.add_parser(name, help=help)
    wsub = w.add_subparsers(dest="weights_command", required=True, metavar="SUBCOMMAND")
    a = wsub.add_parser("average", help="the weighted mean of weights directories of one config (checkpoint "
                        "averaging), written as a new weights directory")
    a.add_argument("dirs", nargs="+", metavar="DIR", help="weights directories (same config)")
    a.add_argument("--out", required=True, help="output weights directory")
    a.add_argument("--weights", type=float, nargs="+", help="coefficients (default: equal), summing to 1")
    a.set_defaults(func=cmd_average)


def _checkpoint_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    c = sub.add_parser(name, help=help)
    csub = c.add_subparsers(dest="checkpoint_command", required=True, metavar="SUBCOMMAND")
    s = csub.add_parser("slim", help="a small copy of a training checkpoint (float16 model, no optimiser) to "
                        "start another run from with cmah train --init-from")
    s.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="a run's checkpoint.pt")
    s.add_argument("output", type=Path, metavar="OUT", help="the slim copy (.pt)")
    s.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    s.set_defaults(func=cmd_slim)


_PARSERS = {"weights": _weights_parser, "checkpoint": _checkpoint_parser}


def add_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Register ``cmah weights`` or ``cmah checkpoint`` (``name``) and its subcommand."""
    _PARSERS[name](sub, name, help)
