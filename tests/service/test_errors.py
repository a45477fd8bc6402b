"""Bad uploads: the right status and error code, never a 500, never a stack trace."""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from svc_helpers import admin_headers, ply_bytes, png_bytes

IMG = "/api/v1/search/image-to-points"
PTS = "/api/v1/search/points-to-images"
JOBS = "/api/v1/admin/jobs"


def _truncated_ply(points: np.ndarray) -> bytes:
    data = ply_bytes(points, binary=True)
    return data[: len(data) // 2]


def _nan_ply(points: np.ndarray) -> bytes:
    pts = points.copy()
    pts[5] = np.nan
    return ply_bytes(pts)


def _bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (2000, 1000)).save(buf, format="PNG")  # 2 Mpx > max_pixels (1 Mpx) of the tests
    return buf.getvalue()


def _lying_png_header() -> bytes:
    """A PNG whose IHDR claims 100000 x 100000 pixels."""
    data = bytearray(png_bytes())
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _too_many_points() -> bytes:
    header = b"ply\nformat ascii 1.0\nelement vertex 3000000\nproperty float x\nproperty float y\n" \
             b"property float z\nend_header\n"
    return header + b"0 0 0\n1 1 1\n"


CASES = [
    # (endpoint, filename, body, status, error code)
    (PTS, "empty.ply", lambda p: b"", 400, "empty"),
    (IMG, "empty.png", lambda p: b"", 400, "empty"),
    (PTS, "junk.ply", lambda p: bytes(range(256)) * 8, 400, "garbage"),
    (IMG, "junk.png", lambda p: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, 400, "garbage"),
    (PTS, "half.ply", _truncated_ply, 400, "truncated"),
    (PTS, "nan.ply", _nan_ply, 422, "non_finite"),
    (PTS, "picture.png", lambda p: png_bytes(), 415, "not_a_3d_file"),
    (IMG, "cloud.ply", lambda p: ply_bytes(p), 415, "not_an_image"),
    (PTS, "flat.xyz", lambda p: b"1 1 1\n" * 100, 422, "zero_extent"),
    (PTS, "few.xyz", lambda p: b"0 0 0\n1 0 0\n0 1 0\n", 422, "too_few_points"),
    (PTS, "huge.ply", lambda p: _too_many_points(), 400, "absurd_count"),
    (IMG, "bomb.png", lambda p: _bomb_png(), 413, "image_bomb"),
    (IMG, "liar.png", lambda p: _lying_png_header(), 413, "image_bomb"),
    (PTS, "mesh.stl", lambda p: b"solid x\nfacet normal 0 0 1\nendsolid x\n", 415, "unsupported_format"),
]


@pytest.mark.parametrize(("url", "name", "make", "status", "code"), CASES, ids=[c[1] for c in CASES])
def test_bad_upload(client, shape_points, url, name, make, status, code):
    r = client.post(url, files={"file": (name, make(shape_points[0]))})
    body = r.json()
    assert (r.status_code, body["error"]) == (status, code), body
    assert set(body) == {"error", "detail"} and body["detail"] and "Traceback" not in body["detail"]


def test_oversize_upload_with_content_length_is_413(client):
    big = b"0 0 0\n" * (300 * 1024 // 6)  # > max_upload_bytes (256 KiB) of the tests
    r = client.post(PTS, files={"file": ("big.xyz", big)})
    assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_oversize_streamed_upload_is_413_while_receiving(client):
    def body():  # no Content-Length: the limit is enforced by counting received bytes
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.xyz\"\r\n\r\n"
        for _ in range(64):  # 64 x 64 KiB = 4 MiB, far above the limit
            yield b"0 0 0\n" * (64 * 1024 // 6)
        yield b"\r\n--b--\r\n"

    r = client.post(PTS, content=body(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_file_just_over_the_limit_is_413(client):
    """The per-file limit (read in chunks) applies even when the body limit lets the request in."""
    limit = client.app.state.cmah.settings.max_upload_bytes
    r = client.post(PTS, files={"file": ("big.xyz", b"1" * (limit + 10))})
    assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_queue_full_is_503_with_retry_after(client, monkeypatch):
    from service.engine import QueueFull

    def full(*_a, **_k):
        raise QueueFull("256 requests are already waiting")

    engine = client.app.state.cmah.engine
    monkeypatch.setattr(engine, "encode_if_idle", lambda *_a, **_k: None)  # busy: the request goes to the queue
    monkeypatch.setattr(engine, "submit", full)
    r = client.post(IMG, files={"file": ("q.png", png_bytes())})
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"] == "overloaded"


def _documented_codes() -> set[str]:
    """The error codes of the table in docs/api.md ("## Errors")."""
    text = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    table = text.split("## Errors", 1)[1].split("\n## ", 1)[0]
    rows = [row.split("|") for row in table.splitlines() if row.startswith("|")][2:]  # no header, no rule
    return {code for cells in rows if len(cells) > 3 for code in re.findall(r"`([a-z_]+)`", cells[2])}


def test_two_file_parts_are_400_naming_the_problem(client, shape_points):
    """Two ``file`` parts: refused, never the last one searched silently."""
    clouds = [("file", (f"{i}.ply", ply_bytes(shape_points[i]))) for i in range(2)]
    archives = [("file", (f"{i}.zip", b"PK\x03\x04")) for i in range(2)]
    for url, files in ((PTS, clouds), (JOBS, archives)):
        r = client.post(url, files=files, headers=admin_headers())
        body = r.json()
        assert (r.status_code, body["error"]) == (400, "duplicate_file"), r.text
        assert "2 parts named 'file'" in body["detail"] and body["error"] in _documented_codes()


def test_text_field_as_file_is_a_clear_422(client):
    for url in (IMG, JOBS):
        r = client.post(url, data={"file": "hello"}, headers=admin_headers())
        body = r.json()
        assert (r.status_code, body["error"]) == (422, "invalid_request"), r.text
        assert "'file'" in body["detail"] and "text field" in body["detail"]
        assert "UploadFile" not in body["detail"] and "class" not in body["detail"]


def test_multipart_without_boundary_answers_a_documented_code(client):
    r = client.post(PTS, content=b"--x\r\n\r\n--x--\r\n", headers={"content-type": "multipart/form-data"})
    body = r.json()
    assert r.status_code == 400 and "boundary" in body["detail"]
    assert body["error"] in _documented_codes(), body


@pytest.mark.parametrize(("url", "name", "data", "phrase"), [
    (IMG, "q.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "got an OBJ 3D file"),
    (IMG, "q.off", b"OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n", "got an OFF 3D file"),
    (IMG, "q.xyz", b"0 0 0\n1 0 0\n0 1 0\n", "got an XYZ 3D file"),
    (IMG, "q.ply", b"ply\nformat ascii 1.0\nend_header\n", "got a PLY 3D file"),
    (PTS, "q.png", png_bytes(), "got a PNG image"),
], ids=["obj", "off", "xyz", "ply", "png"])
def test_wrong_kind_messages_use_the_right_article(client, url, name, data, phrase):
    r = client.post(url, files={"file": (name, data)})
    assert r.status_code == 415 and phrase in r.json()["detail"], r.text
