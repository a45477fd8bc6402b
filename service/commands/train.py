"""``cmah train``: train the encoders and hash layers (unsupervised), from flags or from a recipe file."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from model.config import ABLATIONS, get_config
from model.device import set_cpu_threads
from model.recipe import RecipeError, load_recipe, run_recipe
from model.train import TrainConfig, Trainer

from .common import CLIError, plain_value_errors, runtime_parent

#: ``cmah train`` options that go with ``--recipe`` (the recipe sets every other one)
_RECIPE_RUN_OPTIONS = frozenset({"recipe", "data", "out", "resume", "device", "threads", "quiet", "max_steps",
                                 "time_limit_min"})
#: the trainer's defaults, which the flags take
_DEFAULTS = TrainConfig()


def _given_options(parser: argparse.ArgumentParser, argv: Sequence[str], dests: Sequence[str]) -> set[str]:
    """Which of ``dests`` the sub-command arguments ``argv`` set explicitly (a default value included)."""
    unset = object()
    seen = argparse.Namespace(**dict.fromkeys(dests, unset))
    parser.parse_known_args(argv, seen)
    return {d for d in dests if getattr(seen, d) is not unset}


def _train_recipe(args: argparse.Namespace) -> int:
    """``cmah train --recipe NAME|PATH``: every stage of a recipe file (model.recipe)."""
    own = args.argv[args.argv.index(args.command) + 1:]
    given = _given_options(args.train_parser, own, list(vars(args)))
    clash = sorted(given - _RECIPE_RUN_OPTIONS)
    if clash:
        flags = ", ".join("--" + d.replace("_", "-") for d in clash)
        raise CLIError(f"--recipe sets the model and training settings: drop {flags} (or --recipe)")
    with plain_value_errors(RecipeError):  # a bad recipe, or a setting the trainer refuses: one line
        recipe = load_recipe(args.recipe)
        data = args.data or recipe.data_path
        if not data:
            raise CLIError(f"--data is required: recipe {recipe.name!r} names no data file ([data] path)")
        if not Path(data).is_file():
            raise CLIError(f"{data}: no such dataset file")
        out = Path(args.out if "out" in given else f"runs/{recipe.name}")
        set_cpu_threads(args.threads)
        run = run_recipe(recipe, data, out, device=args.device, resume=args.resume, max_steps=args.max_steps,
                         time_limit_min=args.time_limit_min, show_progress=not args.quiet)
    if run.stopped != "completed":
        print(f"{run.stopped}: {run.steps} steps of recipe {recipe.name}; continue with "  # noqa: T201
              f"--recipe {args.recipe} --out {out} --resume")
    else:
        print(f"completed: recipe {recipe.name}, {len(recipe.stages)} stages, {run.steps} steps; "  # noqa: T201
              f"weights in {run.weights}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.recipe:
        return _train_recipe(args)
    if not args.data:
        raise CLIError("--data is required (or a --recipe that names its data file)")
    cfg = get_config(args.config).with_loss(**ABLATIONS[args.ablation], contrastive=args.contrastive,
                                            temperature=args.temperature)
    if args.image_size:
        cfg = dataclasses.replace(cfg, image=dataclasses.replace(cfg.image, image_size=args.image_size))
    if args.bits:
        cfg = dataclasses.replace(cfg, bits=tuple(sorted(set(args.bits))))
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
                     schedule=args.schedule, seed=args.seed, n_train=args.n_train,
                     time_limit_min=args.time_limit_min, time_budget_min=args.time_budget_min,
                     max_steps=args.max_steps, compile=args.compile, warmup_epochs=args.warmup_epochs,
                     rotate_points=args.rotate_points, view_azim_spread=args.view_azim_spread,
                     init_from=args.init_from, holdout=args.holdout, neighbours=args.neighbours,
                     neighbour_alpha=args.neighbour_alpha,
                     neighbour_refresh_epochs=args.neighbour_refresh_epochs)
    set_cpu_threads(args.threads)
    if not Path(args.data).is_file():
        raise CLIError(f"{args.data}: no such dataset file")
    if args.init_from and not Path(args.init_from).exists():
        raise CLIError(f"{args.init_from}: no such checkpoint or weights directory (--init-from)")
    with plain_value_errors():
        trainer = Trainer(cfg, tc, args.data, args.out, device=args.device, resume=args.resume,
                          show_progress=not args.quiet)
    summary = trainer.run()
    last = summary["history"][-1]["loss"] if summary["history"] else float("nan")
    print(f"{summary['stopped']}: {summary['steps']} steps, {summary['epochs_done']} epochs, "  # noqa: T201
          f"{summary['elapsed_s']:.0f} s, last loss {last:.4f}; weights in {Path(args.out) / 'weights'}")
    return 0


def add_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Register ``cmah train``; the training flags take the trainer's defaults (:class:`TrainConfig`)."""
    t = sub.add_parser(name, help=help, parents=[runtime_parent()])
    t.add_argument("--recipe", metavar="NAME|PATH",
                   help="run a recipe file: a shipped one (model/recipes/: tiny, cpu, gpu) or a path; it sets "
                   "the model and every training setting, so only --data, --out (default runs/NAME), "
                   "--resume, --device, --threads, --quiet, --max-steps and --time-limit-min (both: stop, "
                   "resumable, counting all stages) go with it (docs/model.md, \"Recipes\")")
    t.add_argument("--data", help="dataset .npz (points, labels, names, classes); required unless the "
                   "recipe names one")
    t.add_argument("--out", default="runs/train", help="run directory (checkpoints, logs, weights/)")
    t.add_argument("--config", default="cpu", help="model preset: cpu (default), paper, tiny")
    t.add_argument("--ablation", default="full", choices=["full", "cl+mr", "cl-f+cl-m", "cl-f"],
                   help="loss switches of the paper's Table 2 (default: full)")
    t.add_argument("--bits", type=int, nargs="+", choices=[16, 32, 64],
                   help="code lengths of the hash layers trained together (default: 16 32 64, one model "
                   "for all three; the paper trains one model per length)")
    t.add_argument("--contrastive", default="ntxent", choices=["ntxent", "hard"])
    t.add_argument("--temperature", type=float, default=0.2)
    t.add_argument("--image-size", type=int, help="override the preset's image resolution")
    t.add_argument("--epochs", type=int, default=_DEFAULTS.epochs)
    t.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    t.add_argument("--lr", type=float, default=_DEFAULTS.lr)
    t.add_argument("--min-lr", type=float, default=_DEFAULTS.min_lr)
    t.add_argument("--warmup-epochs", type=float, default=_DEFAULTS.warmup_epochs)
    t.add_argument("--schedule", default=_DEFAULTS.schedule, choices=["cosine", "step"])
    t.add_argument("--rotate-points", action="store_true",
                   help="rotate training clouds about z (default: keep the dataset's aligned orientation)")
    t.add_argument("--view-azim-spread", type=float, default=_DEFAULTS.view_azim_spread,
                   help="training image azimuths, degrees around the canonical view (360 = any)")
    t.add_argument("--time-budget-min", type=float, help="train for this wall time (cosine over time)")
    t.add_argument("--time-limit-min", type=float, help="stop (resumable) after this wall time")
    t.add_argument("--max-steps", type=int)
    t.add_argument("--n-train", type=int, help="training shapes (default: the whole retrieval set)")
    t.add_argument("--holdout", type=int, default=_DEFAULTS.holdout, metavar="N",
                   help="keep the retrieval set's first N shapes out of training, as validation queries "
                   "for `cmah eval --validation N` (default 0: train on all of it)")
    t.add_argument("--neighbours", type=int, default=_DEFAULTS.neighbours, metavar="K",
                   help="neighbour positives: each shape's K nearest training shapes by the model's own "
                   "image and point features share its contrastive target (default 0: off; "
                   "docs/model.md)")
    t.add_argument("--neighbour-alpha", type=float, default=_DEFAULTS.neighbour_alpha,
                   help="share of each contrastive target given to in-batch neighbours (default 0.5)")
    t.add_argument("--neighbour-refresh-epochs", type=int, default=_DEFAULTS.neighbour_refresh_epochs,
                   help="rebuild the neighbour graph from the current model every N epochs (default 4)")
    t.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    t.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--init-from", metavar="CHECKPOINT|WEIGHTS_DIR",
                   help="start from another run's checkpoint.pt (every module) or a weights directory "
                   "such as weights/ (encoders; fresh fusion and decoders); fresh optimiser and schedule")
    t.set_defaults(func=cmd_train, train_parser=t)
