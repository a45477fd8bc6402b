"""Point clouds without faces: PCD, XYZ/TXT/CSV/PTS and NPY.

* **PCD** -- ``DATA ascii`` and ``DATA binary`` (``binary_compressed`` is refused). Rows whose x, y or
  z is NaN are *dropped* (PCL's documented marker of an invalid point in organised clouds); Inf, or
  a cloud that is NaN everywhere, is still an error.
* **XYZ/TXT/CSV/PTS** -- one point per line, >= 3 numeric columns separated by whitespace, ``,`` or
  ``;`` (the first three are used); ``#`` comment lines, one non-numeric header line and a leading
  single-integer count line (``.pts``) are skipped.
* **NPY** -- a numeric ``[M, >=3]`` array (first three columns; leading singleton axes are squeezed)
  or a structured array with ``x``/``y``/``z`` fields. Never unpickled.
"""

from __future__ import annotations

import io
import logging
import math

import numpy as np

from model.io.contract import MAX_HEADER_BYTES, MAX_POINTS, MIN_POINTS, InputError, plural, quote
from model.io.parsing import (
    Accum,
    Geometry,
    check_vertex_count,
    content_lines,
    is_float,
    parse_floats,
    take_rows,
    text_lines,
)
from model.io.sniff import SEP_TABLE

logger = logging.getLogger(__name__)

_PCD_KEYS = ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS")
_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
              ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}


def parse_pcd(data: bytes, max_bytes: int) -> Geometry:
    header: dict[str, list[bytes]] = {}
    pos = 0
    data_mode: bytes | None = None
    while pos < len(data) and pos < MAX_HEADER_BYTES:
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
            raise InputError("garbage", f"unexpected PCD header line {quote(line)}")
    if data_mode is None:
        raise InputError("truncated", "PCD header has no DATA line")
    if data_mode == b"binary_compressed":
        raise InputError("unsupported_format",
                         "PCD 'binary_compressed' data is not supported; save as ascii or binary")
    if data_mode not in (b"ascii", b"binary"):
        raise InputError("garbage", f"unknown PCD DATA type {quote(data_mode)}")
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
        check_vertex_count(n, "PCD file")
        starts = np.cumsum([0] + counts)
        need = int(starts[-1])
        xyz_cols = [int(starts[i]) for i in xyz]
        vals = Accum(lambda t: parse_floats(t, "PCD points"), np.float64)
        r = 0
        for chunk in take_rows(content_lines(data, pos), n):
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
        check_vertex_count(n, "PCD file")
        dt = np.dtype({"names": ["x", "y", "z"], "formats": [formats[i] for i in xyz],
                       "offsets": [offsets[i] for i in xyz], "itemsize": row})
        arr = np.frombuffer(data, dtype=dt, count=n, offset=pos) if n else np.zeros(0, dt)
        cols = [arr[k].astype(np.float64) for k in ("x", "y", "z")]
    verts = np.stack(cols, axis=1)
    nan_rows = np.isnan(verts).any(axis=1)
    if nan_rows.any() and not nan_rows.all():
        logger.debug("PCD: dropping %d NaN (invalid) points of %d", int(nan_rows.sum()), n)
        verts = verts[~nan_rows]
    return Geometry(verts, None, "PCD file")


def parse_xyz(data: bytes, max_bytes: int) -> Geometry:
    vals = Accum(lambda t: parse_floats(t, "XYZ points"), np.float64)
    n = 0
    skipped_header = False
    for lineno, s in enumerate(text_lines(data), 1):
        if not s or s[:1] == b"#" or s[:2] == b"//":
            continue
        t = s.translate(SEP_TABLE).split()
        if not t:
            continue  # a line of separators only
        if n == 0 and not skipped_header and ((len(t) == 1 and t[0].isdigit()) or not is_float(t[0])):
            skipped_header = True  # a header line ("x y z ...") or a .pts count line
            continue
        if len(t) < 3:
            raise InputError("garbage" if len(t) != 2 else "missing_xyz",
                             f"XYZ line {lineno} has {plural(len(t), 'value')}, need at least 3")
        vals.extend(t[:3])
        n += 1
        if n > MAX_POINTS:
            raise InputError("too_many_points", f"XYZ file has more than {MAX_POINTS} points")
    if n == 0:
        raise InputError("too_few_points", "XYZ file contains no points")
    return Geometry(vals.array().reshape(-1, 3), None, "XYZ file")


def parse_npy(data: bytes, max_bytes: int) -> Geometry:
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
        return Geometry(verts, None, "NPY file")
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
    return Geometry(arr[:, :3].astype(np.float64), None, "NPY file")
