"""A full disk during a job (ENOSPC on the preview / cloud files): the job fails with a clear message, the
files of the unfinished batch (and ``.tmp`` files) are removed, what was stored before is intact and
searchable, and searches keep answering 200.

The disk is a 2 MiB tmpfs (``mount -t tmpfs``, as root) nearly filled by a filler file; where mounting is not
allowed the same layout lives on the ordinary disk and ``ENOSPC`` is injected into the writer's file writes
once the same number of bytes was written (the writes fail half-way, like on a real full disk).
"""

from __future__ import annotations

import builtins
import errno
import io
import logging
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from svc_helpers import admin_headers, brute_force, job_items, ply_bytes, wait_job, wait_ready

import service.indexing
from index.codes import BITS_CHOICES
from model.dataset import load_dataset
from service.app import create_app
from service.indexing import CLOUD_DIR, PREVIEW_DIR
from service.jobs import DISK_FULL

logger = logging.getLogger(__name__)

JOBS = "/api/v1/admin/jobs"
FREE_BYTES = 120 * 1024  # left on the disk once it is filled: a few shapes' files


class _Space:
    left = FREE_BYTES


class _FullFile:
    """A file that fails with ENOSPC once ``_Space.left`` bytes were written (after writing what fits)."""

    def __init__(self, f: io.BufferedWriter):
        self._f = f

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        if len(view) > _Space.left:
            self._f.write(view[:_Space.left])
            _Space.left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _Space.left -= len(view)
        return self._f.write(view)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")

    def __getattr__(self, name: str) -> object:
        return getattr(self._f, name)

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _full_open(file, mode="r", *args, **kwargs):  # the signature of open()
    f = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 - closed by the caller
    return _FullFile(f) if "w" in mode else f


def _mount_tmpfs(path: Path) -> bool:
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], capture_output=True,
                           timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


@pytest.fixture(params=["tmpfs", "injected"])
def small_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Path, str]]:
    """``(data_dir, disk, how)``: ``data_dir/previews`` and ``data_dir/clouds`` live on ``disk``; ``_fill``
    leaves only ``FREE_BYTES`` on it. ``tmpfs`` falls back to ``injected`` where mounting is not allowed."""
    disk, data_dir = tmp_path / "disk", tmp_path / "data"
    disk.mkdir()
    data_dir.mkdir()
    how = "tmpfs" if request.param == "tmpfs" and _mount_tmpfs(disk) else "injected"
    for sub in (PREVIEW_DIR, CLOUD_DIR):
        (disk / sub).mkdir()
        (data_dir / sub).symlink_to(disk / sub)
    logger.info("full disk simulated with: %s", how)
    try:
        yield data_dir, disk, how
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", "-l", str(disk)], check=False, timeout=30)


def _fill(disk: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "tmpfs":
        st = os.statvfs(disk)
        with open(disk / "filler", "wb") as f:
            f.write(bytes(max(0, st.f_bavail * st.f_frsize - FREE_BYTES)))
    else:
        _Space.left = FREE_BYTES
        monkeypatch.setattr(service.indexing, "open", _full_open, raising=False)


def _zip(points: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, p in enumerate(points):
            zf.writestr(f"s{i:02d}.ply", ply_bytes(p))
    return buf.getvalue()


def _run_job(client: TestClient, data: bytes) -> dict:
    r = client.post(JOBS, files={"file": ("set.zip", data)}, headers=admin_headers())
    assert r.status_code == 202, r.text
    return wait_job(client, r.json()["job_id"])


def test_disk_full_fails_the_job_cleanly(make_settings, small_disk, monkeypatch, synth_npz):
    data_dir, disk, how = small_disk
    points = load_dataset(synth_npz).points
    settings = make_settings(data_dir, build_demo_gallery=False, job_batch_size=4)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        earlier = _run_job(c, _zip(points[:3]))
        assert earlier["state"] == "succeeded" and earlier["done"] == 3
        earlier_items = job_items(c, earlier["id"])
        _fill(disk, how, monkeypatch)

        job = _run_job(c, _zip(points[3:43]))
        assert job["state"] == "failed" and DISK_FULL in job["error"], job
        assert job["done"] < 40
        store = c.app.state.cmah.store
        # the store is consistent: every index equals SQLite, and searches equal a brute force over SQLite
        n = store.count()
        assert n == 2 * (3 + job["done"]) and len(job_items(c, job["id"])) == 2 * job["done"]
        for modality in ("image", "points"):
            for bits in BITS_CHOICES:
                assert store.index_count(modality, bits) == store.count(modality)
        for rec in earlier_items:
            for bits in BITS_CHOICES:
                d, ids = store.search(rec.modality, rec.codes[bits], bits, n)
                got = [(int(i), int(x)) for i, x in zip(ids[0], d[0], strict=True) if i >= 0]
                assert got == brute_force(store, rec.modality, rec.codes[bits], bits, n)
                assert rec.id in ids[0][d[0] == 0]
        # the files of stored items are whole; nothing else is left behind (no half-written file, no .tmp)
        records = [r for r in store.get_many(range(1, 2 * n + 10)) if r is not None]
        keys = {r.item_key for r in records}
        for key in keys:
            assert np.load(data_dir / CLOUD_DIR / f"{key}.npy").shape == (1024, 3)
            with Image.open(data_dir / PREVIEW_DIR / f"{key}.png") as im:
                im.load()
        files = sorted(p.name for sub in (PREVIEW_DIR, CLOUD_DIR) for p in (data_dir / sub).iterdir())
        assert files == sorted([f"{k}.png" for k in keys] + [f"{k}.npy" for k in keys])
        # the service still answers
        r = c.post("/api/v1/search/points-to-images", files={"file": ("q.ply", ply_bytes(points[0]))})
        assert r.status_code == 200 and r.json()["results"], r.text
        rec = earlier_items[0]
        assert c.get(f"/api/v1/items/{rec.id}/points.ply").status_code == 200
        # with space again, jobs work again
        monkeypatch.undo()
        (disk / "filler").unlink(missing_ok=True)
        assert _run_job(c, _zip(points[50:52]))["state"] == "succeeded"
