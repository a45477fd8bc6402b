"""``cmah data quantize`` and ``cmah data restore``: a uint8 copy of a dataset file, small enough to carry
to the GPU machine, and back (:mod:`model.quantize` describes the format and the error bound)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from model.quantize import DEFAULT_MAX_ERROR, QuantizeError, compare_datasets, quantize_file, restore_file

from .common import CLIError

#: exit status of ``restore --check`` when the restored file is not close enough to the original
EXIT_CHECK_FAILED = 1


def cmd_quantize(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    try:
        err = quantize_file(args.input, args.output, args.max_error)
    except QuantizeError as exc:
        raise CLIError(str(exc)) from None
    size = args.output.stat().st_size
    print(f"wrote {args.output} ({size / 1e6:.1f} MB, from {args.input.stat().st_size / 1e6:.1f} MB) in "  # noqa: T201
          f"{time.monotonic() - t0:.1f} s; max abs error after restore: {err:.6f}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    try:
        info = restore_file(args.input, args.output, compress=not args.no_compress)
        line = (f"wrote {args.output}: {info['shapes']} shapes x {info['points']} points, {info['classes']} classes "
                f"(loader accepts it) in {time.monotonic() - t0:.1f} s; max abs error vs the source "
                f"(recorded when quantising): {info['max_abs_error']:.6f}")
        if args.check:
            err, same = compare_datasets(args.check, args.output)
            line += f"; measured against {args.check}: {err:.6f}, labels/names/classes {'equal' if same else 'DIFFER'}"
            if err > args.max_error or not same:
                print(line)  # noqa: T201
                return EXIT_CHECK_FAILED
    except QuantizeError as exc:
        raise CLIError(str(exc)) from None
    print(line)  # noqa: T201
    return 0


def add_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Register ``cmah data`` and its subcommands."""
    d = sub.add_parser(name, help=help)
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    max_error = argparse.ArgumentParser(add_help=False)
    max_error.add_argument("--max-error", type=float, default=DEFAULT_MAX_ERROR,
                           help=f"largest max abs point error accepted (default {DEFAULT_MAX_ERROR})")
    q = dsub.add_parser("quantize", parents=[max_error], help="a uint8-quantised copy of a dataset .npz "
                        "(prints the error the restore will have)")
    q.add_argument("input", type=Path, metavar="IN", help="dataset .npz")
    q.add_argument("output", type=Path, metavar="OUT", help="the quantised .npz")
    q.set_defaults(func=cmd_quantize)
    r = dsub.add_parser("restore", parents=[max_error], help="the standard dataset .npz of a quantised file")
    r.add_argument("input", type=Path, metavar="Q", help="a quantised .npz (cmah data quantize)")
    r.add_argument("output", type=Path, metavar="OUT", help="the restored dataset .npz")
    r.add_argument("--check", type=Path, metavar="ORIGINAL.npz",
                   help="compare the restored points with this file (labels, names too); exit status 1 when "
                   "they differ by more than --max-error")
    r.add_argument("--no-compress", action="store_true", help="write an uncompressed .npz")
    r.set_defaults(func=cmd_restore)
