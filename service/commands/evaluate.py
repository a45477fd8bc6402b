"""``cmah eval``: mAP@K, curves, t-SNE, timings and baselines (:mod:`model.evaluate`), or the
perturbed-query table of ``--robustness`` (:mod:`model.robustness`)."""

from __future__ import annotations

import argparse

from model.device import set_cpu_threads
from model.encode import Encoder
from model.evaluate import EvalData, device_name, evaluate, format_table, load_eval_data, write_json
from model.robustness import format_robustness_table, robustness
from model.weights import SHIPPED_WEIGHTS_DIR

from .common import CLIError, plain_value_errors, runtime_parent


def _eval_robustness(args: argparse.Namespace, enc: Encoder, data: EvalData) -> int:
    """``cmah eval --robustness``: the perturbed-query table (markdown) and ``{"robustness": ...}`` JSON."""
    with plain_value_errors():
        res = robustness(enc, data, max(args.bits), args.topk, progress=not args.quiet)
    print(format_robustness_table(res))  # noqa: T201
    if args.json:
        weights = {"dir": str(args.weights or SHIPPED_WEIGHTS_DIR), "id": enc.weights_id, "config": enc.cfg.name}
        write_json({"robustness": res, "weights": weights, "device": device_name(enc.device, enc.workers)},
                   args.json)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    threads = set_cpu_threads(args.threads)
    with plain_value_errors():
        data = load_eval_data(args.data, args.query_data, args.db_data, args.validation)
    weights = args.weights or SHIPPED_WEIGHTS_DIR
    enc = Encoder.from_weights(weights, args.device)
    enc.use_cpu_threads(threads)                     # as the service: batches split over the threads
    if args.robustness:
        return _eval_robustness(args, enc, data)
    extra = {}
    for spec in args.baseline_weights or []:
        name, _, wdir = spec.partition("=")
        if not wdir:
            raise CLIError(f"--baseline-weights expects NAME=DIR, got {spec!r}")
        extra[name] = Encoder.from_weights(wdir, args.device)
        extra[name].use_cpu_threads(threads)
    with plain_value_errors():
        res = evaluate(enc, data, args.bits, args.topk, baselines=args.baselines, extra_baselines=extra,
                       plots_dir=args.plots, save_codes=args.save_codes, weights_dir=weights,
                       timing_repeats=args.timing_repeats, progress=not args.quiet)
    print(format_table(res))  # noqa: T201
    if args.json:
        write_json(res, args.json)
    return 0


def add_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Register ``cmah eval``."""
    e = sub.add_parser(name, help=help, parents=[runtime_parent()])
    e.add_argument("--weights", help="weights directory (default: the shipped weights)")
    e.add_argument("--data", help="one dataset file, evaluated on the documented query/retrieval split")
    e.add_argument("--query-data", help="query dataset file")
    e.add_argument("--db-data", help="database dataset file")
    e.add_argument("--validation", type=int, default=0, metavar="N",
                   help="with --data: the validation split instead of the documented one (the retrieval "
                   "set's first N shapes, held out of training by `cmah train --holdout N`, as queries "
                   "against the rest of it)")
    e.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    e.add_argument("--topk", type=int, default=2000)
    e.add_argument("--json", help="write the results JSON here")
    e.add_argument("--plots", help="write the PNG plots into this directory")
    e.add_argument("--save-codes", help="write all codes (np.packbits) and labels to this .npz")
    e.add_argument("--baselines", action="store_true", help="add LSH, PCA-sign, ITQ and DJSRH rows")
    e.add_argument("--baseline-weights", nargs="*", metavar="NAME=DIR",
                   help="other weights evaluated as baselines (e.g. cl-f=runs/clf/weights)")
    e.add_argument("--timing-repeats", type=int, default=100)
    e.add_argument("--robustness", action="store_true",
                   help="instead of the usual tables: image->points mAP at the largest --bits with the "
                   "query pictures changed (grey, 48 px, JPEG, 2048 px, random view, eval-only styles; "
                   "model.robustness), each with its ratio to the canonical picture's")
    e.set_defaults(func=cmd_eval)
