"""The ``cmah`` command line: thin commands over the same functions the service uses.

Each command lives in a module of :mod:`service.commands` (one per command group); this module lists
them, imports the one being run, and turns its user errors into one line.

Every command that reads user files follows one contract: a bad file ends the command with exit
status 2 and a single line on stderr naming the file and the problem (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from .commands.common import CLIError

log = logging.getLogger("cmah")

EXIT_BAD_INPUT = 2

#: command -> (its module in service.commands, its line in ``cmah --help``), in the order of the help
COMMANDS = {
    "train": ("train", "train the encoders and hash layers (unsupervised)"),
    "refit-heads": ("refit", "re-fit the hash layers on the frozen encoders' features (second training stage; "
                    "writes a new weights directory)"),
    "eval": ("evaluate", "mAP@K, curves, t-SNE, timings and baselines"),
    "encode": ("files", "print the hash code of an image or 3D file (hex, last line)"),
    "render": ("files", "render a 3D file to a PNG"),
    "synth": ("files", "write a synthetic dataset (spheres, boxes, tori …) in the dataset format"),
    "serve": ("serve", "start the HTTP service on the shipped weights"),
    "search": ("remote", "search a running service with pictures and 3D files (a table, or --json)"),
    "index": ("index", "the service's index from the command line: info, add, reencode"),
    "weights": ("checkpoints", "weights directories: average several into one"),
    "checkpoint": ("checkpoints", "training checkpoints: slim one to start another run from"),
    "data": ("data", "dataset files: quantize to uint8 (to carry to the GPU machine), restore"),
}

#: (module, exception names) a command reports as one line.
_USER_ERRORS = (
    ("model.dataset", ("DatasetError",)),
    ("model.io", ("InputError",)),
    ("model.manifest", ("WeightsError",)),
    ("index.errors", ("StoreCorruptError", "StoreLockedError")),
    ("service.codes_model", ("CodesModelError", "ReencodeError")),
    ("service.commands.index", ("IndexCommandError",)),
)
_OWN_PACKAGES = ("model", "index", "service")


def _optional_import(module: str):
    """``module``, or ``None`` when a third-party package it needs is not installed.

    The GPU training machine has torch and timm but not FAISS, pydantic or FastAPI: ``cmah train``,
    ``eval`` and ``refit-heads`` must run there, and a module that cannot be imported cannot raise
    its errors either. A missing module of this project itself is still an error.
    """
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


def _command_in(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first word that is not an option (``cmah`` takes no option values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The ``cmah`` parser. Only the command ``argv`` names gets its flags (its module is imported); the
    others are listed with their help line."""
    p = argparse.ArgumentParser(prog="cmah", description="Cross-modal hashing retrieval between images "
                                "and 3D point clouds (CMAH).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _command_in(argv)
    for name, (module, help) in COMMANDS.items():
        if name != chosen:
            sub.add_parser(name, help=help)
            continue
        try:
            importlib.import_module(f"service.commands.{module}").add_parser(sub, name, help)
        except ModuleNotFoundError as exc:  # e.g. `index` on the GPU training machine: no FAISS / pydantic
            if (exc.name or "").split(".")[0] in _OWN_PACKAGES:
                raise
            c = sub.add_parser(name, help=help, prefix_chars="\0", add_help=False)  # takes any arguments,
            c.add_argument("rest", nargs="*")                                       # to say what is missing
            c.set_defaults(func=_unavailable, missing=exc.name)
    return p


def _unavailable(args: argparse.Namespace) -> int:
    raise CLIError(f"cmah {args.command} needs the package {args.missing!r}, which is not installed "
                   "(pip install the project: pip install -e .)")


def main(argv: Sequence[str] | None = None) -> int:
    # OpenMP threads that yield instead of spinning while they wait: on a small shared machine (2 cores,
    # other processes running) spinning threads slowed training steps ~3x in our measurements. It must
    # be set before torch loads its OpenMP runtime, so before any torch import: before build_parser
    # imports the command's module.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    args.argv = argv                                 # for `cmah train --recipe`: which options were given
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return _fail_on_user_errors(args.func)(args)


if __name__ == "__main__":
    sys.exit(main())
