"""Helpers of the service tests (not fixtures): request bodies and a brute-force Hamming search."""

from __future__ import annotations

import io
import time

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from index.store import HashStore
from model.inputs import write_ply

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
