"""The ``cmah`` command line: thin commands over the same functions the service uses.

Every command that reads user files follows one contract: a bad file ends the command with exit
status 2 and a single line on stderr naming the file and the problem (no traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.encode import Encoder
    from model.evaluate import EvalData

log = logging.getLogger("cmah")

EXIT_BAD_INPUT = 2


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


#: (module, exception names) a command reports as one line.
_USER_ERRORS = (
    ("model.dataset", ("DatasetError",)),
    ("model.inputs", ("InputError",)),
    ("model.manifest", ("WeightsError",)),
    ("index.errors", ("StoreCorruptError", "StoreLockedError")),
    ("service.codes_model", ("CodesModelError", "ReencodeError")),
    ("service.index_commands", ("IndexCommandError",)),
)
_OWN_PACKAGES = ("model", "index", "service")


def _optional_import(module: str):
    """``module``, or ``None`` when a third-party package it needs is not installed.

    The GPU training machine has torch and timm but not FAISS, pydantic or FastAPI: ``cmah train``,
    ``eval`` and ``refit-heads`` must run there, and a module that cannot be imported cannot raise
    its errors either. A missing module of this project itself is still an error.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in _OWN_PACKAGES:
            raise
        log.debug("%s not importable (%s): its errors are not caught", module, exc)
        return None


def _user_error_types() -> tuple[type[Exception], ...]:
    types: list[type[Exception]] = [CLIError]
    for module, names in _USER_ERRORS:
        if (mod := _optional_import(module)) is not None:
            types += [getattr(mod, name) for name in names]
    return tuple(types)


class _NeverRaised(Exception):
    pass


def _fail_on_user_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapper(args: argparse.Namespace) -> int:
        pydantic = _optional_import("pydantic")
        ValidationError = pydantic.ValidationError if pydantic is not None else _NeverRaised  # noqa: N806
        user_errors = _user_error_types()

        try:
            return fn(args)
        except user_errors as exc:
            msg = str(exc)
        except ValidationError as exc:  # a CMAH_* setting (environment or .env) of the wrong type or value
            msg = "; ".join(f"invalid setting CMAH_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: "
                            f"{e['msg']}" for e in exc.errors())
        except FileNotFoundError as exc:
            msg = f"{exc.filename}: no such file"
        except IsADirectoryError as exc:
            msg = f"{exc.filename}: is a directory"
        except PermissionError as exc:
            msg = f"{exc.filename}: permission denied"
        print(f"cmah {args.command}: error: {msg}", file=sys.stderr)  # noqa: T201
        return EXIT_BAD_INPUT

    return wrapper


def _read_points_file(path: str):
    from model.inputs import InputError, load_points

    try:
        return load_points(Path(path), name=Path(path).name)
    except InputError as exc:
        raise CLIError(f"{path}: {exc}") from None


def _is_image_file(path: Path) -> bool:
    from model.inputs import sniff_3d_format

    head = path.read_bytes()[:4096] if path.is_file() else b""
    image_magic = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
    if head.startswith(image_magic) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return True
    try:
        sniff_3d_format(head, path.name)
        return False
    except Exception:
        return path.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


# --- train -----------------------------------------------------------------------------------------
#: ``cmah train`` options that go with ``--recipe`` (the recipe sets every other one)
_RECIPE_RUN_OPTIONS = frozenset({"recipe", "data", "out", "resume", "device", "threads", "quiet", "max_steps",
                                 "time_limit_min"})


def _given_options(parser: argparse.ArgumentParser, argv: Sequence[str], dests: Sequence[str]) -> set[str]:
    """Which of ``dests`` the sub-command arguments ``argv`` set explicitly (a default value included)."""
    unset = object()
    seen = argparse.Namespace(**dict.fromkeys(dests, unset))
    parser.parse_known_args(argv, seen)
    return {d for d in dests if getattr(seen, d) is not unset}


