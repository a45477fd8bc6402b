"""What the ``cmah`` commands share: the one-line user error and the runtime flags."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CLOUD_EXTS = {".ply", ".off", ".obj", ".pcd", ".xyz", ".txt", ".pts", ".npy"}
DATASET_EXTS = {".npz"}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def device_parent() -> argparse.ArgumentParser:
    """The ``--device`` flag (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--device", default="auto")
    return p


def runtime_parent() -> argparse.ArgumentParser:
    """``--device``, ``--threads`` and ``--quiet``, the flags of the commands that run the model over a dataset
    (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False, parents=[device_parent()])
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


@contextmanager
def plain_value_errors(*also: type[ValueError]) -> Iterator[None]:
    """Report a plain ``ValueError`` (or one of the types ``also``) as a :class:`CLIError`: what the library
    says about a setting or a file it refuses. Its subclasses (e.g. ``InputError``) go on as they are."""
    try:
        yield
    except ValueError as exc:
        if type(exc) not in (ValueError, *also):
            raise
        raise CLIError(str(exc)) from None


def file_kind(path: Path) -> str | None:
    """``"dataset"``, ``"picture"`` or ``"cloud"`` by the file's extension, ``None`` for other files: how
    ``cmah index add`` sorts the files it finds in folders."""
    ext = path.suffix.lower()
    if ext in DATASET_EXTS:
        return "dataset"
    if ext in IMAGE_EXTS:
        return "picture"
    if ext in CLOUD_EXTS:
        return "cloud"
    return None
