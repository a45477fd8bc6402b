"""Validated input: 3D point-cloud / mesh files and images, shared by the CLI and the HTTP service.

Everything a user hands us goes through this module. The readers are written to be handed *anything*:
for any input bytes, :func:`read_points`, :func:`load_points` and :func:`read_image` either return a
well-formed result or raise :class:`InputError` (a ``ValueError``) whose ``code`` is a short machine
code and whose message is one human-readable line naming the problem. No other exception escapes
for any byte content (programming errors such as a wrong *argument type* still raise ``TypeError``).

3D formats
----------
The format is sniffed from the content; the file name (extension) is only a tie-break hint used when
the content matches no format (so a mislabelled file is still read correctly).

* **PLY** -- ``ascii``, ``binary_little_endian``, ``binary_big_endian``; any extra vertex properties;
  ``face`` elements (``vertex_indices``/``vertex_index`` lists) are fan-triangulated. The header is
  parsed and checked here and the body is read with numpy (vectorised; variable-length face lists are
  walked row by row), not with ``plyfile``: plyfile allocates ``np.empty(count)`` from the unchecked
  header count and reads in-memory binary bodies one row at a time.
* **OFF** -- including ``COFF``/``NOFF``/``CNOFF`` (extra columns ignored) and the ``OFF8 6 0``
  header-glued-to-counts form found in ModelNet files. ``OFF BINARY`` and 4D/nD OFF are refused.
* **OBJ** -- ``v`` lines (first three values) and ``f`` lines (``i``, ``i/t``, ``i//n``, ``i/t/n``,
  negative = relative indices); other statements are ignored.
* **PCD** -- ``DATA ascii`` and ``DATA binary`` (``binary_compressed`` is refused). Rows whose x, y or
  z is NaN are *dropped* (PCL's documented marker of an invalid point in organised clouds); Inf, or
  a cloud that is NaN everywhere, is still an error.
* **XYZ/TXT/CSV/PTS** -- one point per line, >= 3 numeric columns separated by whitespace, ``,`` or
  ``;`` (the first three are used); ``#`` comment lines, one non-numeric header line and a leading
  single-integer count line (``.pts``) are skipped.
* **NPY** -- a numeric ``[M, >=3]`` array (first three columns; leading singleton axes are squeezed)
  or a structured array with ``x``/``y``/``z`` fields. Never unpickled.

Validation: header counts are bounded by the byte size before anything is allocated (a count that
cannot fit in ``max_bytes`` bytes -> ``absurd_count``; a binary body shorter than its header requires
-> ``truncated``; an ASCII body with fewer rows than declared -> ``count_mismatch``). Rows *beyond*
the declared counts in ASCII bodies are ignored (trailing data after the last element we need is
not inspected). Face indices out of range -> ``garbage``. More than ``MAX_FACES`` faces (or
triangles after fan triangulation) -> ``too_many_points``. Text is parsed lazily, line by line, and
converted to numpy in chunks, so memory stays proportional to the values read, not to the tokens.

Mesh sampling
-------------
Files with faces are sampled on the surface, area-weighted: ``min(MAX_POINTS, max(8 *
POINTS_PER_CLOUD, n_vertices))`` samples, each picking a triangle with probability proportional to its
area (cumulative-area search) and a uniform point in it (``sqrt`` barycentric trick), from
``numpy.random.default_rng(seed)``. Isolated vertices not used by any face are ignored. If every face
has zero area the vertices are used as the point cloud instead. Fewer than ``MIN_POINTS`` raw points
(for point clouds) -> ``too_few_points``; more than ``MAX_POINTS`` vertices -> ``too_many_points``.

Normalisation (:func:`normalize_points`)
----------------------------------------
1. **Resample** to exactly ``n_points`` rows with ``numpy.random.default_rng(seed)``: with more points
   a uniform random subset without replacement (it keeps the sampling density of the input, like the
   i.i.d. surface samples of ModelNet-style training data, and is O(M)); with fewer, all points
   followed by ``n_points - M`` points drawn with replacement.
2. **Centre** on the centroid (mean) of the resampled points (the PointNet ``pc_normalize``
   convention), so the output mean is 0.
3. **Scale** so that the largest point norm is exactly 1 (unit sphere).

The result is float32 ``[n_points, 3]`` and deterministic for a given input and seed. The work is done
in float64 after dividing by the largest absolute coordinate, so even coordinates near the float64
limits neither overflow nor lose the shape.

Images (:func:`read_image`)
---------------------------
PNG, JPEG (incl. MPO), WebP, BMP, GIF and TIFF (first frame) only -- other Pillow plugins are never
consulted. ``width * height`` is checked against ``max_pixels`` from the header before decoding
(``image_bomb``); truncated data -> ``truncated``; EXIF orientation is applied; alpha / palette
transparency is composited on white; 16-bit images (``I;16*``, and ``I`` images whose values lie in
0..65535 above 255) are divided by 257 (not clipped), ``I`` images within 0..255 are kept, float
images within [0, 1] are scaled by 255, anything else is min-max stretched; CMYK and other modes use
Pillow's conversion to RGB. Pillow's own decompression-bomb error (above twice
``PIL.Image.MAX_IMAGE_PIXELS``) is also reported as ``image_bomb``.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_POINTS",
    "MIN_POINTS",
    "POINTS_PER_CLOUD",
    "InputError",
    "load_points",
    "normalize_points",
    "read_image",
    "read_points",
    "sniff_3d_format",
    "write_ply",
]

logger = logging.getLogger(__name__)

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

_SUPPORTED_3D = "PLY, OFF, OBJ, PCD, XYZ/TXT or NPY"
_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG covers MPO (phone JPEGs)
_MAX_HEADER_BYTES = 1 << 20
_TEXT_SNIFF_BYTES = 1 << 16


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


def _q(value: bytes | str, limit: int = 40) -> str:
    """A short, quoted, one-line rendering of a token from the file for use in messages."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = value if len(value) <= limit else value[:limit] + "..."
    return repr(value)


def _plural(n: int, word: str) -> str:
    if word == "vertex":
        return f"{n} {'vertex' if n == 1 else 'vertices'}"
    return f"{n} {word}{'' if n == 1 else 's'}"


# ----------------------------------------------------------------------------------------------------
# reading the source


def _read_source(source: str | os.PathLike | bytes | bytearray | memoryview, max_bytes: int,
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


def _ext(name: str | None) -> str:
    if not name:
        return ""
    return os.path.splitext(str(name))[1].lower().lstrip(".")


# ----------------------------------------------------------------------------------------------------
# sniffing

_IMAGE_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
)
_EXT_FORMATS = {"ply": "ply", "off": "off", "obj": "obj", "pcd": "pcd", "npy": "npy",
                "xyz": "xyz", "txt": "xyz", "csv": "xyz", "pts": "xyz", "asc": "xyz", "xyzn": "xyz",
                "xyzrgb": "xyz"}
_UNSUPPORTED_EXT = {"stl": "STL", "glb": "glTF", "gltf": "glTF", "fbx": "FBX", "las": "LAS", "laz": "LAZ",
                    "e57": "E57", "3ds": "3DS", "dae": "COLLADA", "npz": "NPZ", "h5": "HDF5", "hdf5": "HDF5",
                    "usd": "USD", "usdz": "USD", "blend": "Blender", "vtk": "VTK", "x3d": "X3D",
                    "wrl": "VRML", "ptx": "PTX"}
_OBJ_KEYWORDS = {b"v", b"vt", b"vn", b"vp", b"f", b"o", b"g", b"s", b"l", b"p", b"mtllib", b"usemtl",
                 b"cstype", b"deg", b"curv", b"curv2", b"surf", b"call", b"shadow_obj", b"trace_obj"}
