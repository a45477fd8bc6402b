"""The readers' contract: the one error they raise (:class:`InputError`), the limits they enforce, and
reading a path or bytes within ``max_bytes``.

For any input bytes, every reader of :mod:`model.io` either returns a well-formed result or raises
:class:`InputError` (a ``ValueError``) whose ``code`` is a short machine code and whose message is one
human-readable line naming the problem.
"""

from __future__ import annotations

import os
import stat

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: Fewer raw points than this (for point clouds, or meshes whose faces all have zero area) -> too_few_points.
MIN_POINTS = 16
#: More points / vertices than this -> too_many_points.
MAX_POINTS = 2_000_000
#: Points per cloud fed to the model.
POINTS_PER_CLOUD = 1024
#: Surface samples drawn from a mesh: max(this, n_vertices), capped at MAX_POINTS.
MESH_SAMPLES = 8 * POINTS_PER_CLOUD
#: More faces than this -> too_many_points (bounds the work of sampling a mesh).
MAX_FACES = 10_000_000
DEFAULT_MAX_PIXELS = 40_000_000

SUPPORTED_3D = "PLY, OFF, OBJ, PCD, XYZ/TXT or NPY"
MAX_HEADER_BYTES = 1 << 20


class InputError(ValueError):
    """Input the readers refuse. ``code`` is a short machine code, ``str(err)`` a one-line message.

    Codes: ``empty``, ``truncated``, ``garbage``, ``unsupported_format``, ``count_mismatch``,
    ``absurd_count``, ``missing_xyz``, ``non_finite``, ``too_few_points``, ``too_many_points``,
    ``zero_extent``, ``too_large``, ``image_bomb``, ``not_an_image``, ``not_a_3d_file``, and
    ``unreadable`` (a path that cannot be opened or read).
    """

    def __init__(self, code: str, message: str):
        message = " ".join(str(message).split())  # always one line
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self):  # picklable despite the two-argument constructor
        return (type(self), (self.code, self.message))

    def __repr__(self) -> str:
        return f"InputError({self.code!r}, {self.message!r})"


def quote(value: bytes | str, limit: int = 40) -> str:
    """A short, quoted, one-line rendering of a token from the file for use in messages."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = value if len(value) <= limit else value[:limit] + "..."
    return repr(value)


def plural(n: int, word: str) -> str:
    if word == "vertex":
        return f"{n} {'vertex' if n == 1 else 'vertices'}"
    return f"{n} {word}{'' if n == 1 else 's'}"



def article(name: str) -> str:
    """``"a"`` or ``"an"`` for ``name``: "an OBJ", "a PNG" (formats read letter by letter: NPY, XYZ)."""
    return "an" if name[:1].upper() in tuple("AEIOUNX") else "a"


def read_source(source: str | os.PathLike | bytes | bytearray | memoryview, max_bytes: int,
                 name: str | None) -> tuple[bytes, str | None]:
    """The bytes of ``source`` (a path or bytes), refusing more than ``max_bytes`` before reading it all."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > max_bytes:
            raise InputError("too_large", f"input is {len(data)} bytes, above the limit of {max_bytes} bytes")
        return data, name
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"expected a path or bytes, got {type(source).__name__}")
    path = os.fspath(source)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise InputError("unreadable", f"{path} is a directory, not a file")
        if stat.S_ISREG(st.st_mode) and st.st_size > max_bytes:
            raise InputError("too_large",
                             f"{path} is {st.st_size} bytes, above the limit of {max_bytes} bytes")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise InputError("unreadable", f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise InputError("too_large", f"{path} is more than {max_bytes} bytes, above the limit")
    return data, name if name is not None else os.path.basename(path)


def file_ext(name: str | None) -> str:
    if not name:
        return ""
    return os.path.splitext(str(name))[1].lower().lstrip(".")