def _train_recipe(args: argparse.Namespace) -> int:
    """``cmah train --recipe NAME|PATH``: every stage of a recipe file (model.recipe)."""
    from model.device import set_cpu_threads
    from model.recipe import RecipeError, load_recipe, run_recipe

    own = args.argv[args.argv.index(args.command) + 1:]
    given = _given_options(args.train_parser, own, list(vars(args)))
    clash = sorted(given - _RECIPE_RUN_OPTIONS)
    if clash:
        flags = ", ".join("--" + d.replace("_", "-") for d in clash)
        raise CLIError(f"--recipe sets the model and training settings: drop {flags} (or --recipe)")
    try:                                 # a bad recipe, or a setting the trainer refuses: one line
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
    except ValueError as exc:
        if type(exc) not in (ValueError, RecipeError):
            raise
        raise CLIError(str(exc)) from None
    if run.stopped != "completed":
        print(f"{run.stopped}: {run.steps} steps of recipe {recipe.name}; continue with "  # noqa: T201
              f"--recipe {args.recipe} --out {out} --resume")
    else:
        print(f"completed: recipe {recipe.name}, {len(recipe.stages)} stages, {run.steps} steps; "  # noqa: T201
              f"weights in {run.weights}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from model.config import ABLATIONS, get_config
    from model.device import set_cpu_threads
    from model.train import TrainConfig, Trainer

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
    try:
        trainer = Trainer(cfg, tc, args.data, args.out, device=args.device, resume=args.resume,
                          show_progress=not args.quiet)
    except ValueError as exc:
        if type(exc) is not ValueError:
            raise
        raise CLIError(str(exc)) from None
    summary = trainer.run()
    last = summary["history"][-1]["loss"] if summary["history"] else float("nan")
    print(f"{summary['stopped']}: {summary['steps']} steps, {summary['epochs_done']} epochs, "  # noqa: T201
          f"{summary['elapsed_s']:.0f} s, last loss {last:.4f}; weights in {Path(args.out) / 'weights'}")
    return 0


# --- refit-heads -----------------------------------------------------------------------------------
def cmd_refit_heads(args: argparse.Namespace) -> int:
    import dataclasses

    from model.dataset import load_dataset, make_split
    from model.device import set_cpu_threads
    from model.djsrh import DJSRHConfig
    from model.encode import Encoder
    from model.refit import RefitConfig, fit_heads, kept_bits, pair_features
    from model.weights import SHIPPED_WEIGHTS_DIR, read_manifest, save_weights

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


# --- eval ------------------------------------------------------------------------------------------
def _eval_robustness(args: argparse.Namespace, enc: Encoder, data: EvalData) -> int:
    """``cmah eval --robustness``: the perturbed-query table (markdown) and ``{"robustness": ...}`` JSON."""
    from model.evaluate import device_name, write_json
    from model.robustness import format_robustness_table, robustness
    from model.weights import SHIPPED_WEIGHTS_DIR

    try:
        res = robustness(enc, data, max(args.bits), args.topk, progress=not args.quiet)
    except ValueError as exc:
        if type(exc) is not ValueError:
            raise
        raise CLIError(str(exc)) from None
    print(format_robustness_table(res))  # noqa: T201
    if args.json:
        weights = {"dir": str(args.weights or SHIPPED_WEIGHTS_DIR), "id": enc.weights_id, "config": enc.cfg.name}
        write_json({"robustness": res, "weights": weights, "device": device_name(enc.device, enc.workers)},
                   args.json)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from model.device import set_cpu_threads
    from model.encode import Encoder
    from model.evaluate import evaluate, format_table, load_eval_data, write_json
    from model.weights import SHIPPED_WEIGHTS_DIR

    threads = set_cpu_threads(args.threads)
    try:
        data = load_eval_data(args.data, args.query_data, args.db_data, args.validation)
    except ValueError as exc:
        if type(exc) is not ValueError:
            raise
        raise CLIError(str(exc)) from None
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
    try:
        res = evaluate(enc, data, args.bits, args.topk, baselines=args.baselines, extra_baselines=extra,
                       plots_dir=args.plots, save_codes=args.save_codes, weights_dir=weights,
                       timing_repeats=args.timing_repeats, progress=not args.quiet)
    except ValueError as exc:
        if type(exc) is not ValueError:
            raise
        raise CLIError(str(exc)) from None
    print(format_table(res))  # noqa: T201
    if args.json:
        write_json(res, args.json)
    return 0


# --- encode ----------------------------------------------------------------------------------------
def cmd_encode(args: argparse.Namespace) -> int:
    from model.encode import Encoder
    from model.inputs import read_image

    path = Path(args.file)
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    enc = Encoder.from_weights(args.weights, args.device)
    if args.bits not in enc.bits:
        raise CLIError(f"the weights have no {args.bits}-bit head; they provide {list(enc.bits)}")
    kind = args.modality or ("image" if _is_image_file(path) else "points")
    if kind == "image":
        from model.inputs import InputError

        try:
            codes = enc.encode_image(read_image(path))
        except InputError as exc:
            raise CLIError(f"{path}: {exc}") from None
    else:
        codes = enc.encode_points(_read_points_file(str(path)))
    print(f"{path}: {kind}, {args.bits}-bit code")  # noqa: T201
    print(codes[args.bits].tobytes().hex())  # noqa: T201
    return 0


# --- render ----------------------------------------------------------------------------------------
def cmd_render(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from model.renderer import RenderConfig, canonical_view, render, to_uint8

    if not 16 <= args.size <= 4096:
        raise CLIError(f"--size must be between 16 and 4096 pixels, got {args.size}")
    pts = _read_points_file(args.input)
    view = canonical_view(1)
    if args.view:
        try:
            azim, elev = (float(v) for v in args.view.split(","))
        except ValueError:
            raise CLIError(f"--view expects AZIM,ELEV in degrees, got {args.view!r}") from None
        view.azim[:] = azim
        view.elev[:] = elev
    img = render(torch.from_numpy(pts)[None], view, RenderConfig(image_size=args.size))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(img)[0].numpy()).save(out)
    print(f"wrote {out}")  # noqa: T201
    return 0


# --- synth -----------------------------------------------------------------------------------------
def cmd_synth(args: argparse.Namespace) -> int:
    from model.synthetic import write_synthetic

    write_synthetic(args.output, n_per_class=args.per_class, seed=args.seed)
    print(f"wrote {args.output}")  # noqa: T201
    return 0


# --- serve -----------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from service.preflight import check_store
    from service.settings import Settings

    settings = Settings()
    if args.data_dir is not None:
        settings = settings.model_copy(update={"data_dir": Path(args.data_dir)})
    check_store(settings)  # a damaged index database: one line, before the model is even imported
    from service.app import run_server

    return run_server(host=args.host, port=args.port, data_dir=args.data_dir, checked=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cmah", description="Cross-modal hashing retrieval between images "
                                "and 3D point clouds (CMAH).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train the encoders and hash layers (unsupervised)")
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
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--min-lr", type=float, default=1e-5)
    t.add_argument("--warmup-epochs", type=float, default=1.0)
    t.add_argument("--schedule", default="cosine", choices=["cosine", "step"])
    t.add_argument("--rotate-points", action="store_true",
                   help="rotate training clouds about z (default: keep the dataset's aligned orientation)")
    t.add_argument("--view-azim-spread", type=float, default=360.0,
                   help="training image azimuths, degrees around the canonical view (360 = any)")
    t.add_argument("--time-budget-min", type=float, help="train for this wall time (cosine over time)")
    t.add_argument("--time-limit-min", type=float, help="stop (resumable) after this wall time")
    t.add_argument("--max-steps", type=int)
    t.add_argument("--n-train", type=int, help="training shapes (default: the whole retrieval set)")
    t.add_argument("--holdout", type=int, default=0, metavar="N",
                   help="keep the retrieval set's first N shapes out of training, as validation queries "
                   "for `cmah eval --validation N` (default 0: train on all of it)")
    t.add_argument("--neighbours", type=int, default=0, metavar="K",
                   help="neighbour positives: each shape's K nearest training shapes by the model's own "
                   "image and point features share its contrastive target (default 0: off; "
                   "docs/model.md)")
    t.add_argument("--neighbour-alpha", type=float, default=0.5,
                   help="share of each contrastive target given to in-batch neighbours (default 0.5)")
    t.add_argument("--neighbour-refresh-epochs", type=int, default=4,
                   help="rebuild the neighbour graph from the current model every N epochs (default 4)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--init-from", metavar="CHECKPOINT|WEIGHTS_DIR",
                   help="start from another run's checkpoint.pt (every module) or a weights directory "
                   "such as weights/ (encoders; fresh fusion and decoders); fresh optimiser and schedule")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train, train_parser=t)

    f = sub.add_parser("refit-heads", help="re-fit the hash layers on the frozen encoders' features "
                       "(second training stage; writes a new weights directory)")
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
    f.add_argument("--device", default="auto")
    f.add_argument("--threads", type=int)
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(func=cmd_refit_heads)

    e = sub.add_parser("eval", help="mAP@K, curves, t-SNE, timings and baselines")
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
    e.add_argument("--device", default="auto")
    e.add_argument("--threads", type=int)
    e.add_argument("--quiet", action="store_true")
    e.add_argument("--robustness", action="store_true",
                   help="instead of the usual tables: image->points mAP at the largest --bits with the "
                   "query pictures changed (grey, 48 px, JPEG, 2048 px, random view, eval-only styles; "
                   "model.robustness), each with its ratio to the canonical picture's")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("encode", help="print the hash code of an image or 3D file (hex, last line)")
    c.add_argument("file")
    c.add_argument("--bits", type=int, default=64, choices=[16, 32, 64])
    c.add_argument("--as", dest="modality", choices=["image", "points"], help="override detection")
    c.add_argument("--weights", help="weights directory (default: the shipped weights)")
    c.add_argument("--device", default="auto")
    c.set_defaults(func=cmd_encode)

    r = sub.add_parser("render", help="render a 3D file to a PNG")
    r.add_argument("input")
    r.add_argument("-o", "--output", required=True)
    r.add_argument("--view", help="AZIM,ELEV in degrees (default: the canonical view); "
                   "write negative angles as --view=-30,10")
    r.add_argument("--size", type=int, default=224)
    r.set_defaults(func=cmd_render)

    s = sub.add_parser("synth", help="write a synthetic dataset (spheres, boxes, tori …) in the dataset format")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--per-class", type=int, default=20)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    v = sub.add_parser("serve", help="start the HTTP service on the shipped weights")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--data-dir", help="where the index and metadata live (default: CMAH_DATA_DIR or ./.cmah-data)")
    v.set_defaults(func=cmd_serve)

    index_commands = _optional_import("service.index_commands")
    if index_commands is not None:
        index_commands.add_parser(sub)
    else:  # e.g. the GPU training machine: no FAISS / pydantic-settings; say so instead of a traceback
        i = sub.add_parser("index", help="the service's index (needs the service's packages: FAISS, pydantic)",
                           prefix_chars="\0", add_help=False)   # takes any arguments, to say what is missing
        i.add_argument("rest", nargs="*")
        i.set_defaults(func=_index_unavailable)
    return p


def _index_unavailable(args: argparse.Namespace) -> int:
    try:
        import service.index_commands  # noqa: F401
    except ModuleNotFoundError as exc:
        raise CLIError(f"cmah index needs the package {exc.name!r}, which is not installed "
                       "(pip install the project: pip install -e .)") from None
    raise CLIError("cmah index: unavailable")


def main(argv: Sequence[str] | None = None) -> int:
    # OpenMP threads that yield instead of spinning while they wait: on a small shared machine (2 cores,
    # other processes running) spinning threads slowed training steps ~3x in our measurements. It must
    # be set before torch loads its OpenMP runtime, so before any torch import (they are all lazy here).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv                                 # for `cmah train --recipe`: which options were given
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return _fail_on_user_errors(args.func)(args)


if __name__ == "__main__":
    sys.exit(main())
