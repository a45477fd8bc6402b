"""Upload bounds: size (while streaming, with flat server memory), time (slow bodies: 408), parts (multipart
forms with many fields or files: 400), and content that must agree with the endpoint (415 before any reader)."""

from __future__ import annotations

import json
import select
import socket
import time

import pytest
from conftest import LIVE_BODY_TIMEOUT_S, LIVE_BODY_TOTAL_TIMEOUT_S
from svc_helpers import ServerProcess, ply_bytes, png_bytes

import service.routes.search as search_routes

PTS = "/api/v1/search/points-to-images"
IMG = "/api/v1/search/image-to-points"
MiB = 1 << 20
LIMIT = 32 * MiB  # the default CMAH_MAX_UPLOAD_BYTES, used by live_server
FILE_HEAD = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.xyz"\r\n'
             b"Content-Type: application/octet-stream\r\n\r\n")


def _connect(server: ServerProcess, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(f"{head}Host: 127.0.0.1:{server.port}\r\n\r\n".encode())
    return sock


def _response(sock: socket.socket, timeout: float = 60.0) -> tuple[int, dict]:
    """Status and JSON body of the answer (read until the server closes or the body is complete)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
    except ConnectionResetError:
        pass
    head, _, body = data.partition(b"\r\n\r\n")
    assert head, "no answer"
    return int(head.split()[1]), json.loads(body)


def test_declared_2gb_body_is_refused_before_it_is_sent(live_server):
    t0 = time.monotonic()
    with _connect(live_server, f"POST {PTS} HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                               f"Content-Length: {2 << 30}\r\n") as sock:
        status, body = _response(sock)
    assert (status, body["error"]) == (413, "too_large") and time.monotonic() - t0 < 30


def test_streamed_300mb_without_length_is_cut_off_and_memory_stays_flat(live_server):
    """300 MB of chunked upload (no Content-Length): 413 soon after the 32 MiB limit, server RSS flat."""
    rss0 = live_server.rss_bytes()
    chunk = b"0 0 0\n" * (256 * 1024 // 6)
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    answered = False
    with _connect(live_server, f"POST {PTS} HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                               "Transfer-Encoding: chunked\r\n") as sock:
        sock.sendall(f"{len(FILE_HEAD):x}\r\n".encode() + FILE_HEAD + b"\r\n")
        try:
            while sent < 300 * MiB:
                if select.select([sock], [], [], 0)[0]:
                    answered = True
                    break
                sock.sendall(frame)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            answered = True
        status, body = _response(sock)
    rss1 = live_server.rss_bytes()
    print(f"cut off after {sent / MiB:.1f} MiB sent; server RSS {rss0 / MiB:.0f} -> {rss1 / MiB:.0f} MiB")  # noqa: T201
    assert answered and (status, body["error"]) == (413, "too_large")
    assert LIMIT <= sent < LIMIT + 32 * MiB  # only socket buffers beyond the limit
    assert rss1 - rss0 < 24 * MiB, (rss0, rss1)


def _multipart_head(length: int) -> str:
    return f"POST {PTS} HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {length}\r\n"


def test_stalled_body_is_408_after_the_idle_timeout(live_server):
    with _connect(live_server, _multipart_head(100_000)) as sock:
        sock.sendall(FILE_HEAD + b"0 0 0\n" * 10)
        t0 = time.monotonic()
        status, body = _response(sock)
        took = time.monotonic() - t0
    assert (status, body["error"]) == (408, "timeout") and "no data" in body["detail"]
    assert LIVE_BODY_TIMEOUT_S - 0.1 <= took < LIVE_BODY_TIMEOUT_S + 10


def test_trickled_body_is_408_after_the_total_timeout(live_server):
    """One byte every 0.5 s never trips the idle timeout; the total timeout ends it."""
    with _connect(live_server, _multipart_head(100_000)) as sock:
        sock.sendall(FILE_HEAD)
        t0 = time.monotonic()
        sock.setblocking(False)
        while not select.select([sock], [], [], 0.5)[0]:
            sock.send(b"0")
            assert time.monotonic() - t0 < LIVE_BODY_TOTAL_TIMEOUT_S + 15, "no answer"
        sock.setblocking(True)
        status, body = _response(sock)
        took = time.monotonic() - t0
    assert (status, body["error"]) == (408, "timeout") and "not complete" in body["detail"]
    assert LIVE_BODY_TOTAL_TIMEOUT_S - 0.1 <= took < LIVE_BODY_TOTAL_TIMEOUT_S + 10


def test_server_still_answers_after_the_bounded_requests(live_server, shape_points):
    import httpx

    r = httpx.post(f"{live_server.url}{PTS}", files={"file": ("q.ply", ply_bytes(shape_points[0]))}, timeout=60)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("fields", "files"), [(2000, 0), (20, 0), (0, 9)], ids=["2000-fields", "20-fields", "9-files"])
def test_many_form_parts_are_400(client, fields, files):
    parts = [("file", ("q.ply", b"ply\n", "application/octet-stream"))]
    parts += [(f"f{i}", ("x.txt", b"x", "text/plain")) for i in range(files)]
    data = {f"f{i}": "" for i in range(fields)}
    t0 = time.monotonic()
    r = client.post(PTS, files=parts, data=data)
    assert (r.status_code, r.json()["error"]) == (400, "too_many_parts"), r.text
    assert "Maximum number" in r.json()["detail"] and time.monotonic() - t0 < 10


class _Spy:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.mark.parametrize(("url", "name", "ctype", "make", "code", "reader"), [
    (PTS, "picture.ply", "application/octet-stream", lambda p: png_bytes(), "not_a_3d_file", "load_points"),
    (IMG, "cloud.png", "image/png", ply_bytes, "not_an_image", "read_image"),
    (IMG, "cloud.jpg", "image/jpeg", lambda p: b"0 0 0\n1 0 0\n0 1 0\n0 0 1\n", "not_an_image", "read_image"),
], ids=["png-as-ply", "ply-as-png", "xyz-as-jpg"])
def test_content_must_match_the_endpoint_before_any_reader(client, monkeypatch, shape_points, url, name, ctype,
                                                          make, code, reader):
    spy = _Spy(getattr(search_routes, reader))
    monkeypatch.setattr(search_routes, reader, spy)
    r = client.post(url, files={"file": (name, make(shape_points[0]), ctype)})
    assert (r.status_code, r.json()["error"]) == (415, code), r.text
    assert spy.calls == 0, f"{reader} was run on the wrong kind of file"
    good = png_bytes() if url == IMG else ply_bytes(shape_points[0])
    assert client.post(url, files={"file": ("q", good)}).status_code == 200
    assert spy.calls == 1  # the spy sees the reader when the content is right