_OFF_RE = re.compile(rb"^(?:ST)?C?N?(4?n?)OFF(?=$|[\s\d+\-.])")
_SEP_TABLE = bytes.maketrans(b",;", b"  ")


def _image_kind(data: bytes) -> str | None:
    """The image format ``data`` starts with, if any."""
    for magic, kind in _IMAGE_MAGICS:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:2] == b"BM" and len(data) >= 18 and struct.unpack_from("<I", data, 14)[0] in (
            12, 16, 40, 52, 56, 64, 108, 124):
        return "BMP"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIF/AVIF"
    return None


def _header_dims(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header of a PNG, GIF or BMP (for messages), else None."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data.startswith((b"GIF87a", b"GIF89a")):
            return struct.unpack("<HH", data[6:10])
        if data.startswith(b"BM"):
            w, h = struct.unpack("<ii", data[18:26])
            return w, abs(h)
    except struct.error:
        pass
    return None


def _bomb_error(data: bytes, exc: Exception, max_pixels: int) -> InputError:
    dims = _header_dims(data)
    if dims is not None:
        w, h = dims
        return InputError("image_bomb", f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels}")
    m = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{m.group(1)} pixels" if m else "too many pixels"
    return InputError("image_bomb", f"image is {size}, above the limit of {max_pixels} (decompression bomb)")


def _is_float(tok: bytes) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def _meaningful_lines(data: bytes, limit: int = 64) -> list[bytes]:
    """The first ``limit`` non-empty, stripped lines of the head of ``data`` (comments kept)."""
    out = []
    for line in data[:_TEXT_SNIFF_BYTES].splitlines():
        s = line.strip()
        if s:
            out.append(s)
            if len(out) >= limit:
                break
    return out


def _sniff(data: bytes, name: str | None) -> str:
    if not data or data.isspace():
        raise InputError("empty", "input is empty" if not data else "input contains only whitespace")
    kind = _image_kind(data)
    if kind is not None:
        raise InputError("not_a_3d_file", f"got a {kind} image, expected a 3D file ({_SUPPORTED_3D})")
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    if re.match(rb"ply[ \t]*(?:\r\n|\n|\r)", data):
        return "ply"
    if data.startswith(b"PK\x03\x04"):
        what = "NPZ archives" if _ext(name) == "npz" else "ZIP archives"
        raise InputError("unsupported_format",
                         f"{what} are not supported; send a single {_SUPPORTED_3D} file")
    if data.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"(\xb5/\xfd")):
        raise InputError("unsupported_format",
                         f"compressed files are not supported; send an uncompressed {_SUPPORTED_3D} file")
    if data.startswith(b"glTF"):
        raise InputError("unsupported_format", f"glTF files are not supported (expected {_SUPPORTED_3D})")
    if data.startswith(b"\x89HDF"):
        raise InputError("unsupported_format", f"HDF5 files are not supported (expected {_SUPPORTED_3D})")

    lines = _meaningful_lines(data)
    content = [ln for ln in lines if not ln.startswith(b"#")]
    if any(ln.startswith(b"#") and b".PCD" in ln.upper() for ln in lines[:4]):
        return "pcd"
    if content:
        first = content[0]
        m = _OFF_RE.match(first)
        if m:
            if m.group(1):
                raise InputError("unsupported_format", "only 3D OFF files are supported (got 4OFF/nOFF)")
            return "off"
        head = first.split(None, 1)[0]
        if head in (b"VERSION", b"FIELDS"):
            return "pcd"
        if head in _OBJ_KEYWORDS and not _is_float(head):
            return "obj"
        if head == b"solid" and _ext(name) in ("", "stl"):
            raise InputError("unsupported_format", f"STL files are not supported (expected {_SUPPORTED_3D})")
        rows = [t for t in (ln.translate(_SEP_TABLE).split() for ln in content[:8]) if t]
        for i, toks in enumerate(rows[:2]):
            if len(toks) >= 3 and all(_is_float(t) for t in toks[:3]):
                return "xyz"
            is_count = len(toks) == 1 and toks[0].isdigit()
            is_header = bool(toks) and not _is_float(toks[0])
            if i > 0 or not (is_count or is_header):
                break  # only one count line (.pts) or header line may precede the data
    ext = _ext(name)
    if ext in _EXT_FORMATS:
        return _EXT_FORMATS[ext]  # the parser produces the specific error
    if ext in _UNSUPPORTED_EXT:
        raise InputError("unsupported_format",
                         f"{_UNSUPPORTED_EXT[ext]} files are not supported (expected {_SUPPORTED_3D})")
    raise InputError("unsupported_format", f"unrecognised file content (expected {_SUPPORTED_3D})")


def sniff_3d_format(data: bytes, name: str | None = None) -> str:
    """The 3D format of ``data``: ``"ply" | "off" | "obj" | "pcd" | "xyz" | "npy"``.

    The content decides; ``name`` (its extension) only breaks ties when the content matches nothing.
    Raises :class:`InputError` (``empty``, ``not_a_3d_file`` for images, ``unsupported_format``).
    """
    return _sniff(bytes(data), name)


def sniff_kind(data: bytes) -> tuple[str, str] | None:
    """What the content of ``data`` is, from its magic bytes (images) or its head (3D files), without
    parsing it: ``("image", "PNG")``, ``("points", "ply")``, or ``None`` when it is neither recognisably.

    Lets a caller refuse an image sent where a 3D file is expected (and the reverse) before any reader
    runs on it. Never raises.
    """
    data = bytes(data[:_TEXT_SNIFF_BYTES])
    kind = _image_kind(data)
    if kind is not None:
        return "image", kind
    try:
        return "points", _sniff(data, None)
    except InputError:
        return None


# ----------------------------------------------------------------------------------------------------
# helpers shared by the parsers


def _floats(tokens: list[bytes], what: str) -> np.ndarray:
    """``tokens`` as float64; a non-numeric token -> garbage naming it."""
    try:
        return np.fromiter(map(float, tokens), dtype=np.float64, count=len(tokens))
    except ValueError:
        bad = next((t for t in tokens if not _is_float(t)), b"?")
        raise InputError("garbage", f"{what}: {_q(bad)} is not a number") from None


def _ints(tokens: list[bytes], what: str) -> np.ndarray:
    try:
        return np.fromiter(map(int, tokens), dtype=np.int64, count=len(tokens))
    except (ValueError, OverflowError):
        for t in tokens:
            try:
                v = int(t)
            except ValueError:
                raise InputError("garbage", f"{what}: {_q(t)} is not an integer") from None
            if abs(v) > 2**62:
                raise InputError("garbage", f"{what}: index {_q(t)} is out of range") from None
        raise InputError("garbage", f"{what}: malformed integers") from None


