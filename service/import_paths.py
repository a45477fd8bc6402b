"""The file a job reads: what kind of job it makes, judged by its content (:func:`job_kind`), and the
server paths under ``CMAH_IMPORT_ROOT`` that may be imported in place (:func:`resolve_import`)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import BinaryIO

from model.io import sniff_kind

from .archives import HEAD_BYTES, ZIP_MAGIC
from .uploads import content_phrase


class JobFileError(Exception):
    """A file that cannot make a job; ``status`` and ``code`` are those of the HTTP answer."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class ImportPathError(JobFileError):
    """A server path that cannot be imported."""


def job_kind(f: BinaryIO, name: str) -> str:
    """The kind of job file ``f`` makes, judged by its content (never by ``name``, an upload's file name or
    the path given): ``"npz"`` for a zip of top-level ``.npy`` arrays only (a dataset; a zip job would refuse
    them all as nested archives), ``"zip"`` for another zip. The name breaks the tie only when the zip's
    directory cannot be read (the job then fails, saying why). Leaves ``f`` at its start.

    Raises:
        JobFileError: 400 ``empty``; 415 ``unsupported_format`` for anything but a zip, naming what it is
            when it is an image or a 3D file.
    """
    f.seek(0)
    head = f.read(HEAD_BYTES)
    f.seek(0)
    if not head:
        raise JobFileError(400, "empty", f"{name!r} is empty")
    if not head.startswith(ZIP_MAGIC):
        found = sniff_kind(head)
        got = f"got {content_phrase(found)}" if found is not None else "it is not a zip / npz archive"
        raise JobFileError(415, "unsupported_format", f"{name!r}: {got}; expected a dataset .npz or a .zip of "
                           "images / 3D files")
    try:
        with zipfile.ZipFile(f) as zf:
            names: list[str] | None = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        names = None
    finally:
        f.seek(0)
    if names is None:
        return "npz" if name.lower().endswith(".npz") else "zip"
    return "npz" if names and all(n.endswith(".npy") and "/" not in n for n in names) else "zip"


def path_kind(path: Path, name: str) -> str:
    """:func:`job_kind` of the file at ``path``."""
    with open(path, "rb") as f:
        return job_kind(f, name)


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def resolve_import(root: Path | None, given: str) -> Path:
    """The regular file ``given`` (relative to ``root``, or absolute) once proven to lie inside ``root``.

    ``..`` components, absolute paths outside the root and symbolic links leading out of it are refused
    (403) before anything is looked up; a missing file is 404; a directory or another format is 415.

    Raises:
        ImportPathError: with the HTTP status and error code of the refusal.
        JobFileError: the file is empty or not a zip / npz archive (:func:`job_kind`).
    """
    if root is None:
        raise ImportPathError(403, "imports_disabled", "server-side imports are disabled: CMAH_IMPORT_ROOT is not set")
    try:
        base = Path(root).resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise ImportPathError(403, "imports_disabled", "CMAH_IMPORT_ROOT is not an existing directory") from exc
    raw = Path(given)
    if "\x00" in given or ".." in raw.parts:
        raise ImportPathError(403, "outside_import_root", f"{given!r}: '..' is not allowed in an import path")
    candidate = raw if raw.is_absolute() else base / raw
    absolute_root = Path(os.path.abspath(root))
    if not (_inside(candidate, base) or _inside(candidate, absolute_root)):
        raise ImportPathError(403, "outside_import_root", f"{given!r} is outside CMAH_IMPORT_ROOT")
    try:
        if not _inside(candidate.resolve(), base):  # a symbolic link leading out of the root
            raise ImportPathError(403, "outside_import_root", f"{given!r} leads outside CMAH_IMPORT_ROOT")
        resolved = candidate.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ImportPathError(404, "not_found", f"no file {given!r} under CMAH_IMPORT_ROOT") from exc
    except (OSError, RuntimeError) as exc:  # permission, symlink loop
        raise ImportPathError(403, "forbidden", f"{given!r} cannot be resolved: {type(exc).__name__}") from exc
    if not _inside(resolved, base):
        raise ImportPathError(403, "outside_import_root", f"{given!r} leads outside CMAH_IMPORT_ROOT")
    _check_import_file(resolved, given)
    return resolved


def _check_import_file(path: Path, given: str) -> None:
    if not path.is_file():
        raise ImportPathError(415, "unsupported_format", f"{given!r} is not a regular file (a .npz or .zip is "
                              "expected; directories are not imported)")
    path_kind(path, given)
