"""Helpers of the service tests (not fixtures): request bodies and a brute-force Hamming search."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from index.store import HashStore
from model.io import write_ply

ADMIN_TOKEN = "s3cret-test-token"


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"service not ready: {client.get('/ready').json()}")


def wait_job(client: TestClient, job_id: str, timeout: float = 60.0) -> dict:
    """The job's status once it succeeded or failed."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/admin/jobs/{job_id}", headers=admin_headers()).json()
        if body["state"] in ("succeeded", "failed"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {body}")


def job_items(client: TestClient, job_id: str) -> list:
    """The stored records of a job's items (source ``job:<id>``)."""
    store = client.app.state.cmah.store
    n = store.count()
    return [r for r in store.get_many(range(1, 10 * n + 10)) if r is not None and r.source == f"job:{job_id}"]


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def png_bytes(size: int = 40, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    img = Image.new("RGB", (size, size), (255, 255, 255))
    img.paste(Image.new("RGB", (size // 2, size // 2), color), (size // 4, size // 4))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def ply_bytes(points: np.ndarray, binary: bool = False) -> bytes:
    buf = io.BytesIO()
    write_ply(buf, points, binary=binary)
    return buf.getvalue()


def brute_force(store: HashStore, modality: str, code: np.ndarray, bits: int, k: int) -> list[tuple[int, int]]:
    """Exact (id, distance) of the ``k`` nearest items of ``modality``, by (distance, id), from stored codes."""
    n = store.count()
    recs = [r for r in store.get_many(range(1, 10 * n + 10)) if r is not None and r.modality == modality]
    q = np.unpackbits(np.asarray(code, dtype=np.uint8))
    scored = sorted((int((np.unpackbits(r.codes[bits]) != q).sum()), int(r.id)) for r in recs if bits in r.codes)
    return [(i, d) for d, i in scored[:k]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout: float = 5.0) -> int:
    """Status of a GET (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


@dataclass
class ServerProcess:
    """A ``cmah serve`` process (``python -m service.cli serve``) on 127.0.0.1."""

    proc: subprocess.Popen
    port: int
    data_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while http_status(f"{self.url}/ready") != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server not ready (exit code {self.proc.poll()}):\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_server(root: Path, weights: Path, demo: Path, **env_extra: str) -> ServerProcess:
    """Start ``cmah serve`` on a free port with tiny weights; data in ``root/data``, output in ``root/server.log``.

    ``env_extra``: more ``CMAH_*`` variables (e.g. ``CMAH_LOG_LEVEL="DEBUG"``).
    """
    port = free_port()
    data_dir = root / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMAH_")}
    env.update(CMAH_WEIGHTS_DIR=str(weights), CMAH_DEMO_DATA=str(demo), CMAH_DEVICE="cpu", CMAH_TORCH_THREADS="1",
               CMAH_ADMIN_TOKEN=ADMIN_TOKEN, CMAH_JOB_BATCH_SIZE="8", CMAH_LOG_LEVEL="INFO", OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    env.update(env_extra)
    log_path = root / "server.log"
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    return ServerProcess(proc, port, data_dir, log_path)
