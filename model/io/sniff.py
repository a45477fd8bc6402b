"""What a file is, from its content: one of the six 3D formats, an image, or neither.

The format is sniffed from the content; the file name (extension) is only a tie-break hint used when
the content matches no format (so a mislabelled file is still read correctly).
"""

from __future__ import annotations

import re
import struct

from model.io.contract import SUPPORTED_3D, InputError, article, file_ext
from model.io.parsing import is_float

_TEXT_SNIFF_BYTES = 1 << 16

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
OFF_RE = re.compile(rb"^(?:ST)?C?N?(4?n?)OFF(?=$|[\s\d+\-.])")
SEP_TABLE = bytes.maketrans(b",;", b"  ")


def image_kind(data: bytes) -> str | None:
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


def sniff_3d_format(data: bytes, name: str | None = None) -> str:
    """The 3D format of ``data``: ``"ply" | "off" | "obj" | "pcd" | "xyz" | "npy"``.

    The content decides; ``name`` (its extension) only breaks ties when the content matches nothing.
    Raises :class:`InputError` (``empty``, ``not_a_3d_file`` for images, ``unsupported_format``).
    """
    data = bytes(data)
    if not data or data.isspace():
        raise InputError("empty", "input is empty" if not data else "input contains only whitespace")
    kind = image_kind(data)
    if kind is not None:
        raise InputError("not_a_3d_file", f"got {article(kind)} {kind} image, expected a 3D file ({SUPPORTED_3D})")
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    if re.match(rb"ply[ \t]*(?:\r\n|\n|\r)", data):
        return "ply"
    if data.startswith(b"PK\x03\x04"):
        what = "NPZ archives" if file_ext(name) == "npz" else "ZIP archives"
        raise InputError("unsupported_format",
                         f"{what} are not supported; send a single {SUPPORTED_3D} file")
    if data.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"(\xb5/\xfd")):
        raise InputError("unsupported_format",
                         f"compressed files are not supported; send an uncompressed {SUPPORTED_3D} file")
    if data.startswith(b"glTF"):
        raise InputError("unsupported_format", f"glTF files are not supported (expected {SUPPORTED_3D})")
    if data.startswith(b"\x89HDF"):
        raise InputError("unsupported_format", f"HDF5 files are not supported (expected {SUPPORTED_3D})")

    lines = _meaningful_lines(data)
    content = [ln for ln in lines if not ln.startswith(b"#")]
    if any(ln.startswith(b"#") and b".PCD" in ln.upper() for ln in lines[:4]):
        return "pcd"
    if content:
        first = content[0]
        m = OFF_RE.match(first)
        if m:
            if m.group(1):
                raise InputError("unsupported_format", "only 3D OFF files are supported (got 4OFF/nOFF)")
            return "off"
        head = first.split(None, 1)[0]
        if head in (b"VERSION", b"FIELDS"):
            return "pcd"
        if head in _OBJ_KEYWORDS and not is_float(head):
            return "obj"
        if head == b"solid" and file_ext(name) in ("", "stl"):
            raise InputError("unsupported_format", f"STL files are not supported (expected {SUPPORTED_3D})")
        rows = [t for t in (ln.translate(SEP_TABLE).split() for ln in content[:8]) if t]
        for i, toks in enumerate(rows[:2]):
            if len(toks) >= 3 and all(is_float(t) for t in toks[:3]):
                return "xyz"
            is_count = len(toks) == 1 and toks[0].isdigit()
            is_header = bool(toks) and not is_float(toks[0])
            if i > 0 or not (is_count or is_header):
                break  # only one count line (.pts) or header line may precede the data
    ext = file_ext(name)
    if ext in _EXT_FORMATS:
        return _EXT_FORMATS[ext]  # the parser produces the specific error
    if ext in _UNSUPPORTED_EXT:
        raise InputError("unsupported_format",
                         f"{_UNSUPPORTED_EXT[ext]} files are not supported (expected {SUPPORTED_3D})")
    raise InputError("unsupported_format", f"unrecognised file content (expected {SUPPORTED_3D})")


def sniff_kind(data: bytes) -> tuple[str, str] | None:
    """What the content of ``data`` is, from its magic bytes (images) or its head (3D files), without
    parsing it: ``("image", "PNG")``, ``("points", "ply")``, or ``None`` when it is neither recognisably.

    Lets a caller refuse an image sent where a 3D file is expected (and the reverse) before any reader
    runs on it. Never raises.
    """
    data = bytes(data[:_TEXT_SNIFF_BYTES])
    kind = image_kind(data)
    if kind is not None:
        return "image", kind
    try:
        return "points", sniff_3d_format(data, None)
    except InputError:
        return None
