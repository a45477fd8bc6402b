"""Validated 3D / image input: round trips through independent writers, a malformed corpus with the
expected error codes, image conversions, normalisation, and fuzzing (nothing but InputError escapes)."""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from plyfile import PlyData, PlyElement

from model.io import (
    MAX_POINTS,
    MIN_POINTS,
    POINTS_PER_CLOUD,
    InputError,
    load_points,
    normalize_points,
    read_image,
    read_points,
    sniff_3d_format,
    write_ply,
)

RNG = np.random.default_rng(1234)
PTS = RNG.normal(size=(200, 3)).astype(np.float32)

# unit cube centred at the origin: 8 vertices, 6 quads (fan-triangulated by the readers)
CUBE_V = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], float)
CUBE_QUADS = np.array([[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]])
CUBE_TRIS = np.concatenate([CUBE_QUADS[:, [0, 1, 2]], CUBE_QUADS[:, [0, 2, 3]]])


# ----------------------------------------------------------------------------------------------------
# independent writers


def ply_bytes(points=PTS, *, text=False, byte_order="<", extra=False, faces=None) -> bytes:
    dt = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if extra:
        dt += [("nx", "f4"), ("ny", "f4"), ("nz", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
               ("intensity", "f8")]
    v = np.zeros(len(points), dtype=dt)
    v["x"], v["y"], v["z"] = np.asarray(points, dtype=np.float32).T
    if extra:
        v["nx"] = 1.0
        v["red"] = 200
        v["intensity"] = np.arange(len(points))
    els = [PlyElement.describe(v, "vertex")]
    if faces is not None:
        f = np.empty(len(faces), dtype=[("vertex_indices", object)])
        f["vertex_indices"] = [np.asarray(x, dtype=np.int32) for x in faces]
        els.append(PlyElement.describe(f, "face"))
    buf = io.BytesIO()
    PlyData(els, text=text, byte_order=byte_order).write(buf)
    return buf.getvalue()


def off_bytes(v, faces=(), glued=False) -> bytes:
    lines = ["# a comment", f"OFF{len(v)} {len(faces)} 0" if glued else "OFF"]
    if not glued:
        lines.append(f"{len(v)} {len(faces)} 0")
    lines += [" ".join(repr(float(c)) for c in p) for p in v]
    lines += [" ".join(str(i) for i in [len(f), *f]) for f in faces]
    return ("\n".join(lines) + "\n").encode()


def obj_bytes(v, faces=(), style="plain") -> bytes:
    lines = ["# exported", "mtllib cube.mtl", "o Cube"]
    lines += ["v " + " ".join(repr(float(c)) for c in p) for p in v]
    lines += ["vt 0 0", "vn 0 0 1", "s off"]
    n = len(v)
    for f in faces:
        if style == "plain":
            refs = [str(i + 1) for i in f]
        elif style == "slashes":
            refs = [f"{i + 1}/1/1" if k % 2 else f"{i + 1}//1" for k, i in enumerate(f)]
        else:  # negative (relative) indices
            refs = [f"{i - n}/1" for i in f]
        lines.append("f " + " ".join(refs))
    return ("\n".join(lines) + "\n").encode()


def pcd_bytes(points, binary=False, nan_rows=0) -> bytes:
    n = len(points)
    pts = np.asarray(points, dtype=np.float32).copy()
    if nan_rows:
        pts[:nan_rows] = np.nan
    head = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z rgb _\n"
            "SIZE 4 4 4 4 1\nTYPE F F F U U\nCOUNT 1 1 1 1 4\n"
            f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\n")
    if binary:
        rec = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4"), ("_", "u1", (4,))])
        rec["x"], rec["y"], rec["z"] = pts.T
        rec["rgb"] = 0xFF0000
        return (head + "DATA binary\n").encode() + rec.tobytes()
    rows = "".join(f"{p[0]!r} {p[1]!r} {p[2]!r} 4278190080 0 0 0 0\n" for p in pts.tolist())
    return (head + "DATA ascii\n" + rows).encode()


def xyz_bytes(points, sep=" ", header=None, extra_cols=0) -> bytes:
    lines = ["# scanner output"] + ([header] if header else [])
    for p in np.asarray(points, dtype=np.float64):
        lines.append(sep.join(repr(float(c)) for c in list(p) + [0.5] * extra_cols))
    return ("\n".join(lines) + "\n").encode()


def npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def image_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_with_size(w: int, h: int) -> bytes:
    """A PNG whose IHDR (with a valid CRC) claims ``w x h`` pixels but holds almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


RGB_ARR = np.random.default_rng(5).integers(0, 256, (24, 32, 3), dtype=np.uint8)
PNG = image_bytes(Image.fromarray(RGB_ARR), "PNG")
JPEG = image_bytes(Image.fromarray(RGB_ARR), "JPEG", quality=90)


def code_of(fn, *args, **kw) -> str:
    with pytest.raises(InputError) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    assert msg and "\n" not in msg, msg
    return ei.value.code


# ----------------------------------------------------------------------------------------------------
# round trips: point clouds


@pytest.mark.parametrize(("text", "byte_order"), [(True, "="), (False, "<"), (False, ">")],
                         ids=["ascii", "binary_le", "binary_be"])
@pytest.mark.parametrize("extra", [False, True], ids=["xyz", "extra_props"])
def test_ply_point_cloud_round_trip(text, byte_order, extra):
    data = ply_bytes(text=text, byte_order=byte_order, extra=extra)
    assert sniff_3d_format(data) == "ply"
    got = read_points(data)
    assert got.shape == PTS.shape
    np.testing.assert_array_equal(got.astype(np.float32), PTS)


def test_ply_property_order_and_int_coordinates():
    v = np.zeros(20, dtype=[("red", "u1"), ("z", "i4"), ("y", "i2"), ("x", "f8")])
    v["x"], v["y"], v["z"] = np.arange(20), np.arange(20) * 2, -np.arange(20)
    buf = io.BytesIO()
    PlyData([PlyElement.describe(v, "vertex")], byte_order=">").write(buf)
    np.testing.assert_array_equal(read_points(buf.getvalue()),
                                  np.stack([np.arange(20), np.arange(20) * 2, -np.arange(20)], 1))


@pytest.mark.parametrize("text", [True, False], ids=["ascii", "binary"])
def test_ply_unusual_layouts(text):
    """Lists on the vertex element, an extra element before the faces, face colours after the list,
    mixed polygon sizes (the row-walking paths)."""
    n = 20
    v = np.empty(n, dtype=[("x", "f8"), ("tags", object), ("y", "f8"), ("z", "f8")])
    v["x"], v["y"], v["z"] = PTS[:n].T
    v["tags"] = [np.arange(i % 4, dtype=np.int16) for i in range(n)]
    e = np.zeros(3, dtype=[("vertex1", "i4"), ("vertex2", "i4")])
    f = np.empty(2, dtype=[("vertex_indices", object), ("red", "u1")])
    f["vertex_indices"] = [np.array([0, 1, 2], np.uint32), np.array([3, 4, 5, 6], np.uint32)]
    f["red"] = 7
    buf = io.BytesIO()
    PlyData([PlyElement.describe(v, "vertex", len_types={"tags": "u1"}), PlyElement.describe(e, "edge"),
             PlyElement.describe(f, "face", len_types={"vertex_indices": "u1"})],
            text=text, byte_order=">").write(buf)
    pts = read_points(buf.getvalue())
    tri_pts = PTS[:7].astype(np.float64)
    lo, hi = tri_pts.min(0), tri_pts.max(0)
    assert pts.shape[0] >= 8 * POINTS_PER_CLOUD
    assert (pts >= lo - 1e-9).all() and (pts <= hi + 1e-9).all()
    # without faces the vertex rows (with their lists) are read exactly
    buf = io.BytesIO()
    PlyData([PlyElement.describe(v, "vertex", len_types={"tags": "u1"})], text=text).write(buf)
    np.testing.assert_array_equal(read_points(buf.getvalue()), PTS[:n].astype(np.float64))


def test_old_mac_line_endings():
    data = xyz_bytes(PTS).replace(b"\n", b"\r")
    np.testing.assert_array_equal(read_points(data), PTS.astype(np.float64))
    np.testing.assert_array_equal(read_points(off_bytes(PTS).replace(b"\n", b"\r")), PTS.astype(np.float64))


@pytest.mark.parametrize("sep", [" ", ",", "\t", ", "])
def test_xyz_round_trip(sep):
    got = read_points(xyz_bytes(PTS, sep=sep, extra_cols=3))
    np.testing.assert_array_equal(got, PTS.astype(np.float64))


def test_xyz_header_and_pts_count_line():
    data = xyz_bytes(PTS, sep=",", header="X,Y,Z,R,G,B", extra_cols=3)
    np.testing.assert_array_equal(read_points(data, name="cloud.csv"), PTS.astype(np.float64))
    pts_file = f"{len(PTS)}\n".encode() + xyz_bytes(PTS)
    np.testing.assert_array_equal(read_points(pts_file, name="scan.pts"), PTS.astype(np.float64))


def test_off_obj_points_only():
    np.testing.assert_array_equal(read_points(off_bytes(PTS)), PTS.astype(np.float64))
    np.testing.assert_array_equal(read_points(obj_bytes(PTS)), PTS.astype(np.float64))


@pytest.mark.parametrize("binary", [False, True], ids=["ascii", "binary"])
def test_pcd_round_trip(binary):
    data = pcd_bytes(PTS, binary=binary)
    assert sniff_3d_format(data) == "pcd"
    np.testing.assert_array_equal(read_points(data), PTS.astype(np.float64))


def test_pcd_nan_rows_are_dropped():
    got = read_points(pcd_bytes(PTS, binary=True, nan_rows=5))
    np.testing.assert_array_equal(got, PTS[5:].astype(np.float64))


@pytest.mark.parametrize("arr", [
    PTS, PTS.astype(np.float64), np.concatenate([PTS, PTS], axis=1), np.asfortranarray(PTS),
    PTS[None], (PTS * 100).astype(np.int32)], ids=["f32", "f64", "6cols", "fortran", "batch1", "int"])
def test_npy_round_trip(arr):
    want = np.asarray(arr).reshape(-1, np.asarray(arr).shape[-1])[:, :3].astype(np.float64)
    np.testing.assert_array_equal(read_points(npy_bytes(arr)), want)


def test_npy_structured_xyz():
    rec = np.zeros(len(PTS), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("i", "<u2")])
    rec["x"], rec["y"], rec["z"] = PTS.T
    np.testing.assert_array_equal(read_points(npy_bytes(rec)), PTS.astype(np.float64))


def test_path_source_and_write_ply(tmp_path):
    p = tmp_path / "cloud.ply"
    write_ply(p, PTS)
    np.testing.assert_array_equal(read_points(p), PTS.astype(np.float64))
    np.testing.assert_array_equal(read_points(str(p)), PTS.astype(np.float64))
    ply = PlyData.read(str(p))  # the independent reader agrees
    np.testing.assert_array_equal(np.stack([ply["vertex"][k] for k in "xyz"], 1), PTS)
    buf = io.BytesIO()
    write_ply(buf, PTS, binary=False)
    np.testing.assert_allclose(read_points(buf.getvalue()), PTS, rtol=1e-7)
    assert code_of(read_points, p, max_bytes=100) == "too_large"
    assert code_of(read_points, tmp_path / "missing.ply") == "unreadable"
    assert code_of(read_points, tmp_path) == "unreadable"


def test_content_wins_over_extension():
    assert sniff_3d_format(off_bytes(PTS), name="mislabelled.ply") == "off"
    assert sniff_3d_format(xyz_bytes(PTS), name="points.obj") == "xyz"
    assert sniff_3d_format(npy_bytes(PTS), name="x.txt") == "npy"
    assert sniff_3d_format(obj_bytes(PTS)) == "obj"


# ----------------------------------------------------------------------------------------------------
# meshes: surface sampling


def _on_cube(pts: np.ndarray) -> None:
    assert np.isfinite(pts).all()
    np.testing.assert_allclose(np.abs(pts).max(axis=1), 0.5, atol=1e-9)


@pytest.mark.parametrize("make", [
    lambda: ply_bytes(CUBE_V, faces=CUBE_QUADS),
    lambda: ply_bytes(CUBE_V, text=True, faces=CUBE_TRIS),
    lambda: ply_bytes(CUBE_V, byte_order=">", faces=list(CUBE_TRIS[:6]) + list(CUBE_QUADS[3:])),  # mixed
    lambda: off_bytes(CUBE_V, CUBE_QUADS, glued=True),
    lambda: off_bytes(CUBE_V, CUBE_TRIS),
    lambda: obj_bytes(CUBE_V, CUBE_QUADS, style="slashes"),
    lambda: obj_bytes(CUBE_V, CUBE_TRIS, style="negative"),
], ids=["ply_quads", "ply_ascii_tris", "ply_be_mixed", "off_glued", "off_tris", "obj_slashes",
        "obj_negative"])
def test_cube_mesh_samples_lie_on_the_surface(make):
    pts = read_points(make(), seed=3)
    assert pts.shape[0] >= 8 * POINTS_PER_CLOUD
    _on_cube(pts)
    # every face gets samples (area weighting over six equal faces)
    faces_hit = {(axis, sign) for p in pts[:2000] for axis in range(3) for sign in (-1, 1)
                 if abs(p[axis] - 0.5 * sign) < 1e-9}
    assert len(faces_hit) == 6
    np.testing.assert_array_equal(pts, read_points(make(), seed=3))  # seeded


def test_single_triangle_samples_inside():
    tri = np.array([[0.0, 0.0, 1.0], [2.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    pts = read_points(off_bytes(tri, [[0, 1, 2]]))
    assert np.allclose(pts[:, 2], 1.0)
    x, y = pts[:, 0], pts[:, 1]
    assert (x >= -1e-12).all() and (y >= -1e-12).all() and (x / 2 + y <= 1 + 1e-12).all()


def test_area_weighting():
    v = np.array([[0, 0, 0], [2, 0, 0], [0, 1, 0],            # area 1
                  [0, 0, 5], [0.5, 0, 5], [0, 0.5, 5]], float)  # area 0.125
    pts = read_points(ply_bytes(v, faces=[[0, 1, 2], [3, 4, 5]]))
    frac_big = float((pts[:, 2] < 2.5).mean())
    assert abs(frac_big - 1 / 1.125) < 0.02


def test_degenerate_mesh_falls_back_to_vertices():
    line = np.stack([np.linspace(0, 1, 20), np.zeros(20), np.zeros(20)], 1)
    faces = [[i, i + 1, i + 2] for i in range(18)]  # collinear: zero area
    np.testing.assert_array_equal(read_points(off_bytes(line, faces)), line)
    assert code_of(read_points, off_bytes(line[:3], [[0, 1, 2]])) == "too_few_points"


# ----------------------------------------------------------------------------------------------------
# the malformed corpus


def _ascii_ply_header(n: int, props="xyz") -> bytes:
    return ("ply\nformat ascii 1.0\n" + f"element vertex {n}\n" +
            "".join(f"property float {p}\n" for p in props) + "end_header\n").encode()


def _random_bytes(n: int, seed: int = 7) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _pts_with(value, n=40):
    p = np.asarray(PTS[:n], dtype=np.float64).copy()
    p[n // 2, 1] = value
    return p


BINARY_PLY = ply_bytes(PTS)
CORPUS_3D = [
    ("empty", b"", {}, "empty"),
    ("whitespace", b" \n\t\n", {}, "empty"),
    ("truncated_binary_ply", BINARY_PLY[: len(BINARY_PLY) - 100], {}, "truncated"),
    ("truncated_binary_ply_faces", ply_bytes(CUBE_V, faces=CUBE_TRIS)[:-7], {}, "truncated"),
    ("truncated_ply_header", BINARY_PLY[:40], {}, "truncated"),
    ("ascii_ply_few_rows", _ascii_ply_header(5000) + b"0 0 0\n" * 12, {}, "count_mismatch"),
    ("absurd_ply_count", _ascii_ply_header(10**12) + b"1 2 3\n" * 40, {}, "absurd_count"),
    ("absurd_binary_ply_count", BINARY_PLY.replace(b"vertex 200", b"vertex 99999999999999"), {},
     "absurd_count"),
    ("absurd_off_count", b"OFF\n1000000000000 0 0\n0 0 0\n", {}, "absurd_count"),
    ("absurd_pcd_count", pcd_bytes(PTS, binary=True).replace(b"POINTS 200", b"POINTS 10000000000000")
     .replace(b"WIDTH 200", b"WIDTH 10000000000000"), {}, "absurd_count"),
    ("absurd_npy_shape", npy_bytes(PTS).replace(b"(200, 3)", b"(9999999999, 3)"), {}, "absurd_count"),
    ("negative_count", _ascii_ply_header(-5), {}, "garbage"),
    ("ply_without_xyz", _ascii_ply_header(20, props="abc") + b"1 2 3\n" * 20, {}, "missing_xyz"),
    ("pcd_without_z", pcd_bytes(PTS).replace(b"FIELDS x y z", b"FIELDS x y w"), {}, "missing_xyz"),
    ("npy_two_columns", npy_bytes(PTS[:, :2]), {}, "missing_xyz"),
    ("nan_xyz", xyz_bytes(_pts_with(np.nan)), {}, "non_finite"),
    ("inf_ply", ply_bytes(_pts_with(np.inf)), {}, "non_finite"),
    ("nan_npy", npy_bytes(_pts_with(np.nan)), {}, "non_finite"),
    ("overflow_text", xyz_bytes(PTS[:20]).replace(b"\n", b" 1e999\n").replace(
        xyz_bytes(PTS[:20]).splitlines()[3].split()[0], b"1e999", 1), {}, "non_finite"),
    ("three_points", xyz_bytes(PTS[:3]), {}, "too_few_points"),
    ("fifteen_points_ply", ply_bytes(PTS[:MIN_POINTS - 1]), {}, "too_few_points"),
    ("all_equal", xyz_bytes(np.ones((50, 3))), {}, "zero_extent"),
    ("too_many_points", _ascii_ply_header(MAX_POINTS + 1) + b"0 0 0\n" * 8, {"max_bytes": 10**9},
     "too_many_points"),
    ("too_large", BINARY_PLY, {"max_bytes": 1000}, "too_large"),
    ("random_garbage", _random_bytes(4096), {}, "unsupported_format"),
    ("random_garbage_named_ply", _random_bytes(4096), {"name": "scan.ply"}, "garbage"),
    ("random_text", b"hello world, this is not a point cloud\nat all\n", {}, "unsupported_format"),
    ("png_to_points", PNG, {}, "not_a_3d_file"),
    ("jpeg_to_points", JPEG, {"name": "x.ply"}, "not_a_3d_file"),
    ("face_index_out_of_range", off_bytes(CUBE_V, [[0, 1, 2], [0, 1, 99]]), {}, "garbage"),
    ("ply_face_index_out_of_range", ply_bytes(CUBE_V, faces=[[0, 1, 2], [5, 6, 8]]), {}, "garbage"),
    ("obj_face_index_zero", obj_bytes(CUBE_V, [[-1, 0, 1]]), {}, "garbage"),
    ("obj_face_index_too_big", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n", {}, "garbage"),
    ("ply_bad_type", _ascii_ply_header(20).replace(b"float x", b"quad x"), {}, "garbage"),
    ("ply_non_numeric", _ascii_ply_header(20) + b"1 2 three\n" * 20, {}, "garbage"),
    ("pcd_compressed", pcd_bytes(PTS).replace(b"DATA ascii", b"DATA binary_compressed"), {},
     "unsupported_format"),
    ("pcd_truncated_binary", pcd_bytes(PTS, binary=True)[:-10], {}, "truncated"),
    ("pcd_points_mismatch", pcd_bytes(PTS).replace(b"POINTS 200", b"POINTS 201"), {}, "count_mismatch"),
    ("npy_pickle", npy_bytes(np.array([{"a": 1}], dtype=object)), {}, "unsupported_format"),
    ("npy_truncated", npy_bytes(PTS)[:-8], {}, "truncated"),
    ("npz", b"PK\x03\x04" + b"\0" * 100, {"name": "a.npz"}, "unsupported_format"),
    ("stl", b"solid cube\n facet normal 0 0 1\n", {"name": "cube.stl"}, "unsupported_format"),
    ("off_binary", b"OFF BINARY\n" + b"\0" * 40, {}, "unsupported_format"),
    ("xyz_two_columns", b"1 2\n3 4\n", {"name": "a.xyz"}, "missing_xyz"),
    ("obj_without_vertices", b"o empty\nvn 0 0 1\n", {}, "missing_xyz"),
]


@pytest.mark.parametrize(("data", "kw", "code"), [c[1:] for c in CORPUS_3D], ids=[c[0] for c in CORPUS_3D])
def test_malformed_3d_corpus(data, kw, code):
    assert code_of(load_points, data, **kw) == code


def test_too_many_points_binary():
    header = b"ply\nformat binary_little_endian 1.0\nelement vertex 2000001\nproperty uchar x\n" \
             b"property uchar y\nproperty uchar z\nend_header\n"
    data = header + bytes(3 * (MAX_POINTS + 1))
    assert code_of(read_points, data) == "too_many_points"


def test_messages_name_the_problem():
    with pytest.raises(InputError, match="PLY header declares 5000 vertices but the body holds 12"):
        read_points(_ascii_ply_header(5000) + b"0 0 0\n" * 12)
    with pytest.raises(InputError, match="NaN or Inf"):
        read_points(xyz_bytes(_pts_with(np.nan)))
    with pytest.raises(InputError, match=r"30000x30000 = 900000000 pixels, above the limit of 40000000"):
        read_image(png_with_size(30000, 30000))


def test_input_error_is_a_value_error_and_pickles():
    err = InputError("garbage", "bad\nthing")
    assert isinstance(err, ValueError) and str(err) == "bad thing" and err.code == "garbage"
    again = pickle.loads(pickle.dumps(err))
    assert again.code == "garbage" and str(again) == "bad thing"


# ----------------------------------------------------------------------------------------------------
# images


def test_image_formats_read_as_rgb():
    for fmt in ("PNG", "BMP", "WEBP", "TIFF", "GIF"):
        im = read_image(image_bytes(Image.fromarray(RGB_ARR), fmt))
        assert im.mode == "RGB" and im.size == (32, 24)
        if fmt in ("PNG", "BMP", "TIFF"):
            np.testing.assert_array_equal(np.asarray(im), RGB_ARR)
    assert read_image(JPEG).size == (32, 24)


def test_image_from_path(tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(PNG)
    np.testing.assert_array_equal(np.asarray(read_image(p)), RGB_ARR)
    assert code_of(read_image, p, max_bytes=10) == "too_large"


def test_rgba_composited_on_white():
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., :3] = (10, 20, 30)
    arr[0, 0, 3] = 0       # fully transparent
    arr[1:, :, 3] = 255    # opaque
    arr[0, 1:, 3] = 128    # half
    out = np.asarray(read_image(image_bytes(Image.fromarray(arr, "RGBA"), "PNG")))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[2, 2]) == (10, 20, 30)
    assert 120 < out[0, 2, 0] < 140
    la = Image.fromarray(np.stack([np.full((4, 4), 0, np.uint8), np.zeros((4, 4), np.uint8)], -1), "LA")
    assert tuple(np.asarray(read_image(image_bytes(la, "PNG")))[0, 0]) == (255, 255, 255)


def test_palette_with_and_without_transparency():
    p = Image.fromarray(RGB_ARR).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    want = np.asarray(p.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(read_image(image_bytes(p, "PNG"))), want)
    idx = int(np.asarray(p)[0, 0])
    out = np.asarray(read_image(image_bytes(p, "PNG", transparency=idx)))
    assert tuple(out[0, 0]) == (255, 255, 255)
    mask = np.asarray(p) != idx
    np.testing.assert_array_equal(out[mask], want[mask])


def test_exif_orientation_applied():
    im = Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8))  # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = read_image(image_bytes(im, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_sixteen_bit_gray_is_scaled_not_clipped():
    arr = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    out = np.asarray(read_image(image_bytes(Image.fromarray(arr), "PNG")))
    assert out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    assert (out[..., 0] == out[..., 2]).all()


def test_cmyk_and_gray_to_rgb():
    red = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    assert tuple(np.asarray(read_image(image_bytes(red, "TIFF")))[0, 0]) == (255, 0, 0)
    out = np.asarray(read_image(image_bytes(red, "JPEG", quality=95)))
    assert out[0, 0, 0] > 230 and out[0, 0, 1] < 25
    gray = Image.fromarray(np.full((3, 3), 77, np.uint8))
    assert tuple(np.asarray(read_image(image_bytes(gray, "PNG")))[1, 1]) == (77, 77, 77)
    bw = Image.new("1", (3, 3), 1)
    assert tuple(np.asarray(read_image(image_bytes(bw, "PNG")))[1, 1]) == (255, 255, 255)


CORPUS_IMG = [
    ("empty", b"", {}, "empty"),
    ("ply_to_image", BINARY_PLY, {}, "not_an_image"),
    ("xyz_to_image", xyz_bytes(PTS), {}, "not_an_image"),
    ("garbage", _random_bytes(1000), {}, "not_an_image"),
    ("truncated_png", PNG[: len(PNG) // 2], {}, "truncated"),
    ("truncated_jpeg", JPEG[: len(JPEG) // 2], {}, "truncated"),
    ("bomb_header", png_with_size(100_000, 100_000), {}, "image_bomb"),
    ("bomb_small_limit", PNG, {"max_pixels": 100}, "image_bomb"),
    ("bomb_claimed_dims", png_with_size(3000, 3000), {"max_pixels": 1_000_000}, "image_bomb"),
    ("too_large", PNG, {"max_bytes": 100}, "too_large"),
    ("svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", {}, "not_an_image"),
]


@pytest.mark.parametrize(("data", "kw", "code"), [c[1:] for c in CORPUS_IMG], ids=[c[0] for c in CORPUS_IMG])
def test_malformed_image_corpus(data, kw, code):
    assert code_of(read_image, data, **kw) == code


@pytest.mark.parametrize(("reader", "data", "phrase"), [
    (read_image, b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "got an OBJ 3D file"),
    (read_image, b"OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n", "got an OFF 3D file"),
    (read_image, BINARY_PLY, "got a PLY 3D file"),
    (sniff_3d_format, PNG, "got a PNG image"),
    (sniff_3d_format, b"\x00\x00\x01\x00" + bytes(60), "got an ICO image"),
], ids=["obj", "off", "ply", "png", "ico"])
def test_wrong_kind_messages_use_the_right_article(reader, data, phrase):
    with pytest.raises(InputError) as err:
        reader(data)
    assert phrase in str(err.value), err.value


def test_image_claiming_small_dims_but_corrupt():
    assert code_of(read_image, png_with_size(64, 64)) in ("truncated", "garbage")


# ----------------------------------------------------------------------------------------------------
# normalisation


def test_normalize_points_properties():
    out = normalize_points(PTS.astype(np.float64) * 50 + 7)
    assert out.dtype == np.float32 and out.shape == (POINTS_PER_CLOUD, 3)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1).max(), 1.0, atol=1e-5)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_array_equal(out, normalize_points(PTS.astype(np.float64) * 50 + 7))
    assert not np.array_equal(out, normalize_points(PTS * 50 + 7, seed=1))
    # fewer points than requested: every input point is kept
    src = normalize_points(PTS)
    assert src.shape == (POINTS_PER_CLOUD, 3)
    assert len(np.unique(src, axis=0)) == len(PTS)
    # more points: a subset of the input points (up to the similarity transform)
    big = np.random.default_rng(0).normal(size=(5000, 3))
    out = normalize_points(big, n_points=256, seed=4)
    assert out.shape == (256, 3)
    assert len(np.unique(out, axis=0)) == 256


def test_normalize_points_extreme_values():
    unit = PTS.astype(np.float64) / np.abs(PTS).max()
    for scale in (1e-300, 1e300, 1.7e308):
        pts = unit * scale
        out = normalize_points(pts)
        assert np.isfinite(out).all()
        np.testing.assert_allclose(np.linalg.norm(out, axis=1).max(), 1.0, atol=1e-5)
    mostly_dupes = np.zeros((10_000, 3))
    mostly_dupes[123] = (1, 2, 3)
    out = normalize_points(mostly_dupes, n_points=64)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1).max(), 1.0, atol=1e-5)


@pytest.mark.parametrize(("pts", "code"), [
    (np.zeros((0, 3)), "empty"), (np.ones((5, 3)), "zero_extent"), (np.full((5, 3), np.nan), "non_finite"),
    (np.zeros((5, 2)), "garbage"), ([["a", "b", "c"]], "garbage")])
def test_normalize_points_errors(pts, code):
    assert code_of(normalize_points, pts) == code


def test_load_points_end_to_end():
    for data in (ply_bytes(CUBE_V, faces=CUBE_QUADS), pcd_bytes(PTS), npy_bytes(PTS)):
        out = load_points(data, n_points=512, seed=2)
        assert out.dtype == np.float32 and out.shape == (512, 3)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1).max(), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# fuzzing: nothing but InputError escapes, outputs are always well formed

VALID_3D = [
    ply_bytes(PTS[:40]), ply_bytes(PTS[:40], text=True), ply_bytes(PTS[:30], byte_order=">", extra=True),
    ply_bytes(CUBE_V, faces=CUBE_QUADS), ply_bytes(CUBE_V, text=True, faces=CUBE_TRIS),
    off_bytes(CUBE_V, CUBE_QUADS, glued=True), off_bytes(PTS[:30]), obj_bytes(CUBE_V, CUBE_QUADS, "slashes"),
    obj_bytes(PTS[:30]), pcd_bytes(PTS[:30]), pcd_bytes(PTS[:30], binary=True), xyz_bytes(PTS[:30], sep=","),
    npy_bytes(PTS[:30]), npy_bytes(np.asfortranarray(PTS[:30].astype(np.float64))),
]
VALID_IMG = [PNG, JPEG, image_bytes(Image.fromarray(RGB_ARR).convert("P"), "GIF"),
             image_bytes(Image.fromarray(RGB_ARR), "BMP"), image_bytes(Image.fromarray(RGB_ARR), "WEBP")]
NUMERIC_JUNK = [b"-1", b"0", b"99999999999999999999", b"1e999", b"nan", b"\x00", b"\xff\xff\xff\xff",
                b"\n", b" ", b"#", b"/", b"end_header\n", b"-2147483648", b"4294967295", b"3 "]


@st.composite
def mutated(draw, corpus):
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "junk"]))
        pos = draw(st.integers(0, max(0, len(data))))
        if kind == "truncate":
            data = data[:pos]
        elif kind == "flip" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        else:
            data[pos:pos] = draw(st.sampled_from(NUMERIC_JUNK))
    return bytes(data)


def _check_load(data: bytes, name=None) -> None:
    try:
        out = load_points(data, name=name, max_bytes=1 << 20)
    except InputError as e:
        assert isinstance(e.code, str) and e.code and "\n" not in str(e)
        return
    assert out.dtype == np.float32 and out.shape == (POINTS_PER_CLOUD, 3)
    assert np.isfinite(out).all()


FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.one_of(st.binary(max_size=512), mutated(VALID_3D)),
       name=st.sampled_from([None, "a.ply", "a.off", "a.obj", "a.pcd", "a.xyz", "a.npy", "a.stl"]))
def test_fuzz_load_points_only_raises_input_error(data, name):
    _check_load(data, name)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=256), mutated(VALID_IMG)))
def test_fuzz_read_image_only_raises_input_error(data):
    try:
        im = read_image(data, max_pixels=1_000_000)
    except InputError as e:
        assert e.code and "\n" not in str(e)
        return
    assert im.mode == "RGB" and im.size[0] * im.size[1] <= 1_000_000
