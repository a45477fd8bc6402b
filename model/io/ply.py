"""PLY: reading (``ascii``, ``binary_little_endian``, ``binary_big_endian``) and writing point clouds.

Any extra vertex properties are allowed; ``face`` elements (``vertex_indices``/``vertex_index`` lists)
are fan-triangulated. The header is parsed and checked here and the body is read with numpy
(vectorised; variable-length face lists are walked row by row), not with ``plyfile``: plyfile
allocates ``np.empty(count)`` from the unchecked header count and reads in-memory binary bodies one
row at a time.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import BinaryIO

import numpy as np

from model.io.contract import MAX_HEADER_BYTES, InputError, plural, quote
from model.io.parsing import (
    Accum,
    Geometry,
    check_faces,
    check_vertex_count,
    content_lines,
    fan_triangulate,
    parse_floats,
    parse_ints,
    take_rows,
)

logger = logging.getLogger(__name__)

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
            return plural(self.count, "vertex")
        return plural(self.count, n if n in ("face", "edge") else f"'{self.name}' element")

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
    limit = min(len(data), MAX_HEADER_BYTES)
    em = end_re.search(data, m.end() - len(nl), limit)
    if em is not None:
        body_off = em.end()
        text = data[m.end():em.start() + len(nl)]
    else:
        head = data[:limit].rstrip(b" \t\r\n")
        if head.endswith(nl + b"end_header") and len(data) <= limit:
            body_off = len(data)  # the header ends at EOF: empty body
            text = head[m.end():len(head) - len(b"end_header")]
        elif len(data) < MAX_HEADER_BYTES:
            raise InputError("truncated", "PLY header is not terminated by an 'end_header' line")
        else:
            raise InputError("garbage", f"PLY header is longer than {MAX_HEADER_BYTES} bytes")
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
                raise InputError("garbage", f"unknown PLY format line {quote(raw)}")
            fmt = toks[1]
        elif kw == "element":
            if len(toks) != 3:
                raise InputError("garbage", f"malformed PLY element line {quote(raw)}")
            try:
                count = int(toks[2])
            except ValueError:
                raise InputError("garbage", f"PLY element count {quote(toks[2])} is not an integer") from None
            if count < 0:
                raise InputError("garbage", f"PLY element {quote(toks[1])} has a negative count {count}")
            elements.append(_PlyElement(toks[1], count))
        elif kw == "property":
            if not elements:
                raise InputError("garbage", "PLY property line before any element line")
            if len(toks) == 5 and toks[1] == "list":
                lt, vt, pname = toks[2], toks[3], toks[4]
                if lt not in _PLY_TYPES or vt not in _PLY_TYPES:
                    raise InputError("garbage", f"unknown PLY property type in {quote(raw)}")
                if _PLY_TYPES[lt][0] == "f":
                    raise InputError("garbage", f"PLY list length type must be an integer in {quote(raw)}")
                elements[-1].props.append(_PlyProp(pname, _PLY_TYPES[vt], _PLY_TYPES[lt]))
            elif len(toks) == 3 and toks[1] != "list":
                if toks[1] not in _PLY_TYPES:
                    raise InputError("garbage", f"unknown PLY property type {quote(toks[1])}")
                elements[-1].props.append(_PlyProp(toks[2], _PLY_TYPES[toks[1]], None))
            else:
                raise InputError("garbage", f"malformed PLY property line {quote(raw)}")
        elif kw == "end_header":
            break
        else:
            raise InputError("garbage", f"unexpected PLY header line {quote(raw)}")
    if fmt is None:
        raise InputError("garbage", "PLY header has no 'format' line")
    for el in elements:
        if el.count and not el.props:
            raise InputError("garbage", f"PLY element {quote(el.name)} has {el.count} rows but no properties")
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
    check_faces(n, f"PLY {el.name} element")
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
        check_faces(el.count, f"PLY {el.name} element")
    list_is_float = list_idx is not None and props[list_idx].dtype[0] == "f"
    scal = {i: Accum(lambda t: parse_floats(t, what), np.float64) for i in scalars}
    counts = Accum(lambda t: np.asarray(t, dtype=np.int64), np.int64)
    flat = Accum(lambda t: parse_floats(t, what) if list_is_float else parse_ints(t, what),
                  np.float64 if list_is_float else np.int64)
    k_all = len(props)
    r = 0
    for chunk in take_rows(lines, el.count):
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
                raise InputError("garbage", f"PLY {el.name} row {r} is malformed: {quote(line)}") from None
            if pos != len(t):
                raise InputError("garbage", f"PLY {el.name} row {r} has {len(t)} values, expected {pos}")
            r += 1
    if r < el.count:
        raise InputError("count_mismatch", f"PLY header declares {el.label()} but the body holds {r}")
    cols = [scal[i].array() for i in scalars]
    lst = (counts.array(), flat.array()) if list_idx is not None else None
    return cols, lst


def parse_ply(data: bytes, max_bytes: int) -> Geometry:
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
    check_vertex_count(vel.count, "PLY file")
    if fi is not None:
        check_faces(elements[fi].count, "PLY file")

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
        lines = content_lines(data, body_off)
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
        tris = fan_triangulate(counts, flat.astype(np.int64))
    return Geometry(verts.reshape(-1, 3), tris, "PLY file")


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
