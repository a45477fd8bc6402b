"""SIGTERM on a real ``cmah serve``: no new connections, the in-flight request finishes, the store is closed
cleanly (the next start loads every FAISS snapshot as it is: nothing to rebuild), exit status 0.

The in-flight request is made slow honestly: the client sends half of a search upload, the test sends
SIGTERM, then the client sends the rest. No test hook in the service.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from svc_helpers import ServerProcess, ply_bytes, start_server

from index.codes import BITS_CHOICES
from index.metadata import MetadataDB
from index.persistence import read_snapshot
from index.records import MODALITIES
from index.store import DB_FILENAME, HashStore

URL = "/api/v1/search/points-to-images"
BOUNDARY = "cmahboundary"


def _search_request(port: int, points: np.ndarray) -> tuple[bytes, bytes]:
    """Head and body of a multipart search request."""
    body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="q.ply"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + ply_bytes(points) + \
        f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST {URL}?k=3 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n").encode()
    return head, body


def _read_response(sock: socket.socket, timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the response body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _refuses_connections(port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.05)
    return False


def _assert_store_closed_cleanly(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every snapshot is at SQLite's generation and count, and opening the store rebuilds nothing."""
    meta = MetadataDB(data_dir / DB_FILENAME)
    try:
        assert meta.count() > 0
        for modality in MODALITIES:
            for bits in BITS_CHOICES:
                header, _ = read_snapshot(data_dir / "snapshots" / f"{modality}-{bits}.snap")
                assert (header.generation, header.count) == (meta.generation(modality),
                                                             meta.count_codes(modality, bits))
    finally:
        meta.close()
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="index"), HashStore(data_dir):
        pass
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "rebuil" not in text and "stale" not in text, text


def _start(tmp_path: Path, tiny_weights: Path, demo_npz: Path, **env: str) -> ServerProcess:
    server = start_server(tmp_path, tiny_weights, demo_npz, **env)
    server.wait_ready()
    return server


def test_sigterm_finishes_the_in_flight_request_then_exits_0(tmp_path, tiny_weights, demo_npz, shape_points, caplog):
    server = _start(tmp_path, tiny_weights, demo_npz, CMAH_SHUTDOWN_TIMEOUT_S="60")
    try:
        head, body = _search_request(server.port, shape_points[0])
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(head + body[: len(body) // 2])
            time.sleep(0.5)  # the server has the request and is reading its body
            server.proc.send_signal(signal.SIGTERM)
            assert _refuses_connections(server.port), "still accepting connections after SIGTERM"
            time.sleep(1.0)
            assert server.proc.poll() is None, "exited with a request in flight"
            sock.sendall(body[len(body) // 2 :])
            status, _, answer = _read_response(sock)
            assert sock.recv(1) == b"", "the connection stays open after the answer"
        assert status == 200, answer
        assert len(json.loads(answer)["results"]) == 3
        assert server.proc.wait(60) == 0, server.log()[-3000:]
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log and "Waiting for connections to close" in log, log[-3000:]
    _assert_store_closed_cleanly(server.data_dir, caplog)


def test_sigterm_waits_at_most_the_shutdown_timeout(tmp_path, tiny_weights, demo_npz, shape_points, caplog):
    """A client that never finishes its request holds the shutdown for CMAH_SHUTDOWN_TIMEOUT_S, not longer."""
    server = _start(tmp_path, tiny_weights, demo_npz, CMAH_SHUTDOWN_TIMEOUT_S="2")
    try:
        head, body = _search_request(server.port, shape_points[0])
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(head + body[:100])
            time.sleep(0.5)
            t0 = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            code = server.proc.wait(60)
            took = time.monotonic() - t0
    finally:
        server.stop()
    assert code == 0, server.log()[-3000:]
    assert 1.9 <= took < 20, took
    assert "timeout graceful shutdown exceeded" in server.log()
    _assert_store_closed_cleanly(server.data_dir, caplog)
