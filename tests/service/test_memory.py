"""Memory during bulk imports: the job path keeps nothing per indexed item, and freed heap memory is given back
to the system (glibc ``malloc_trim``). Fixed amounts of work, no timings (docs/reliability.md, "Load")."""

from __future__ import annotations

import ctypes
import gc
import importlib
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from svc_helpers import admin_headers, wait_job, wait_ready

from model.dataset import load_dataset, save_dataset
from service import memory
from service.app import create_app

JOBS = "/api/v1/admin/jobs"
MiB = 1 << 20
glibc_only = pytest.mark.skipif(not memory.AVAILABLE, reason="malloc_trim is glibc's")


def _rss() -> int:
    rss = memory.rss_bytes()
    assert rss is not None
    return rss


@glibc_only
def test_trim_gives_freed_heap_memory_back():
    """Free 60 of 64 MiB of small heap blocks, keeping every 16th (the heap cannot shrink from its top): the
    memory stays resident until ``trim``."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, n = 32 * 1024, 2048  # below the mmap threshold: served from an arena
    blocks = [libc.malloc(size) for _ in range(n)]
    assert all(blocks)
    try:
        for b in blocks:
            ctypes.memset(b, 1, size)
        for i, b in enumerate(blocks):
            if i % 16 and i != n - 1:
                libc.free(b)
        freed = (n - n // 16 - 1) * size
        before = _rss()
        assert memory.trim()
        after = _rss()
        assert before - after > freed // 2, f"RSS {before / MiB:.0f} -> {after / MiB:.0f} MiB, {freed / MiB:.0f} freed"
    finally:
        for i, b in enumerate(blocks):
            if i % 16 == 0 or i == n - 1:
                libc.free(b)


def test_service_trims_every_interval_and_stops(make_settings, tmp_path):
    app = create_app(make_settings(tmp_path, build_demo_gallery=False, malloc_trim_interval_s=0.05))
    with TestClient(app) as c:
        wait_ready(c)
        trimmer = c.app.state.cmah.trimmer
        assert trimmer is not None and trimmer.interval_s == 0.05
        if memory.AVAILABLE:
            deadline = time.monotonic() + 60
            while trimmer.trims < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert trimmer.trims >= 2
        else:
            assert not trimmer.enabled and trimmer.trims == 0
    assert app.state.cmah.trimmer is None and trimmer._thread is None  # stopped with the service


def test_no_trimming_when_the_interval_is_0(make_settings, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "trim", lambda: calls.append(1) or True)
    app = create_app(make_settings(tmp_path, build_demo_gallery=False, malloc_trim_interval_s=0))
    with TestClient(app) as c:
        wait_ready(c)
        assert not c.app.state.cmah.trimmer.enabled and c.app.state.cmah.trimmer._thread is None
    assert calls == []


SHAPES = 48  # per job: 96 items
MEASURED_JOBS = 3


@pytest.fixture(scope="module")
def job_npz(tmp_path_factory, synth_npz) -> Path:
    ds = load_dataset(synth_npz)
    idx = np.arange(SHAPES) * 3 % len(ds)
    path = tmp_path_factory.mktemp("mem") / "job.npz"
    save_dataset(path, ds.points[idx], ds.labels[idx], ds.names[idx], ds.classes)
    return path


def test_bulk_jobs_keep_no_memory_per_item(make_settings, tmp_path, job_npz):
    """The same job, submitted again and again through the API (with searches between). After a warm-up job,
    neither the resident memory (after ``malloc_trim``) nor the Python heap (tracemalloc: every object, numpy
    arrays included; traced in a second round, tracing costs memory of its own) grows with the items added."""
    settings = make_settings(tmp_path, build_demo_gallery=False, job_batch_size=8, malloc_trim_interval_s=0)
    data = job_npz.read_bytes()
    query = {"file": ("q.npy", _npy(load_dataset(job_npz).points[0]))}
    added = MEASURED_JOBS * 2 * SHAPES

    def run_jobs(c: TestClient, n: int) -> None:
        for _ in range(n):
            r = c.post(JOBS, headers=admin_headers(), files={"file": ("job.npz", data)})
            assert r.status_code == 202, r.text
            body = wait_job(c, r.json()["job_id"], timeout=300)
            assert (body["state"], body["done"]) == ("succeeded", SHAPES), body
            for target in ("images", "points"):
                assert c.post(f"/api/v1/search/points-to-{target}", files=query).status_code == 200
        gc.collect()
        memory.trim()

    importlib.import_module("numpy.ma")  # imported by np.unique on the search's rare tie path: not per item
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        run_jobs(c, 2)  # warm-up: first batches, lazily built tables, thread pool
        rss0 = _rss()
        run_jobs(c, MEASURED_JOBS)
        rss1 = _rss()
        tracemalloc.start(NFRAMES)
        try:
            run_jobs(c, 1)  # objects made once under tracing (caches, thread state) are in the baseline
            snap0 = _python_heap()
            run_jobs(c, MEASURED_JOBS)
            snap1 = _python_heap()
        finally:
            tracemalloc.stop()
        assert c.app.state.cmah.store.count() == (2 * MEASURED_JOBS + 3) * 2 * SHAPES
    grown = sum(st.size_diff for st in snap1.compare_to(snap0, "filename"))
    per_item, rss_per_item = grown / added, (rss1 - rss0) / added
    print(f"{added} items: Python heap +{grown} B ({per_item:.0f} B/item), RSS {rss0 / MiB:.1f} -> "  # noqa: T201
          f"{rss1 / MiB:.1f} MiB ({rss_per_item:.0f} B/item)")
    top = [str(st) for st in snap1.compare_to(snap0, "lineno")[:5]]
    assert per_item < 512, f"Python heap +{grown} B for {added} items ({per_item:.0f} B/item): {top}"
    assert rss_per_item < 4096, f"RSS {rss0 / MiB:.1f} -> {rss1 / MiB:.1f} MiB for {added} items"


#: frames kept per traced allocation: deep enough to see an import below the allocating frame
NFRAMES = 8


def _python_heap() -> tracemalloc.Snapshot:
    """The live traced blocks, without those allocated while a module was imported (one-off, not growth)."""
    return tracemalloc.take_snapshot().filter_traces([
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>", all_frames=True),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>", all_frames=True)])


def _npy(points: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, points.astype(np.float32))
    return buf.getvalue()