def _fan_triangulate(counts: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Triangles [T, 3] of polygons given as ``counts`` and concatenated indices ``flat`` (fan from
    the first vertex); polygons with fewer than 3 vertices are dropped."""
    counts = np.asarray(counts, dtype=np.int64)
    flat = np.asarray(flat, dtype=np.int64)
    if counts.size == 0:
        return np.empty((0, 3), dtype=np.int64)
    starts = np.cumsum(counts) - counts
    ntri = np.where(counts >= 3, counts - 2, 0)
    total = int(ntri.sum())
    if total == 0:
        return np.empty((0, 3), dtype=np.int64)
    if total > MAX_FACES:
        raise InputError("too_many_points", f"mesh has {total} triangles, above the limit of {MAX_FACES}")
    face = np.repeat(np.arange(counts.size), ntri)
    k = np.arange(total) - np.repeat(np.cumsum(ntri) - ntri, ntri)
    s = starts[face]
    return np.stack([flat[s], flat[s + k + 1], flat[s + k + 2]], axis=1)


def _check_faces(n_faces: int, what: str) -> None:
    if n_faces > MAX_FACES:
        raise InputError("too_many_points", f"{what} has {n_faces} faces, above the limit of {MAX_FACES}")


def _check_vertex_count(n: int, what: str) -> None:
    if n > MAX_POINTS:
        raise InputError("too_many_points",
                         f"{what} has {_plural(n, 'vertex')}, above the limit of {MAX_POINTS} points")


_CHUNK_ROWS = 1 << 16


def _lines(data: bytes, start: int = 0) -> Iterator[bytes]:
    """Stripped lines of ``data`` from byte ``start``, lazily (LF, CRLF and CR-only files)."""
    if b"\n" not in data and b"\r" in data:
        data = data.replace(b"\r", b"\n")
    f = io.BytesIO(data)
    f.seek(start)
    for line in f:
        yield line.strip()


def _content_lines(data: bytes, start: int = 0, comments: bool = False) -> Iterator[bytes]:
    """Non-empty stripped lines (without ``#`` comment lines when ``comments``)."""
    for s in _lines(data, start):
        if s and not (comments and s[:1] == b"#"):
            yield s


def _take(it: Iterator[bytes], n: int) -> Iterator[list[bytes]]:
    """The next ``n`` items of ``it`` in lists of at most ``_CHUNK_ROWS`` (fewer if ``it`` ends)."""
    while n > 0:
        chunk = list(islice(it, min(n, _CHUNK_ROWS)))
        if not chunk:
            return
        n -= len(chunk)
        yield chunk
        if n > 0 and len(chunk) < _CHUNK_ROWS:
            return


class _Accum:
    """Collects tokens and converts them to numpy in chunks, so that memory stays O(values), not
    O(Python objects)."""

    def __init__(self, convert: Callable[[list], np.ndarray], dtype: type) -> None:
        self._convert = convert
        self._dtype = dtype
        self._parts: list[np.ndarray] = []
        self._buf: list = []

    def extend(self, items) -> None:
        self._buf.extend(items)
        if len(self._buf) >= 4 * _CHUNK_ROWS:
            self.flush()

    def append(self, item) -> None:
        self._buf.append(item)
        if len(self._buf) >= 4 * _CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._parts.append(self._convert(self._buf))
            self._buf = []

    def array(self) -> np.ndarray:
        self.flush()
        return np.concatenate(self._parts) if self._parts else np.empty(0, dtype=self._dtype)


@dataclass
class _Geometry:
    vertices: np.ndarray                 # float64 [N, 3]
    triangles: np.ndarray | None = None  # int64 [T, 3] (unvalidated indices)
    what: str = "file"


# ----------------------------------------------------------------------------------------------------
# PLY

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_STRUCT_CODES = {"i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I"}
_PLY_FORMATS = {"ascii": "", "binary_little_endian": "<", "binary_big_endian": ">"}


@dataclass
class _PlyProp:
    name: str
    dtype: str              # value type code (numpy, no byte order)
    len_dtype: str | None   # list length type for list properties


@dataclass
class _PlyElement:
    name: str
    count: int
    props: list[_PlyProp] = field(default_factory=list)

    def label(self) -> str:
        n = self.name.lower()
        if n == "vertex":
            return _plural(self.count, "vertex")
        return _plural(self.count, n if n in ("face", "edge") else f"'{self.name}' element")

    def min_row_bytes(self, binary: bool) -> int:
        if binary:
            return sum(np.dtype(p.len_dtype or p.dtype).itemsize for p in self.props)
        return 2 * len(self.props)  # every value is at least one character plus a separator


def _parse_ply_header(data: bytes) -> tuple[str, list[_PlyElement], int]:
    m = re.match(rb"ply[ \t]*(\r\n|\n|\r)", data)
    if not m:
        raise InputError("garbage", "not a PLY file: the first line is not 'ply'")
    nl = m.group(1)
    trailing = rb"[ \t\r]*" if nl == b"\n" else rb"[ \t]*"
    end_re = re.compile(re.escape(nl) + rb"end_header" + trailing + re.escape(nl))
    limit = min(len(data), _MAX_HEADER_BYTES)
    em = end_re.search(data, m.end() - len(nl), limit)
    if em is not None:
        body_off = em.end()
        text = data[m.end():em.start() + len(nl)]
    else:
        head = data[:limit].rstrip(b" \t\r\n")
        if head.endswith(nl + b"end_header") and len(data) <= limit:
            body_off = len(data)  # the header ends at EOF: empty body
            text = head[m.end():len(head) - len(b"end_header")]
        elif len(data) < _MAX_HEADER_BYTES:
            raise InputError("truncated", "PLY header is not terminated by an 'end_header' line")
        else:
            raise InputError("garbage", f"PLY header is longer than {_MAX_HEADER_BYTES} bytes")
    fmt: str | None = None
    elements: list[_PlyElement] = []
    for raw in text.decode("latin-1").splitlines():
        toks = raw.split()
        if not toks:
            continue
        kw = toks[0]
        if kw in ("comment", "obj_info"):
            continue
        if kw == "format":
            if len(toks) < 2 or toks[1] not in _PLY_FORMATS:
                raise InputError("garbage", f"unknown PLY format line {_q(raw)}")
            fmt = toks[1]
        elif kw == "element":
            if len(toks) != 3:
                raise InputError("garbage", f"malformed PLY element line {_q(raw)}")
            try:
                count = int(toks[2])
            except ValueError:
                raise InputError("garbage", f"PLY element count {_q(toks[2])} is not an integer") from None
            if count < 0:
                raise InputError("garbage", f"PLY element {_q(toks[1])} has a negative count {count}")
            elements.append(_PlyElement(toks[1], count))
        elif kw == "property":
            if not elements:
                raise InputError("garbage", "PLY property line before any element line")
            if len(toks) == 5 and toks[1] == "list":
                lt, vt, pname = toks[2], toks[3], toks[4]
                if lt not in _PLY_TYPES or vt not in _PLY_TYPES:
                    raise InputError("garbage", f"unknown PLY property type in {_q(raw)}")
                if _PLY_TYPES[lt][0] == "f":
                    raise InputError("garbage", f"PLY list length type must be an integer in {_q(raw)}")
                elements[-1].props.append(_PlyProp(pname, _PLY_TYPES[vt], _PLY_TYPES[lt]))
            elif len(toks) == 3 and toks[1] != "list":
                if toks[1] not in _PLY_TYPES:
                    raise InputError("garbage", f"unknown PLY property type {_q(toks[1])}")
                elements[-1].props.append(_PlyProp(toks[2], _PLY_TYPES[toks[1]], None))
            else:
                raise InputError("garbage", f"malformed PLY property line {_q(raw)}")
        elif kw == "end_header":
            break
        else:
            raise InputError("garbage", f"unexpected PLY header line {_q(raw)}")
    if fmt is None:
        raise InputError("garbage", "PLY header has no 'format' line")
    for el in elements:
        if el.count and not el.props:
            raise InputError("garbage", f"PLY element {_q(el.name)} has {el.count} rows but no properties")
    return fmt, elements, body_off


def _scalar_index(el: _PlyElement, names: tuple[str, ...]) -> list[int]:
    """Indices of scalar properties named ``names`` (exact, then case-insensitive); missing -> missing_xyz."""
    out = []
    for nm in names:
        idx = next((i for i, p in enumerate(el.props) if p.name == nm and p.len_dtype is None), None)
        if idx is None:
            idx = next((i for i, p in enumerate(el.props)
                        if p.name.lower() == nm and p.len_dtype is None), None)
        if idx is None:
            have = ", ".join(p.name for p in el.props) or "none"
            raise InputError("missing_xyz",
                             f"PLY vertex element has no scalar '{nm}' property (properties: {have})")
        out.append(idx)
    return out


def _face_list_index(el: _PlyElement) -> int | None:
    lists = [i for i, p in enumerate(el.props) if p.len_dtype is not None]
    for i in lists:
        if el.props[i].name in ("vertex_indices", "vertex_index"):
            return i
    return lists[0] if len(lists) == 1 else None


def _gather(body: bytes, offsets: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values of ``dtype`` read at the (arbitrarily aligned) byte ``offsets`` of ``body``."""
    size = dtype.itemsize
    out = np.empty(offsets.size, dtype=dtype)
    for r in range(size):
        sel = offsets % size == r
        if sel.any():
            view = np.frombuffer(body, dtype=dtype, count=(len(body) - r) // size, offset=r)
            out[sel] = view[(offsets[sel] - r) // size]
    return out


_ElementData = tuple[int, list[np.ndarray], tuple[np.ndarray, np.ndarray] | None]


def _ply_binary_element(body: bytes, off: int, el: _PlyElement, bo: str, scalars: list[int],
                        list_idx: int | None) -> _ElementData:
    """Read element ``el`` from ``body`` at ``off``: (new offset, wanted scalar columns, wanted list)."""
    n = el.count
    props = el.props
    has_lists = any(p.len_dtype is not None for p in props)
    if not has_lists:
        dt = np.dtype({"names": [f"p{i}" for i in range(len(props))],
                       "formats": [bo + p.dtype for p in props]})
        need = n * dt.itemsize
        if off + need > len(body):
            raise InputError("truncated", f"binary PLY body ends early: {el.label()} need {need} bytes "
                                          f"but only {max(0, len(body) - off)} remain")
        arr = np.frombuffer(body, dtype=dt, count=n, offset=off) if n else np.zeros(0, dt)
        return off + need, [arr[f"p{i}"].astype(np.float64) for i in scalars], None

    # fast path: every row has the list lengths of row 0 -> one structured view
    if n:
        pos, lens = off, []
        for p in props:
            if p.len_dtype is None:
                pos += np.dtype(p.dtype).itemsize
                continue
            ldt = np.dtype(bo + p.len_dtype)
            if pos + ldt.itemsize > len(body):
                raise InputError("truncated", f"binary PLY body ends early in the {el.name} rows")
            k = int(np.frombuffer(body, ldt, 1, pos)[0])
            if k < 0:
                raise InputError("garbage", f"PLY {el.name} row 0 has a negative list length {k}")
            lens.append(k)
            pos += ldt.itemsize + k * np.dtype(p.dtype).itemsize
        names, formats, li = [], [], 0
        for i, p in enumerate(props):
            if p.len_dtype is None:
                names.append(f"p{i}")
                formats.append(bo + p.dtype)
            else:
                names += [f"n{i}", f"p{i}"]
                formats += [bo + p.len_dtype, (bo + p.dtype, (lens[li],))]
                li += 1
        dt = np.dtype({"names": names, "formats": formats}) if pos <= len(body) else None
        if dt is not None and off + n * dt.itemsize <= len(body):
            arr = np.frombuffer(body, dtype=dt, count=n, offset=off)
            li = 0
            ok = True
            for i, p in enumerate(props):
                if p.len_dtype is not None:
                    ok = ok and bool((arr[f"n{i}"] == lens[li]).all())
                    li += 1
            if ok:
                cols = [arr[f"p{i}"].astype(np.float64) for i in scalars]
                lst = None
                if list_idx is not None:
                    k = lens[[j for j, p in enumerate(props) if p.len_dtype is not None].index(list_idx)]
                    vals = arr[f"p{list_idx}"].reshape(n, k)
                    lst = (np.full(n, k, dtype=np.int64), vals.reshape(-1))
                return off + n * dt.itemsize, cols, lst

    # general path: walk the rows (variable-length lists)
    _check_faces(n, f"PLY {el.name} element")
    sizes = [np.dtype(p.dtype).itemsize for p in props]
    len_structs = [struct.Struct(bo + _STRUCT_CODES[p.len_dtype]) if p.len_dtype else None for p in props]
    scalar_offsets = {i: np.empty(n, dtype=np.int64) for i in scalars}
    list_starts = np.empty(n, dtype=np.int64)
    list_lens = np.empty(n, dtype=np.int64)
    end = len(body)
    pos = off
    try:
        for r in range(n):
            for i in range(len(props)):
                ls = len_structs[i]
                if ls is None:
                    if i in scalar_offsets:
                        scalar_offsets[i][r] = pos
                    pos += sizes[i]
                    continue
                k = ls.unpack_from(body, pos)[0]
                if k < 0:
                    raise InputError("garbage", f"PLY {el.name} row {r} has a negative list length {k}")
                pos += ls.size
                if i == list_idx:
                    list_starts[r] = pos
                    list_lens[r] = k
                pos += k * sizes[i]
            if pos > end:
                raise struct.error("past the end")
    except struct.error:
        raise InputError("truncated", f"binary PLY body ends early in the {el.name} rows "
                                      f"(header declares {el.label()})") from None
    cols = [_gather(body, scalar_offsets[i], np.dtype(bo + props[i].dtype)).astype(np.float64)
            for i in scalars]
    lst = None
    if list_idx is not None:
        total = int(list_lens.sum())
        rel = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(list_lens) - list_lens, list_lens)
        offs = np.repeat(list_starts, list_lens) + rel * sizes[list_idx]
        lst = (list_lens, _gather(body, offs, np.dtype(bo + props[list_idx].dtype)))
    return pos, cols, lst


def _ply_ascii_element(lines: Iterator[bytes], el: _PlyElement, scalars: list[int],
                       list_idx: int | None) -> tuple[list[np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """Read the rows of ``el`` (one per line) from ``lines``: (wanted scalar columns, wanted list)."""
    props = el.props
    what = f"PLY {el.name} rows"
    simple = all(p.len_dtype is None for p in props)
    if not simple:
        _check_faces(el.count, f"PLY {el.name} element")
    list_is_float = list_idx is not None and props[list_idx].dtype[0] == "f"
    scal = {i: _Accum(lambda t: _floats(t, what), np.float64) for i in scalars}
    counts = _Accum(lambda t: np.asarray(t, dtype=np.int64), np.int64)
    flat = _Accum(lambda t: _floats(t, what) if list_is_float else _ints(t, what),
                  np.float64 if list_is_float else np.int64)
    k_all = len(props)
    r = 0
    for chunk in _take(lines, el.count):
        for line in chunk:
            t = line.split()
            if simple:
                if len(t) != k_all:
                    raise InputError("garbage",
                                     f"PLY {el.name} row {r} has {len(t)} values, expected {k_all}")
                for i in scalars:
                    scal[i].append(t[i])
                r += 1
                continue
            pos = 0
            try:
                for i, p in enumerate(props):
                    if p.len_dtype is None:
                        if i in scal:
                            scal[i].append(t[pos])
                        pos += 1
                        continue
                    k = int(t[pos])
                    if k < 0 or pos + 1 + k > len(t):
                        raise ValueError
                    if i == list_idx:
                        counts.append(k)
                        flat.extend(t[pos + 1:pos + 1 + k])
                    pos += 1 + k
            except (IndexError, ValueError):
                raise InputError("garbage", f"PLY {el.name} row {r} is malformed: {_q(line)}") from None
            if pos != len(t):
                raise InputError("garbage", f"PLY {el.name} row {r} has {len(t)} values, expected {pos}")
            r += 1
    if r < el.count:
        raise InputError("count_mismatch", f"PLY header declares {el.label()} but the body holds {r}")
    cols = [scal[i].array() for i in scalars]
    lst = (counts.array(), flat.array()) if list_idx is not None else None
    return cols, lst


def _parse_ply(data: bytes, max_bytes: int) -> _Geometry:
    fmt, elements, body_off = _parse_ply_header(data)
    vi = next((i for i, e in enumerate(elements) if e.name.lower() == "vertex"), None)
    if vi is None:
        raise InputError("missing_xyz", "PLY file has no 'vertex' element")
    vel = elements[vi]
    xyz_idx = _scalar_index(vel, ("x", "y", "z"))
    fi = next((i for i, e in enumerate(elements) if e.name.lower() == "face" and e.count > 0), None)
    face_list = _face_list_index(elements[fi]) if fi is not None else None
    if fi is not None and face_list is None:
        logger.info("PLY face element has no vertex index list; reading vertices only")
        fi = None
    last = max(vi, fi if fi is not None else -1)
    binary = fmt != "ascii"
    need = sum(e.count * e.min_row_bytes(binary) for e in elements[:last + 1])
    body_len = len(data) - body_off
    if need > max_bytes:
        worst = max(elements[:last + 1], key=lambda e: e.count * e.min_row_bytes(binary))
        raise InputError("absurd_count", f"PLY header declares {worst.label()}, which cannot fit in "
                                         f"the {max_bytes}-byte input limit (needs at least {need} bytes)")
    if binary and need > body_len:
        what = ", ".join(e.label() for e in elements[:last + 1] if e.count)
        raise InputError("truncated", f"binary PLY body is {body_len} bytes but the header's {what} "
                                      f"need at least {need} bytes")
    _check_vertex_count(vel.count, "PLY file")
    if fi is not None:
        _check_faces(elements[fi].count, "PLY file")

    verts: np.ndarray | None = None
    faces: tuple[np.ndarray, np.ndarray] | None = None
    if binary:
        bo = _PLY_FORMATS[fmt]
        off = body_off
        for i, el in enumerate(elements[:last + 1]):
            scal = xyz_idx if i == vi else []
            lidx = face_list if i == fi else None
            off, cols, lst = _ply_binary_element(data, off, el, bo, scal, lidx)
            if i == vi:
                verts = np.stack(cols, axis=1)
            if i == fi:
                faces = lst
    else:
        lines = _content_lines(data, body_off)
        for i, el in enumerate(elements[:last + 1]):
            if i not in (vi, fi):
                got = sum(1 for _ in islice(lines, el.count))
                if got < el.count:
                    raise InputError("count_mismatch", f"PLY header declares {el.label()} but the body "
                                                       f"holds {got}")
                continue
            scal = xyz_idx if i == vi else []
            lidx = face_list if i == fi else None
            cols, lst = _ply_ascii_element(lines, el, scal, lidx)
            if i == vi:
                verts = np.stack(cols, axis=1)
            if i == fi:
                faces = lst
    assert verts is not None
    tris = None
    if faces is not None:
        counts, flat = faces
        if flat.dtype.kind == "f" and not (np.isfinite(flat).all() and (flat == np.round(flat)).all()):
            raise InputError("garbage", "PLY face indices are not integers")
        if flat.size and (flat.min() < 0 or flat.max() > np.iinfo(np.int64).max // 2):
            raise InputError("garbage", f"PLY face index {int(flat.min())} is out of range")
        tris = _fan_triangulate(counts, flat.astype(np.int64))
    return _Geometry(verts.reshape(-1, 3), tris, "PLY file")


# ----------------------------------------------------------------------------------------------------
# OFF


def _strip_comment(line: bytes) -> bytes:
    return line.split(b"#", 1)[0] if b"#" in line else line


def _parse_off(data: bytes, max_bytes: int) -> _Geometry:
    lines = _content_lines(data, comments=True)
    first = next(lines, None)
    if first is None:
        raise InputError("empty", "OFF file has no content")
    m = _OFF_RE.match(first)
    if not m:
        raise InputError("garbage", "not an OFF file: the first line is not 'OFF'")
    rest = _strip_comment(first[m.end():]).split()
    if rest and rest[0].upper() == b"BINARY":
        raise InputError("unsupported_format", "binary OFF files are not supported")
    if not rest:
        nxt = next(lines, None)
        if nxt is None:
            raise InputError("truncated", "OFF file ends after the 'OFF' line (no vertex/face counts)")
        rest = _strip_comment(nxt).split()
    if len(rest) < 2:
        raise InputError("garbage", f"OFF counts line {_q(b' '.join(rest))} needs vertex and face counts")
    try:
        nv, nf = int(rest[0]), int(rest[1])
    except ValueError:
        raise InputError("garbage", f"OFF counts {_q(b' '.join(rest[:3]))} are not integers") from None
    if nv < 0 or nf < 0:
        raise InputError("garbage", f"OFF counts are negative ({nv} vertices, {nf} faces)")
    if nv * 6 + nf * 8 > max_bytes:
        raise InputError("absurd_count", f"OFF header declares {_plural(nv, 'vertex')} and "
                                         f"{_plural(nf, 'face')}, which cannot fit in the {max_bytes}-byte "
                                         "input limit")
    _check_vertex_count(nv, "OFF file")
    _check_faces(nf, "OFF file")
    vals = _Accum(lambda t: _floats(t, "OFF vertices"), np.float64)
    r = 0
    for chunk in _take(lines, nv):
        for line in chunk:
            t = _strip_comment(line).split()
            if len(t) < 3:
                raise InputError("garbage", f"OFF vertex {r} has {_plural(len(t), 'value')}, need at least 3")
            vals.extend(t[:3])
            r += 1
    if r < nv:
        raise InputError("count_mismatch",
                         f"OFF header declares {_plural(nv, 'vertex')} but the body holds {r}")
    verts = vals.array().reshape(-1, 3)
    counts = _Accum(lambda t: np.asarray(t, dtype=np.int64), np.int64)
    flat = _Accum(lambda t: _ints(t, "OFF faces"), np.int64)
    r = 0
    for chunk in _take(lines, nf):
        for line in chunk:
            t = _strip_comment(line).split() or [b"?"]
            try:
                k = int(t[0])
            except ValueError:
                raise InputError("garbage",
                                 f"OFF face {r} has a non-integer vertex count {_q(t[0])}") from None
            if k < 0 or len(t) < 1 + k:
                raise InputError("garbage", f"OFF face {r} declares {k} vertices but lists {len(t) - 1}")
            counts.append(k)
            flat.extend(t[1:1 + k])
            r += 1
    if r < nf:
        raise InputError("count_mismatch",
                         f"OFF header declares {_plural(nf, 'face')} but the body holds {r}")
    tris = _fan_triangulate(counts.array(), flat.array()) if nf else None
    return _Geometry(verts, tris, "OFF file")


# ----------------------------------------------------------------------------------------------------
# OBJ


def _parse_obj(data: bytes, max_bytes: int) -> _Geometry:
    vals = _Accum(lambda t: _floats(t, "OBJ vertices"), np.float64)
    counts = _Accum(lambda t: np.asarray(t, dtype=np.int64), np.int64)
    flat = _Accum(lambda t: np.asarray(t, dtype=np.int64), np.int64)
    nv = nfaces = 0
    for lineno, s in enumerate(_lines(data), 1):
        if not s or s[:1] == b"#":
            continue
        parts = _strip_comment(s).split()
        if not parts:
            continue
        key = parts[0]
        if key == b"v":
            if len(parts) < 4:
                raise InputError("garbage",
                                 f"OBJ line {lineno}: vertex has {_plural(len(parts) - 1, 'value')}, need 3")
            vals.extend(parts[1:4])
            nv += 1
            if nv > MAX_POINTS:
                _check_vertex_count(nv, "OBJ file")
        elif key == b"f":
            nfaces += 1
            if nfaces > MAX_FACES:
                _check_faces(nfaces, "OBJ file")
            try:
                idx = [int(r.split(b"/", 1)[0]) for r in parts[1:]]
            except ValueError:
                raise InputError("garbage", f"OBJ line {lineno}: malformed face {_q(s)}") from None
            for i in idx:
                if i == 0 or i < -nv or i > MAX_POINTS:
                    raise InputError("garbage", f"OBJ line {lineno}: face index {i} is out of range "
                                                f"({_plural(nv, 'vertex')} defined so far)")
            counts.append(len(idx))
            flat.extend(i - 1 if i > 0 else nv + i for i in idx)
    if nv == 0:
        raise InputError("missing_xyz", "OBJ file has no vertex ('v') lines")
    verts = vals.array().reshape(-1, 3)
    tris = _fan_triangulate(counts.array(), flat.array()) if nfaces else None
    return _Geometry(verts, tris, "OBJ file")


# ----------------------------------------------------------------------------------------------------
# PCD

_PCD_KEYS = ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS")
_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
              ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}


def _parse_pcd(data: bytes, max_bytes: int) -> _Geometry:
    header: dict[str, list[bytes]] = {}
    pos = 0
    data_mode: bytes | None = None
    while pos < len(data) and pos < _MAX_HEADER_BYTES:
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        line = data[pos:end].strip()
        pos = end
        if not line or line.startswith(b"#"):
            continue
        toks = line.split()
        key = toks[0].decode("latin-1").upper()
        header[key] = toks[1:]
        if key == "DATA":
            data_mode = toks[1].lower() if len(toks) > 1 else b""
            break
        if key not in _PCD_KEYS:
            raise InputError("garbage", f"unexpected PCD header line {_q(line)}")
    if data_mode is None:
        raise InputError("truncated", "PCD header has no DATA line")
    if data_mode == b"binary_compressed":
        raise InputError("unsupported_format",
                         "PCD 'binary_compressed' data is not supported; save as ascii or binary")
    if data_mode not in (b"ascii", b"binary"):
        raise InputError("garbage", f"unknown PCD DATA type {_q(data_mode)}")
    fields = [f.decode("latin-1") for f in header.get("FIELDS", [])]
    if not fields:
        raise InputError("garbage", "PCD header has no FIELDS line")
    nf = len(fields)

    def ints(key: str, default: list[int] | None) -> list[int]:
        if key not in header:
            if default is None:
                raise InputError("garbage", f"PCD header has no {key} line")
            return default
        try:
            vals = [int(t) for t in header[key]]
        except ValueError:
            raise InputError("garbage", f"PCD {key} values are not integers") from None
        return vals

    counts = ints("COUNT", [1] * nf)
    if len(counts) != nf or any(c < 1 or c > 1 << 20 for c in counts):
        raise InputError("garbage", f"PCD COUNT line has {len(counts)} entries for {nf} fields or bad values")
    xyz = []
    for nm in ("x", "y", "z"):
        if nm not in fields:
            raise InputError("missing_xyz", f"PCD file has no '{nm}' field (fields: {' '.join(fields)})")
        xyz.append(fields.index(nm))
    width = ints("WIDTH", [-1])[:1] or [-1]
    height = ints("HEIGHT", [1])[:1] or [1]
    points_decl = ints("POINTS", [-1])[:1] or [-1]
    n = points_decl[0]
    if width[0] >= 0 and height[0] >= 0:
        wh = width[0] * height[0]
        if n < 0:
            n = wh
        elif wh != n:
            raise InputError("count_mismatch", f"PCD header says POINTS {n} but WIDTH x HEIGHT is "
                                               f"{width[0]} x {height[0]} = {wh}")
    if n < 0:
        raise InputError("garbage", "PCD header has no valid POINTS or WIDTH line")
    if data_mode == b"ascii":
        if n * 2 * sum(counts) > max_bytes + 1:
            raise InputError("absurd_count", f"PCD header declares {n} points, which cannot fit in the "
                                             f"{max_bytes}-byte input limit")
        _check_vertex_count(n, "PCD file")
        starts = np.cumsum([0] + counts)
        need = int(starts[-1])
        xyz_cols = [int(starts[i]) for i in xyz]
        vals = _Accum(lambda t: _floats(t, "PCD points"), np.float64)
        r = 0
        for chunk in _take(_content_lines(data, pos), n):
            for line in chunk:
                t = line.split()
                if len(t) != need:
                    raise InputError("garbage", f"PCD point {r} has {len(t)} values, expected {need}")
                vals.extend(t[c] for c in xyz_cols)
                r += 1
        if r < n:
            raise InputError("count_mismatch", f"PCD header declares {n} points but the body holds {r}")
        flat_xyz = vals.array().reshape(-1, 3)
        cols = [flat_xyz[:, 0], flat_xyz[:, 1], flat_xyz[:, 2]]
    else:
        sizes = ints("SIZE", None)
        types = [t.decode("latin-1").upper() for t in header.get("TYPE", [])]
        if len(sizes) != nf or len(types) != nf:
            raise InputError("garbage", f"PCD SIZE/TYPE lines do not match the {nf} FIELDS")
        offsets, formats = [], []
        row = 0
        for sz, ty, cnt in zip(sizes, types, counts, strict=True):
            code = _PCD_TYPES.get((ty, sz))
            if code is None:
                raise InputError("garbage", f"unsupported PCD field type {ty}{sz}")
            offsets.append(row)
            formats.append("<" + code)
            row += sz * cnt
        if n * row > max_bytes:
            raise InputError("absurd_count", f"PCD header declares {n} points of {row} bytes, which cannot "
                                             f"fit in the {max_bytes}-byte input limit")
        body_len = len(data) - pos
        if n * row > body_len:
            raise InputError("truncated", f"binary PCD body is {body_len} bytes but {n} points of "
                                          f"{row} bytes need {n * row}")
        _check_vertex_count(n, "PCD file")
        dt = np.dtype({"names": ["x", "y", "z"], "formats": [formats[i] for i in xyz],
                       "offsets": [offsets[i] for i in xyz], "itemsize": row})
        arr = np.frombuffer(data, dtype=dt, count=n, offset=pos) if n else np.zeros(0, dt)
        cols = [arr[k].astype(np.float64) for k in ("x", "y", "z")]
    verts = np.stack(cols, axis=1)
    nan_rows = np.isnan(verts).any(axis=1)
    if nan_rows.any() and not nan_rows.all():
        logger.debug("PCD: dropping %d NaN (invalid) points of %d", int(nan_rows.sum()), n)
        verts = verts[~nan_rows]
    return _Geometry(verts, None, "PCD file")


# ----------------------------------------------------------------------------------------------------
# XYZ / TXT


def _parse_xyz(data: bytes, max_bytes: int) -> _Geometry:
    vals = _Accum(lambda t: _floats(t, "XYZ points"), np.float64)
    n = 0
    skipped_header = False
    for lineno, s in enumerate(_lines(data), 1):
        if not s or s[:1] == b"#" or s[:2] == b"//":
            continue
        t = s.translate(_SEP_TABLE).split()
        if not t:
            continue  # a line of separators only
        if n == 0 and not skipped_header and ((len(t) == 1 and t[0].isdigit()) or not _is_float(t[0])):
            skipped_header = True  # a header line ("x y z ...") or a .pts count line
            continue
        if len(t) < 3:
            raise InputError("garbage" if len(t) != 2 else "missing_xyz",
                             f"XYZ line {lineno} has {_plural(len(t), 'value')}, need at least 3")
        vals.extend(t[:3])
        n += 1
        if n > MAX_POINTS:
            raise InputError("too_many_points", f"XYZ file has more than {MAX_POINTS} points")
    if n == 0:
        raise InputError("too_few_points", "XYZ file contains no points")
    return _Geometry(vals.array().reshape(-1, 3), None, "XYZ file")


# ----------------------------------------------------------------------------------------------------
# NPY


def _parse_npy(data: bytes, max_bytes: int) -> _Geometry:
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=100_000)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=100_000)
    except Exception as exc:  # ValueError, SyntaxError, tokenize.TokenError, EOFError, ...
        raise InputError("garbage", f"malformed NPY header ({type(exc).__name__}: {str(exc)[:80]})") from None
    if dtype.hasobject:
        raise InputError("unsupported_format", "NPY object arrays are not accepted (they require unpickling)")
    shape = tuple(int(s) for s in shape)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    offset = fp.tell()
    if nbytes > max_bytes:
        raise InputError("absurd_count", f"NPY header declares shape {shape} ({nbytes} bytes), above the "
                                         f"{max_bytes}-byte input limit")
    if nbytes > len(data) - offset:
        raise InputError("truncated", f"NPY data is {len(data) - offset} bytes but shape {shape} of {dtype} "
                                      f"needs {nbytes}")
    if dtype.names:
        names = {nm.lower(): nm for nm in dtype.names}
        if not all(k in names for k in ("x", "y", "z")):
            raise InputError("missing_xyz",
                             f"NPY structured array has no x/y/z fields ({', '.join(dtype.names)})")
        for k in ("x", "y", "z"):
            sub = dtype.fields[names[k]][0]
            if sub.kind not in "fiu" or sub.shape:
                raise InputError("unsupported_format", f"NPY field {k!r} has unsupported type {sub}")
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        arr = arr.reshape(shape, order="F" if fortran else "C").reshape(-1)
        verts = np.stack([arr[names[k]].astype(np.float64) for k in ("x", "y", "z")], axis=1)
        return _Geometry(verts, None, "NPY file")
    if dtype.kind not in "fiu" or dtype.subdtype is not None:
        raise InputError("unsupported_format", f"NPY array has unsupported dtype {dtype} (need float or int)")
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 1 and shape[0] == 3:
        raise InputError("too_few_points", "NPY array holds a single point (shape (3,)), need [M, 3]")
    if len(shape) != 2:
        raise InputError("garbage", f"NPY array has shape {shape}, expected [M, 3]")
    if shape[1] < 3:
        raise InputError("missing_xyz", f"NPY array has shape {shape}: fewer than 3 columns")
    if shape[0] < MIN_POINTS and shape[1] >= MIN_POINTS and shape[0] >= 3:
        raise InputError("garbage", f"NPY array has shape {shape}, which looks transposed; expected [M, 3]")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(
        shape, order="F" if fortran else "C")
    return _Geometry(arr[:, :3].astype(np.float64), None, "NPY file")


# ----------------------------------------------------------------------------------------------------
# geometry -> points

_PARSERS = {"ply": _parse_ply, "off": _parse_off, "obj": _parse_obj, "pcd": _parse_pcd, "xyz": _parse_xyz,
            "npy": _parse_npy}


def _sample_surface(v: np.ndarray, tris: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray | None:
    """``n`` area-weighted uniform samples on the triangles; None if the total area is zero."""
    lo, hi = v.min(axis=0), v.max(axis=0)
    centre = lo / 2 + hi / 2
    scale = float(np.abs(v - centre).max()) if v.size else 0.0
    if not scale > 0 or not math.isfinite(scale):
        return None
    vs = (v - centre) / scale  # coordinates in [-1, 1]: the cross products cannot overflow

    def corners(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return vs[t[:, 0]], vs[t[:, 1]], vs[t[:, 2]]

    area = np.empty(len(tris), dtype=np.float64)
    step = 1 << 20
    for i in range(0, len(tris), step):
        a, b, c = corners(tris[i:i + step])
        area[i:i + step] = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    cdf = np.cumsum(area)
    total = float(cdf[-1]) if cdf.size else 0.0
    if not total > 0 or not math.isfinite(total):
        return None
    pick = np.minimum(np.searchsorted(cdf, rng.random(n) * total, side="right"), len(tris) - 1)
    r1 = np.sqrt(rng.random((n, 1)))
    r2 = rng.random((n, 1))
    a, b, c = corners(tris[pick])
    pts = (1 - r1) * a + r1 * (1 - r2) * b + r1 * r2 * c
    return pts * scale + centre


def _geometry_to_points(g: _Geometry, seed: int) -> np.ndarray:
    v = np.asarray(g.vertices, dtype=np.float64).reshape(-1, 3)
    _check_vertex_count(len(v), g.what)
    if not np.isfinite(v).all():
        bad = int((~np.isfinite(v).all(axis=1)).sum())
        raise InputError("non_finite", f"points contain NaN or Inf values ({bad} of {len(v)} points)")
    if g.triangles is not None and len(g.triangles):
        tris = g.triangles
        lo, hi = int(tris.min()), int(tris.max())
        if lo < 0 or hi >= len(v):
            badi = lo if lo < 0 else hi
            raise InputError("garbage", f"{g.what} face references vertex index {badi} but there are only "
                                        f"{_plural(len(v), 'vertex')} (valid 0..{len(v) - 1})")
        n = min(MAX_POINTS, max(MESH_SAMPLES, len(v)))
        pts = _sample_surface(v, tris, n, np.random.default_rng(seed))
        if pts is not None and np.isfinite(pts).all():
            return pts
        logger.info("%s: all %d faces have zero area; using the vertices as points", g.what, len(tris))
    if len(v) < MIN_POINTS:
        raise InputError("too_few_points", f"{g.what} has {len(v)} point{'s' if len(v) != 1 else ''}, "
                                           f"need at least {MIN_POINTS}")
    if (v.min(axis=0) == v.max(axis=0)).all():
        raise InputError("zero_extent", f"all {len(v)} points are identical (zero extent)")
    return v


def read_points(source: str | os.PathLike | bytes, *, name: str | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES, seed: int = 0) -> np.ndarray:
    """Raw points float64 ``[M, 3]`` of a 3D file given as a path or bytes (a ``str`` is a path).

    Meshes are sampled on their surface (area-weighted, seeded; see the module docstring), point
    clouds are returned as stored. ``name`` is a file-name hint (defaults to the path's base name).
    Raises :class:`InputError` for anything unusable; no other exception escapes for any input bytes.
    """
    data, name = _read_source(source, max_bytes, name)
    fmt = _sniff(data, name)
    try:
        with np.errstate(all="ignore"):
            geom = _PARSERS[fmt](data, max_bytes)
            pts = _geometry_to_points(geom, seed)
    except InputError:
        raise
    except MemoryError:
        raise InputError("too_large", f"not enough memory to read this {fmt.upper()} file") from None
    except RecursionError:
        raise InputError("garbage", f"could not parse the {fmt.upper()} file") from None
    except Exception as exc:  # never let a parser error escape as anything but InputError
        logger.debug("unexpected error parsing %s data", fmt, exc_info=True)
        raise InputError("garbage", f"could not parse the {fmt.upper()} file: {type(exc).__name__}: "
                                    f"{str(exc)[:200]}") from None
    return pts


def normalize_points(points: np.ndarray, n_points: int = POINTS_PER_CLOUD, seed: int = 0) -> np.ndarray:
    """float32 ``[n_points, 3]``: resampled (seeded random subset / all + draws with replacement),
    centred on the centroid, scaled to max norm 1. Deterministic for a given input and seed.

    Raises :class:`InputError`: ``empty``, ``garbage`` (not an ``[M, 3]`` numeric array),
    ``non_finite``, ``zero_extent``.
    """
    n_points = int(n_points)
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("garbage", "points are not a numeric array") from None
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError("garbage", f"points must be an [M, 3] array, got shape {tuple(pts.shape)}")
    m = pts.shape[0]
    if m == 0:
        raise InputError("empty", "there are no points")
    with np.errstate(all="ignore"):
        if not np.isfinite(pts).all():
            raise InputError("non_finite", "points contain NaN or Inf values")
        if (pts.min(axis=0) == pts.max(axis=0)).all():
            raise InputError("zero_extent", f"all {m} points are identical (zero extent)")
        rng = np.random.default_rng(seed)
        if m > n_points:
            idx = rng.choice(m, size=n_points, replace=False)
        elif m < n_points:
            idx = np.concatenate([np.arange(m), rng.integers(0, m, size=n_points - m)])
        else:
            idx = np.arange(m)
        sel = pts[idx]
        if (sel.min(axis=0) == sel.max(axis=0)).all():
            # the subset happened to hit only copies of one point: swap in the farthest point
            idx[-1] = int(np.abs(pts - sel[0]).max(axis=1).argmax())
            sel = pts[idx]
        s0 = float(np.abs(sel).max())
        sel = sel / s0                       # |sel| <= 1: nothing below can overflow
        sel = sel - sel.mean(axis=0)
        radius = float(np.sqrt((sel * sel).sum(axis=1)).max())
        if not (radius > 0 and math.isfinite(radius)):
            raise InputError("zero_extent", "points have no measurable extent")
        out = (sel / radius).astype(np.float32)
    return out


def load_points(source: str | os.PathLike | bytes, *, name: str | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES, n_points: int = POINTS_PER_CLOUD,
                seed: int = 0) -> np.ndarray:
    """:func:`read_points` then :func:`normalize_points`: float32 ``[n_points, 3]`` in the unit sphere."""
    return normalize_points(read_points(source, name=name, max_bytes=max_bytes, seed=seed),
                            n_points=n_points, seed=seed)


# ----------------------------------------------------------------------------------------------------
# images


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if arr.ndim != 2 or arr.size == 0:
            raise InputError("garbage", f"image mode {mode} has unexpected data")
        arr = np.where(np.isfinite(arr), arr, 0.0)
        lo, hi = float(arr.min()), float(arr.max())
        if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535 and hi > 255):
            arr = arr / 257.0
        elif mode == "I" and lo >= 0 and hi <= 255:
            pass
        elif mode == "F" and lo >= 0 and hi <= 1:
            arr = arr * 255.0
        elif hi > lo:
            arr = (arr - lo) / (hi - lo) * 255.0
        else:
            arr = np.full_like(arr, min(max(lo, 0.0), 255.0))
        gray = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
        return gray.convert("RGB")
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return im
    return im.convert("RGB")


def read_image(source: str | os.PathLike | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A fully decoded RGB :class:`PIL.Image.Image` from a path or bytes (PNG/JPEG/WebP/BMP/GIF/TIFF).

    The pixel count is checked against ``max_pixels`` from the header before decoding
    (``image_bomb``). Also raises ``empty``, ``too_large``, ``not_an_image``, ``truncated``,
    ``garbage`` (corrupt data). No other exception escapes for any input bytes.
    """
    data, _ = _read_source(source, max_bytes, None)
    if not data:
        raise InputError("empty", "image is empty")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        logger.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set; resetting it so truncation is detected")
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    Image.init()  # register all plugins so that ``formats`` below can name them
    formats = [f for f in _IMAGE_FORMATS if f in Image.OPEN]
    try:
        im = Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(data, exc, max_pixels) from None
    except UnidentifiedImageError:
        kind = _image_kind(data)
        if kind is not None:
            raise InputError("garbage", f"{kind} data is corrupt or truncated and cannot be opened") from None
        try:
            fmt3d = _sniff(data, None)
        except InputError:
            fmt3d = None
        if fmt3d is not None:
            raise InputError("not_an_image", f"got a {fmt3d.upper()} 3D file, expected an image "
                                             "(PNG, JPEG, WebP, BMP, GIF or TIFF)") from None
        raise InputError("not_an_image", "data is not a PNG, JPEG, WebP, BMP, GIF or TIFF image") from None
    except Exception as exc:
        msg = f"{type(exc).__name__}: {str(exc)[:200]}"
        if isinstance(exc, EOFError) or "truncat" in str(exc).lower():
            raise InputError("truncated", f"image header is truncated: {msg}") from None
        raise InputError("garbage", f"cannot open image (corrupt or unsupported data): {msg}") from None
    try:
        w, h = im.size
        if w <= 0 or h <= 0:
            raise InputError("garbage", f"image has an invalid size {w}x{h}")
        if w * h > max_pixels:
            raise InputError("image_bomb", f"image is {w}x{h} = {w * h} pixels, above the limit of "
                                           f"{max_pixels}")
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(data, exc, max_pixels) from None
        except (OSError, EOFError, SyntaxError, ValueError, struct.error, IndexError, TypeError,
                ZeroDivisionError, KeyError, OverflowError) as exc:
            msg = str(exc)
            if isinstance(exc, EOFError) or "truncated" in msg.lower() or "end of file" in msg.lower():
                raise InputError("truncated", f"{im.format} image is truncated: {msg[:200]}") from None
            raise InputError("garbage", f"{im.format} image data is corrupt: {msg[:200]}") from None
        try:
            transposed = ImageOps.exif_transpose(im)
            if transposed is not None:
                im = transposed
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise
        except Exception:  # a malformed EXIF block: keep the stored orientation
            logger.debug("ignoring unreadable EXIF orientation", exc_info=True)
        w, h = im.size
        if w * h > max_pixels:
            raise InputError("image_bomb", f"image is {w}x{h} = {w * h} pixels, above the limit of "
                                           f"{max_pixels}")
        out = _to_rgb(im)
        out.load()
        if out.mode != "RGB":
            out = out.convert("RGB")
        return out
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(data, exc, max_pixels) from None
    except MemoryError:
        raise InputError("image_bomb", "not enough memory to decode this image") from None
    except Exception as exc:
        logger.debug("unexpected error decoding an image", exc_info=True)
        raise InputError("garbage", f"cannot decode image: {type(exc).__name__}: {str(exc)[:200]}") from None


# ----------------------------------------------------------------------------------------------------
# writing


def write_ply(path_or_file: str | os.PathLike | BinaryIO, points: np.ndarray, binary: bool = True) -> None:
    """Write ``points`` ``[M, 3]`` as a PLY point cloud (float32 x, y, z; binary little-endian or ascii)
    to a path or a binary file object."""
    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be an [M, 3] array, got shape {tuple(pts.shape)}")
    header = ("ply\n"
              f"format {'binary_little_endian' if binary else 'ascii'} 1.0\n"
              f"element vertex {len(pts)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "end_header\n").encode("ascii")
    if binary:
        body = pts.astype("<f4").tobytes()
    else:
        buf = io.StringIO()
        np.savetxt(buf, pts, fmt="%.9g")
        body = buf.getvalue().encode("ascii")
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "wb") as f:
            f.write(header + body)
    else:
        path_or_file.write(header + body)
