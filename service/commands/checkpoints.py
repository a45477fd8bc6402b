"""``cmah weights average|ship`` and ``cmah checkpoint slim``: weights and checkpoints made from others
(:mod:`model.checkpoints` says what each keeps and computes; :mod:`model.release` when weights ship)."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch

from model.checkpoints import CheckpointError, average_weights, slim_checkpoint
from model.manifest import MANIFEST_FILE, SHIPPED_WEIGHTS_DIR, WEIGHTS_FILE, WeightsError, read_manifest, weights_id

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


def _figures(record: dict, keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k} {record[k]:.4f}" for k in keys if k in record)


def cmd_ship(args: argparse.Namespace) -> int:
    """Measure a candidate against the shipped weights (model.release's rule), report the documented
    split once, and copy the candidate into --to."""
    from model import release
    from model.weights import load_weights, write_manifest

    cand, to = Path(args.candidate), Path(args.to)
    try:
        load_weights(cand)                                   # a complete, checksum-valid directory
        manifest = read_manifest(cand)
        candidate = release.shipped_record(cand)
        holdout = int(candidate.get("holdout") or args.validation)
        if "validation.mean" not in candidate or not release.ratios(candidate):
            candidate.update(release.measure(cand, args.data, holdout, progress=not args.quiet))
        current = release.shipped_record(to) if (to / MANIFEST_FILE).is_file() else {}
        if current and not release.ratios(current):
            current.update(release.measure(to, args.data, holdout, progress=not args.quiet))
    except (WeightsError, ValueError, OSError) as exc:
        raise CLIError(str(exc)) from None
    keys = ("validation.mean", "robustness.sketch", "robustness.depth", "robustness.random_view")
    print(f"candidate: {_figures(candidate, keys)}")  # noqa: T201
    if current:
        print(f"shipped:   {_figures(current, keys)}")  # noqa: T201
        refusals = release.ship_refusals(candidate, current)
        if refusals and not args.force:
            raise CLIError(f"not shipped: {'; '.join(refusals)} (--force ships anyway)")
        candidate["replaces_weights_id"] = weights_id(to)
    candidate.update(release.documented(cand, args.data, progress=not args.quiet))
    print(f"documented split: {_figures(candidate, ('documented.mean',))}")  # noqa: T201
    to.mkdir(parents=True, exist_ok=True)
    tmp = to / (WEIGHTS_FILE + ".tmp")
    shutil.copyfile(cand / WEIGHTS_FILE, tmp)
    os.replace(tmp, to / WEIGHTS_FILE)
    manifest["recipe"] = candidate
    write_manifest(to, manifest)
    print(f"shipped {cand} into {to} (weights id {weights_id(to)[:12]})")  # noqa: T201
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
    s = wsub.add_parser("ship", help="replace the shipped weights with a recipe run's, if they measure better "
                        "(validation mean at most 0.01 lower, a better robustness table)")
    s.add_argument("candidate", metavar="DIR", help="the weights directory of a finished recipe run (RUN/weights)")
    s.add_argument("--data", required=True, help="the training dataset file (its validation and documented splits)")
    s.add_argument("--to", default=str(SHIPPED_WEIGHTS_DIR), help="the weights directory to replace "
                   "(default: the shipped weights/)")
    s.add_argument("--validation", type=int, default=1000, metavar="N",
                   help="validation queries when the candidate's manifest does not record its holdout")
    s.add_argument("--force", action="store_true", help="ship even when the rule says no")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_ship)


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
