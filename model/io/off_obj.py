"""OFF and OBJ meshes (text).

* **OFF** -- including ``COFF``/``NOFF``/``CNOFF`` (extra columns ignored) and the ``OFF8 6 0``
  header-glued-to-counts form found in ModelNet files. ``OFF BINARY`` and 4D/nD OFF are refused.
* **OBJ** -- ``v`` lines (first three values) and ``f`` lines (``i``, ``i/t``, ``i//n``, ``i/t/n``,
  negative = relative indices); other statements are ignored.
"""

from __future__ import annotations

import numpy as np

from model.io.contract import MAX_FACES, MAX_POINTS, InputError, plural, quote
from model.io.parsing import (
    Accum,
    Geometry,
    check_faces,
    check_vertex_count,
    content_lines,
    fan_triangulate,
    parse_floats,
    parse_ints,
    strip_comment,
    take_rows,
    text_lines,
)
from model.io.sniff import OFF_RE


def parse_off(data: bytes, max_bytes: int) -> Geometry:
    lines = content_lines(data, comments=True)
    first = next(lines, None)
    if first is None:
        raise InputError("empty", "OFF file has no content")
    m = OFF_RE.match(first)
    if not m:
        raise InputError("garbage", "not an OFF file: the first line is not 'OFF'")
    rest = strip_comment(first[m.end():]).split()
    if rest and rest[0].upper() == b"BINARY":
        raise InputError("unsupported_format", "binary OFF files are not supported")
    if not rest:
        nxt = next(lines, None)
        if nxt is None:
            raise InputError("truncated", "OFF file ends after the 'OFF' line (no vertex/face counts)")
        rest = strip_comment(nxt).split()
    if len(rest) < 2:
        raise InputError("garbage", f"OFF counts line {quote(b' '.join(rest))} needs vertex and face counts")
    try:
        nv, nf = int(rest[0]), int(rest[1])
    except ValueError:
        raise InputError("garbage", f"OFF counts {quote(b' '.join(rest[:3]))} are not integers") from None
    if nv < 0 or nf < 0:
        raise InputError("garbage", f"OFF counts are negative ({nv} vertices, {nf} faces)")
    if nv * 6 + nf * 8 > max_bytes:
        raise InputError("absurd_count", f"OFF header declares {plural(nv, 'vertex')} and "
                                         f"{plural(nf, 'face')}, which cannot fit in the {max_bytes}-byte "
                                         "input limit")
    check_vertex_count(nv, "OFF file")
    check_faces(nf, "OFF file")
    vals = Accum(lambda t: parse_floats(t, "OFF vertices"), np.float64)
    r = 0
    for chunk in take_rows(lines, nv):
        for line in chunk:
            t = strip_comment(line).split()
            if len(t) < 3:
                raise InputError("garbage", f"OFF vertex {r} has {plural(len(t), 'value')}, need at least 3")
            vals.extend(t[:3])
            r += 1
    if r < nv:
        raise InputError("count_mismatch",
                         f"OFF header declares {plural(nv, 'vertex')} but the body holds {r}")
    verts = vals.array().reshape(-1, 3)
    counts = Accum(lambda t: np.asarray(t, dtype=np.int64), np.int64)
    flat = Accum(lambda t: parse_ints(t, "OFF faces"), np.int64)
    r = 0
    for chunk in take_rows(lines, nf):
        for line in chunk:
            t = strip_comment(line).split() or [b"?"]
            try:
                k = int(t[0])
            except ValueError:
                raise InputError("garbage",
                                 f"OFF face {r} has a non-integer vertex count {quote(t[0])}") from None
            if k < 0 or len(t) < 1 + k:
                raise InputError("garbage", f"OFF face {r} declares {k} vertices but lists {len(t) - 1}")
            counts.append(k)
            flat.extend(t[1:1 + k])
            r += 1
    if r < nf:
        raise InputError("count_mismatch",
                         f"OFF header declares {plural(nf, 'face')} but the body holds {r}")
    tris = fan_triangulate(counts.array(), flat.array()) if nf else None
    return Geometry(verts, tris, "OFF file")


def parse_obj(data: bytes, max_bytes: int) -> Geometry:
    vals = Accum(lambda t: parse_floats(t, "OBJ vertices"), np.float64)
    counts = Accum(lambda t: np.asarray(t, dtype=np.int64), np.int64)
    flat = Accum(lambda t: np.asarray(t, dtype=np.int64), np.int64)
    nv = nfaces = 0
    for lineno, s in enumerate(text_lines(data), 1):
        if not s or s[:1] == b"#":
            continue
        parts = strip_comment(s).split()
        if not parts:
            continue
        key = parts[0]
        if key == b"v":
            if len(parts) < 4:
                raise InputError("garbage",
                                 f"OBJ line {lineno}: vertex has {plural(len(parts) - 1, 'value')}, need 3")
            vals.extend(parts[1:4])
            nv += 1
            if nv > MAX_POINTS:
                check_vertex_count(nv, "OBJ file")
        elif key == b"f":
            nfaces += 1
            if nfaces > MAX_FACES:
                check_faces(nfaces, "OBJ file")
            try:
                idx = [int(r.split(b"/", 1)[0]) for r in parts[1:]]
            except ValueError:
                raise InputError("garbage", f"OBJ line {lineno}: malformed face {quote(s)}") from None
            for i in idx:
                if i == 0 or i < -nv or i > MAX_POINTS:
                    raise InputError("garbage", f"OBJ line {lineno}: face index {i} is out of range "
                                                f"({plural(nv, 'vertex')} defined so far)")
            counts.append(len(idx))
            flat.extend(i - 1 if i > 0 else nv + i for i in idx)
    if nv == 0:
        raise InputError("missing_xyz", "OBJ file has no vertex ('v') lines")
    verts = vals.array().reshape(-1, 3)
    tris = fan_triangulate(counts.array(), flat.array()) if nfaces else None
    return Geometry(verts, tris, "OBJ file")
