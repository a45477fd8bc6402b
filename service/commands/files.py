"""``cmah encode``, ``render`` and ``synth``: one file in, one line or one file out."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.encode import Encoder
from model.io import InputError, load_points, read_image, sniff_3d_format
from model.renderer import RenderConfig, canonical_view, render, to_uint8
from model.synthetic import write_synthetic

from .common import CLIError, device_parent


def _read_points_file(path: str) -> np.ndarray:
    """The model's point cloud of the 3D file ``path``; a bad file is a :class:`CLIError` naming it."""
    try:
        return load_points(Path(path), name=Path(path).name)
    except InputError as exc:
        raise CLIError(f"{path}: {exc}") from None


def _is_image_file(path: Path) -> bool:
    """Whether ``path`` is read as a picture: by its content, by its extension when that says nothing."""
    head = path.read_bytes()[:4096] if path.is_file() else b""
    image_magic = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
    if head.startswith(image_magic) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return True
    try:
        sniff_3d_format(head, path.name)
        return False
    except Exception:
        return path.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def cmd_encode(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    enc = Encoder.from_weights(args.weights, args.device)
    if args.bits not in enc.bits:
        raise CLIError(f"the weights have no {args.bits}-bit head; they provide {list(enc.bits)}")
    kind = args.modality or ("image" if _is_image_file(path) else "points")
    if kind == "image":
        try:
            codes = enc.encode_image(read_image(path))
        except InputError as exc:
            raise CLIError(f"{path}: {exc}") from None
    else:
        codes = enc.encode_points(_read_points_file(str(path)))
    print(f"{path}: {kind}, {args.bits}-bit code")  # noqa: T201
    print(codes[args.bits].tobytes().hex())  # noqa: T201
    return 0


def cmd_render(args: argparse.Namespace) -> int:
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


def cmd_synth(args: argparse.Namespace) -> int:
    write_synthetic(args.output, n_per_class=args.per_class, seed=args.seed)
    print(f"wrote {args.output}")  # noqa: T201
    return 0


def _encode_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    c = sub.add_parser(name, help=help, parents=[device_parent()])
    c.add_argument("file")
    c.add_argument("--bits", type=int, default=64, choices=[16, 32, 64])
    c.add_argument("--as", dest="modality", choices=["image", "points"], help="override detection")
    c.add_argument("--weights", help="weights directory (default: the shipped weights)")
    c.set_defaults(func=cmd_encode)


def _render_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    r = sub.add_parser(name, help=help)
    r.add_argument("input")
    r.add_argument("-o", "--output", required=True)
    r.add_argument("--view", help="AZIM,ELEV in degrees (default: the canonical view); "
                   "write negative angles as --view=-30,10")
    r.add_argument("--size", type=int, default=224)
    r.set_defaults(func=cmd_render)


def _synth_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    s = sub.add_parser(name, help=help)
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--per-class", type=int, default=20)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)


_PARSERS = {"encode": _encode_parser, "render": _render_parser, "synth": _synth_parser}


def add_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Register ``cmah NAME`` (``encode``, ``render`` or ``synth``)."""
    _PARSERS[name](sub, name, help)
