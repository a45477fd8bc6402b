"""Reading the members of a zip job, an archive that is hostile until proven otherwise.

Members with unsafe names (``..``, absolute, drive letters, backslashes), symbolic links, devices / fifos,
nested archives and duplicate names are refused one by one (``refused_member`` in the job's ``errors``)
while the others are indexed. Sizes are counted while members are decompressed, never taken from the
headers: a member above ``max_file_bytes`` is ``too_large``, one that inflates more than :data:`BOMB_RATIO`
times its compressed size (past :data:`BOMB_MIN_BYTES`) is a ``zip_bomb``, and a job whose members inflate
to more than ``max_uncompressed_bytes`` in all fails (:class:`ArchiveTooLarge`).
"""

from __future__ import annotations

import csv
import io
import re
import stat
import zipfile
from pathlib import PurePosixPath

from model.io import InputError, sniff_kind

ZIP_MAGIC = b"PK\x03\x04"
#: Bytes of a job file's (or zip member's) head that are sniffed for what it is.
HEAD_BYTES = 1 << 16
MAX_ZIP_MEMBERS = 100_000
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
#: Members with these extensions are archives inside the archive: refused, never opened.
NESTED_ARCHIVE_EXTS = {".zip", ".npz", ".npy", ".tar", ".tgz", ".gz", ".bz2", ".tbz2", ".xz", ".txz", ".lz",
                       ".lzma", ".zst", ".7z", ".rar", ".jar", ".war", ".cab", ".iso", ".z"}
#: A member inflating more than this many times its compressed size ...
BOMB_RATIO = 200
#: ... once more than this many bytes came out of it, is refused as a zip bomb.
BOMB_MIN_BYTES = 1 << 20
READ_CHUNK = 64 * 1024
REFUSED = "refused_member"
_DRIVE = re.compile(r"^[A-Za-z]:")


def member_problem(m: zipfile.ZipInfo) -> str | None:
    """Why an archive member must not be opened (``None``: it may be)."""
    name = m.filename
    if "\\" in name:
        return "unsafe name: backslash in the path"
    if name.startswith("/") or _DRIVE.match(name):
        return "unsafe name: absolute path"
    if ".." in PurePosixPath(name).parts:
        return "unsafe name: '..' in the path"
    mode = m.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "device, fifo or socket"
    if PurePosixPath(name).suffix.lower() in NESTED_ARCHIVE_EXTS:
        return "nested archive (archives inside the archive are not opened)"
    return None


class Refused(Exception):
    """A member that is not opened or not kept; ``code`` is the error recorded for it."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


class ArchiveTooLarge(ValueError):
    """The members of a zip job inflate to more than the job's limit."""


class Budget:
    """Uncompressed bytes a job may still read from its archive."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise ArchiveTooLarge(f"the archive inflates to more than {self.limit} bytes "
                                  "(CMAH_MAX_JOB_UNCOMPRESSED_BYTES); indexing stopped")


def read_member(zf: zipfile.ZipFile, m: zipfile.ZipInfo, budget: Budget, max_file_bytes: int) -> bytes:
    """The member's bytes, counted chunk by chunk as they are inflated (the header sizes are not trusted).

    Raises:
        InputError: ``too_large``, above ``max_file_bytes``.
        Refused: ``zip_bomb``.
        ArchiveTooLarge: the job's ``budget`` is spent.
    """
    parts: list[bytes] = []
    size = 0
    with zf.open(m) as f:
        while chunk := f.read(READ_CHUNK):
            size += len(chunk)
            budget.take(len(chunk))
            if size > max_file_bytes:
                raise InputError("too_large", f"inflates to more than the limit of {max_file_bytes} bytes")
            if size > BOMB_MIN_BYTES and size > BOMB_RATIO * _compressed_read(f, m):
                raise Refused("zip_bomb", f"compression ratio above {BOMB_RATIO}:1 ({_compressed_read(f, m)} "
                              f"compressed bytes inflated to {size})")
            parts.append(chunk)
    return b"".join(parts)


def _compressed_read(f: object, m: zipfile.ZipInfo) -> int:
    """Compressed bytes of member ``m`` inflated so far (at least 1): read from the archive minus what the
    inflater still holds. Uses CPython's ``ZipExtFile`` counters; without them, the whole compressed size."""
    left = getattr(f, "_compress_left", None)
    if not isinstance(left, int):
        return max(m.compress_size, 1)
    tail = getattr(getattr(f, "_decompressor", None), "unconsumed_tail", b"")
    return max(m.compress_size - left - len(tail if isinstance(tail, bytes) else b""), 1)


def read_labels(zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], budget: Budget,
                max_file_bytes: int) -> dict[str, str]:
    """``labels.csv`` (anywhere in the archive, a safe member): ``file,label`` rows, optional header; keys
    are paths and base names."""
    entry = next((m for m in members if PurePosixPath(m.filename).name.lower() == "labels.csv"
                  and member_problem(m) is None), None)
    if entry is None:
        return {}
    try:
        text = read_member(zf, entry, budget, max_file_bytes).decode("utf-8-sig", errors="replace")
    except (InputError, Refused) as exc:
        raise ValueError(f"labels.csv cannot be used: {exc}") from exc
    return _parse_labels(text)


def is_image(data: bytes, name: str) -> bool:
    """Whether a member is read as a picture: its content decides (a PLY named ``.png`` is a cloud), its
    name only when the content is neither recognisably (the reader then says what is wrong)."""
    found = sniff_kind(data[:HEAD_BYTES])
    return found[0] == "image" if found is not None else PurePosixPath(name).suffix.lower() in IMAGE_EXTS


def wanted_member(m: zipfile.ZipInfo) -> bool:
    """Whether a member is a file to index (not a directory, a hidden file or macOS metadata)."""
    p = PurePosixPath(m.filename)
    return not m.is_dir() and not p.name.startswith(".") and "__MACOSX" not in p.parts


def _parse_labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, row in enumerate(csv.reader(io.StringIO(text))):
        if len(row) < 2 or not row[0].strip():
            continue
        name, label = row[0].strip(), row[1].strip()
        if i == 0 and label.lower() in ("label", "class", "category"):
            continue
        out[name] = label
        out.setdefault(PurePosixPath(name).name, label)
    return out


def label_of(labels: dict[str, str], name: str) -> str | None:
    """The label of member ``name`` (by path, then by base name; ``None``: none)."""
    return labels.get(name) or labels.get(PurePosixPath(name).name) or None
