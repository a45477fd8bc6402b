"""Byte-level fuzzing of the two upload endpoints: whatever the bytes, file name or content type, the
service answers < 500 with a JSON ``{"error", "detail"}`` body for errors, and keeps working.

Inputs are random bytes and mutated valid files (PNG/JPEG for ``image-to-points``; PLY ascii/binary,
PLY and OFF meshes, OFF and XYZ clouds for ``points-to-images``): bit flips, byte overwrites,
deletions, insertions, duplicated ranges, truncation and, for the text parts (PLY headers, OFF/XYZ
bodies), numeric tokens swapped for hostile values (huge counts, negatives, NaN, Inf, ...).

A 500 surfaces as an exception from the TestClient (it re-raises server errors), so hypothesis
reports the falsifying input together with the server-side traceback.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from svc_helpers import png_bytes

from model.io import write_ply

#: Pillow warns about the corrupt EXIF blocks that random TIFF bytes contain; the reader ignores them.
pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")

IMG = "/api/v1/search/image-to-points"
PTS = "/api/v1/search/points-to-images"
#: Examples per fuzz test (override with CMAH_FUZZ_EXAMPLES for a quick or a long run).
EXAMPLES = int(os.environ.get("CMAH_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------------------------------ seed files
def _cloud(n: int = 96, seed: int = 0) -> np.ndarray:
    """A small anisotropic cloud (a noisy ellipsoid shell)."""
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    return (p * [1.0, 0.6, 0.3] + rng.normal(scale=0.02, size=(n, 3))).astype(np.float32)


def _ply(points: np.ndarray, binary: bool) -> bytes:
    buf = io.BytesIO()
    write_ply(buf, points, binary=binary)
    return buf.getvalue()


def _ply_mesh() -> bytes:
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], float)
    faces = [(0, 1, 2, 3), (4, 5, 6, 7), (0, 1, 5, 4), (2, 3, 7, 6), (1, 2, 6, 5), (0, 3, 7, 4)]
    head = (f"ply\nformat ascii 1.0\ncomment fuzz seed\nelement vertex {len(v)}\nproperty float x\n"
            f"property float y\nproperty float z\nelement face {len(faces)}\n"
            "property list uchar int vertex_indices\nend_header\n")
    body = "".join(f"{a} {b} {c}\n" for a, b, c in v) + "".join(f"{len(f)} {' '.join(map(str, f))}\n" for f in faces)
    return (head + body).encode()


def _off_points(points: np.ndarray) -> bytes:
    return (f"OFF\n{len(points)} 0 0\n" + "".join(f"{x:.5f} {y:.5f} {z:.5f}\n" for x, y, z in points)).encode()


def _off_mesh() -> bytes:
    return b"OFF\n# a tetrahedron\n4 4 6\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n"


def _xyz(points: np.ndarray) -> bytes:
    return ("# x y z\n" + "".join(f"{x:.4f},{y:.4f},{z:.4f}\n" for x, y, z in points)).encode()


def _image(mode: str, fmt: str, size: tuple[int, int] = (24, 16), **save: object) -> bytes:
    rng = np.random.default_rng(len(mode) + size[0])
    rgb = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    img = rgb.convert(mode) if mode in ("L", "RGBA", "P", "CMYK", "LA") else rgb
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (size[1], size[0]), dtype=np.uint16))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


IMAGE_SEEDS: list[bytes] = [
    png_bytes(32),
    _image("RGB", "PNG"),
    _image("RGBA", "PNG"),
    _image("P", "PNG"),
    _image("L", "PNG", (9, 31)),
    _image("I;16", "PNG"),
    _image("RGB", "JPEG", quality=80),
    _image("RGB", "JPEG", (40, 8), progressive=True),
    _image("L", "JPEG"),
    _image("CMYK", "JPEG"),
]
CLOUD = _cloud()
POINT_SEEDS: list[bytes] = [
    _ply(CLOUD, binary=False),
    _ply(CLOUD, binary=True),
    _ply_mesh(),
    _off_points(CLOUD[:40]),
    _off_mesh(),
    _xyz(CLOUD[:48]),
]

# ------------------------------------------------------------------------------------------ strategies
_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")
HOSTILE_NUMBERS = [b"0", b"1", b"2", b"-1", b"-2147483649", b"255", b"256", b"65536", b"4294967295",
                   b"4294967296", b"9223372036854775807", b"99999999999999999999999", b"3000000", b"1e309",
                   b"-1e309", b"nan", b"NaN", b"inf", b"-inf", b"1.5", b"0x10", b"", b"1 2", b"\x00"]


def _fix_png_crcs(data: bytearray) -> None:
    """Recompute the CRC of every complete PNG chunk, so mutated chunks reach the decoder."""
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        end = pos + 8 + length
        if end + 4 > len(data):
            return
        struct.pack_into(">I", data, end, zlib.crc32(bytes(data[pos + 4:end])))
        pos = end + 4


@st.composite
def _mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed file with 1-4 mutations (half of the byte edits land in the first 64 bytes: the headers)."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "duplicate", "truncate", "number"]))
        n = len(data)
        if n == 0:
            data += draw(st.binary(min_size=1, max_size=16))
            continue
        i = draw(st.one_of(st.integers(0, min(n, 64) - 1), st.integers(0, n - 1)))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.one_of(st.sampled_from([0x00, 0x0A, 0x20, 0x2D, 0x30, 0x7F, 0x80, 0xFF]),
                                     st.integers(0, 255)))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif op == "duplicate":
            j = min(n, i + draw(st.integers(1, 256)))
            data[j:j] = data[i:j] * draw(st.integers(1, 4))
        elif op == "truncate":
            del data[i:]
        else:  # swap a numeric token (header counts, coordinates, face indices) for a hostile value
            spans = [m.span() for m in _NUMBER.finditer(bytes(data[:4096]))]
            if spans:
                a, b = draw(st.sampled_from(spans))
                data[a:b] = draw(st.sampled_from(HOSTILE_NUMBERS))
    if data.startswith(b"\x89PNG\r\n\x1a\n") and draw(st.booleans()):
        _fix_png_crcs(data)
    return bytes(data)


EXTENSIONS = ["", ".ply", ".PLY", ".off", ".xyz", ".txt", ".csv", ".pts", ".obj", ".pcd", ".npy", ".stl", ".npz",
              ".glb", ".zip", ".png", ".jpg", ".jpeg", ".webp", ".gif", ".tif", ".bmp", ".exe", ".ply.gz", "."]
CONTENT_TYPES = ["application/octet-stream", "image/png", "image/jpeg", "text/plain", "application/ply",
                 "model/ply", "multipart/form-data", "application/json", "text/plain; charset=utf-16", "x/y"]
filenames = st.builds(lambda stem, ext: stem + ext, st.text(st.characters(exclude_categories=["Cs"]), max_size=24),
                      st.sampled_from(EXTENSIONS))
content_types = st.one_of(st.none(), st.sampled_from(CONTENT_TYPES),
                          st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40))
random_bytes = st.binary(max_size=4096)
#: Random bytes behind a real magic number / header line, so they reach the decoders and parsers.
IMAGE_MAGICS = [b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"\xff\xd8\xff",
                b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBPVP8 "]
POINT_MAGICS = [b"ply\n", b"ply\nformat ascii 1.0\n", b"ply\nformat binary_little_endian 1.0\nelement vertex 20\n",
                b"OFF\n", b"OFF\n20 0 0\n", b"COFF\n", b"v ", b"# .PCD v0.7\nVERSION 0.7\n", b"\x93NUMPY\x01\x00"]
numeric_text = st.text(st.sampled_from("0123456789 .-+eE\n,;#\tnaif"), max_size=2048).map(str.encode)
random_image_bytes = st.one_of(random_bytes, st.builds(bytes.__add__, st.sampled_from(IMAGE_MAGICS), random_bytes))
random_point_bytes = st.one_of(random_bytes, numeric_text,
                               st.builds(bytes.__add__, st.sampled_from(POINT_MAGICS), st.one_of(random_bytes,
                                                                                                 numeric_text)))
query_params = st.one_of(st.just({}), st.fixed_dictionaries({"k": st.sampled_from([1, 5, 1000]),
                                                             "bits": st.sampled_from([16, 32, 64])}))


# ------------------------------------------------------------------------------------------ checks
def _post(client: TestClient, url: str, data: bytes, name: str, ctype: str | None, params: dict) -> None:
    part = (name, data) if ctype is None else (name, data, ctype)
    r = client.post(url, files={"file": part}, params=params)
    assert r.status_code < 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    event(f"{r.status_code} {body.get('error', '')}".strip())  # see pytest --hypothesis-show-statistics
    if r.status_code >= 400:
        assert set(body) == {"error", "detail"}, body
        assert isinstance(body["error"], str) and body["error"]
        assert isinstance(body["detail"], str) and body["detail"] and "Traceback" not in body["detail"]
    else:
        assert r.status_code == 200, r.status_code
        assert isinstance(body["results"], list) and len(body["results"]) <= body["k"]
    assert client.get("/health").status_code == 200


def _still_serving(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    assert client.app.state.cmah.engine.running
    r = client.post(IMG, files={"file": ("q.png", png_bytes(), "image/png")}, params={"k": 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3, r.text
    r = client.post(PTS, files={"file": ("q.ply", POINT_SEEDS[0])}, params={"k": 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3, r.text


def test_valid_seeds_are_accepted(client):
    """The unmutated seed files are good inputs (so the mutations start from files the service reads)."""
    for data in IMAGE_SEEDS:
        r = client.post(IMG, files={"file": ("seed", data)})
        assert r.status_code == 200, r.text
    for i, data in enumerate(POINT_SEEDS):
        r = client.post(PTS, files={"file": (f"seed{i}", data)})
        assert r.status_code == 200, (i, r.text)


CASES: dict[str, tuple[str, st.SearchStrategy[bytes]]] = {
    "image-random-bytes": (IMG, random_image_bytes),
    "image-mutated-png-jpeg": (IMG, _mutated(IMAGE_SEEDS)),
    "points-random-bytes": (PTS, random_point_bytes),
    "points-mutated-ply-off-xyz": (PTS, _mutated(POINT_SEEDS)),
}


@pytest.mark.parametrize("case", list(CASES))
@FUZZ
@given(data=st.data(), name=filenames, ctype=content_types, params=query_params)
def test_fuzz_upload(client, case, data, name, ctype, params):
    url, payloads = CASES[case]
    _post(client, url, data.draw(payloads, label="payload"), name, ctype, params)


@settings(FUZZ, max_examples=max(1, EXAMPLES // 3))
@given(url=st.sampled_from([IMG, PTS]), payload=st.one_of(_mutated(IMAGE_SEEDS), _mutated(POINT_SEEDS)),
       name=filenames)
def test_fuzz_wrong_endpoint(client, url, payload, name):
    """Mutated files of either kind sent to either endpoint (images as 3D files and the reverse)."""
    _post(client, url, payload, name, None, {})


def test_service_still_works_after_fuzzing(client):
    """Runs after the fuzz tests above (same module-scoped app): health, readiness and valid searches."""
    _still_serving(client)
