"""``cmah refit-heads``: the second training stage, new hash layers fitted on the frozen encoders' features
(:mod:`model.refit`); writes a new weights directory."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from model.dataset import load_dataset, make_split
from model.device import set_cpu_threads
from model.djsrh import DJSRHConfig
from model.encode import Encoder
from model.refit import RefitConfig, fit_heads, kept_bits, pair_features
from model.weights import SHIPPED_WEIGHTS_DIR, read_manifest, save_weights

from .common import CLIError, runtime_parent


def cmd_refit_heads(args: argparse.Namespace) -> int:
    threads = set_cpu_threads(args.threads)
    epochs = DJSRHConfig().epochs if args.epochs is None else args.epochs
    views = RefitConfig().views if args.views is None else args.views
    hidden = RefitConfig().hidden if args.hidden is None else args.hidden
    if views < 0 or epochs < 1 or hidden < 1:
        raise CLIError("--views must be >= 0, --epochs and --hidden >= 1")
    out = Path(args.out).resolve()
    weights = Path(args.weights or SHIPPED_WEIGHTS_DIR).resolve()
    if out == weights:
        raise CLIError(f"{out}: --out must differ from the source weights directory")
    if not Path(args.data).is_file():
        raise CLIError(f"{args.data}: no such dataset file")
    enc = Encoder.from_weights(weights, args.device)
    bits = sorted(set(args.bits or enc.model.cfg.bits))
    try:
        kept = list(kept_bits(enc.model.cfg, bits))      # before the features: fail fast
    except ValueError as exc:
        raise CLIError(f"--bits: {exc}") from None
    enc.use_cpu_threads(threads)                     # features: batches split over the threads
    source = read_manifest(weights)
    ds = load_dataset(args.data)
    split = make_split(len(ds), n_train=args.n_train)
    cfg = RefitConfig(views=views, hidden=hidden, seed=args.seed,
                      djsrh=dataclasses.replace(DJSRHConfig(), epochs=epochs))
    feats = pair_features(enc, ds.points[split.train], views=cfg.views, seed=cfg.seed,
                          progress=not args.quiet)
    enc.use_cpu_threads(threads, "intra-op")         # the heads' training: torch's own threads
    model = fit_heads(enc.model, feats, cfg, bits)
    refit = {"source_weights": str(weights), "source_files": source.get("files", {}), "bits": bits,
             "kept_bits": kept,
             "data": {"path": str(args.data), "sha256": ds.sha256, "shapes": len(ds),
                      "train": len(split.train), "feature_rows": len(feats.image)},
             "config": dataclasses.asdict(cfg)}
    extra = {k: source[k] for k in ("training",) if k in source}
    save_weights(model, out, extra={**extra, "head_refit": refit})
    kept_note = f" (kept the trained {kept}-bit heads)" if kept else ""
    print(f"refitted {bits}-bit heads on {len(feats.image)} image/point feature pairs "  # noqa: T201
          f"of {len(split.train)} training shapes{kept_note}; weights in {out}")
    return 0


def add_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Register ``cmah refit-heads``."""
    f = sub.add_parser(name, help=help, parents=[runtime_parent()])
    f.add_argument("--data", required=True, help="dataset .npz; its documented training split is used")
    f.add_argument("--weights", help="source weights directory (default: the shipped weights)")
    f.add_argument("--out", required=True, help="new weights directory")
    f.add_argument("--views", type=int, help="random-view renders per shape besides the canonical one "
                   "(default: model.refit.RefitConfig's 0; more did not help, docs/ablation.md)")
    f.add_argument("--epochs", type=int, help="passes over the features (default: model.djsrh's 40)")
    f.add_argument("--hidden", type=int, help="hidden width of the hash layers (default: RefitConfig's 1024)")
    f.add_argument("--bits", type=int, nargs="+", choices=[16, 32, 64],
                   help="code lengths to re-fit (default: all of the weights'); the others keep their "
                   "trained heads")
    f.add_argument("--n-train", type=int, help="training shapes (default: the whole retrieval set)")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=cmd_refit_heads)
