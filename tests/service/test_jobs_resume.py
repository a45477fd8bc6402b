"""Resumable jobs: a job interrupted by a crash resumes at the next start and skips what the store already
holds; a SIGKILL loop (>= 20 kills at seeded random moments) against the real start-up code."""

from __future__ import annotations

import io
import logging
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from svc_helpers import brute_force, job_items, ply_bytes, png_bytes, wait_job, wait_ready

from index.codes import BITS_CHOICES
from index.store import HashStore
from model.dataset import load_dataset, save_dataset
from model.encode import Encoder
from service.app import create_app
from service.indexing import ItemWriter
from service.job_store import JOB_DB, JobStore
from service.jobs import UPLOAD_DIR

logger = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
KILLS = 20
SEED = 20261123


def _queue_upload(data_dir: Path, kind: str, data: bytes, state: str = "queued") -> str:
    """A job record and its uploaded file, as POST /api/v1/admin/jobs leaves them."""
    (data_dir / UPLOAD_DIR).mkdir(parents=True, exist_ok=True)
    jobs = JobStore(data_dir / JOB_DB)
    job = jobs.create(kind, f"bulk.{kind}")
    jobs.update(job.id, state=state)
    jobs.close()
    (data_dir / UPLOAD_DIR / f"{job.id}.{kind}").write_bytes(data)
    return job.id


def test_interrupted_npz_job_resumes_without_duplicates(make_settings, tmp_path, synth_npz, tiny_weights):
    ds = load_dataset(synth_npz)
    idx = np.arange(0, 40, 4)
    npz = tmp_path / "ten.npz"
    save_dataset(npz, ds.points[idx], ds.labels[idx], np.array(["dup"] * len(idx)), ds.classes)  # same names
    data_dir = tmp_path / "data"
    job_id = _queue_upload(data_dir, "npz", npz.read_bytes(), state="running")
    # the crashed run had indexed the first 4 shapes (its `done` counter was never updated)
    with HashStore(data_dir) as store:
        writer = ItemWriter(data_dir, store, Encoder.from_weights(tiny_weights, device="cpu"), threading.Lock())
        writer.add_clouds(ds.points[idx[:4]], ["dup"] * 4, ["x"] * 4, f"job:{job_id}")
    with TestClient(create_app(make_settings(data_dir, build_demo_gallery=False, job_batch_size=4))) as c:
        wait_ready(c)
        job = wait_job(c, job_id)
        assert (job["state"], job["total"], job["done"]) == ("succeeded", 10, 10), job
        items = job_items(c, job_id)
        assert sorted(i.modality for i in items) == ["image"] * 10 + ["points"] * 10
        assert not (data_dir / UPLOAD_DIR / f"{job_id}.npz").exists()  # the upload is deleted once done


def test_interrupted_zip_job_skips_indexed_members(make_settings, tmp_path, shape_points, tiny_weights):
    data, names = _bulk_zip(shape_points[:3])  # s00.ply, p00.png, s01.ply, p01.png, s02.ply, p02.png
    data_dir = tmp_path / "data"
    job_id = _queue_upload(data_dir, "zip", data, state="running")
    with HashStore(data_dir) as store:  # the crashed run had indexed s00.ply and p00.png
        writer = ItemWriter(data_dir, store, Encoder.from_weights(tiny_weights, device="cpu"), threading.Lock())
        writer.add_clouds(shape_points[:1], [names[0]], [None], f"job:{job_id}")
        writer.add_images([Image.open(io.BytesIO(png_bytes(size=32))).convert("RGB")], [names[1]], [None],
                          f"job:{job_id}")
    with TestClient(create_app(make_settings(data_dir, build_demo_gallery=False, job_batch_size=2))) as c:
        wait_ready(c)
        job = wait_job(c, job_id)
        assert (job["state"], job["total"], job["done"], job["failed"]) == ("succeeded", 6, 6, 0), job
        items = sorted((i.modality, i.name) for i in job_items(c, job_id))
        assert items == sorted([("image", n) for n in names] + [("points", n) for n in names if n.endswith(".ply")])


# ---------------------------------------------------------------------------------------------- SIGKILL loop
#: A long-lived process that loads the model once and forks one "service" per round: each child runs the
#: real start-up (service.app._start: store, engine, writer, job runner that resumes unfinished jobs).
ZYGOTE = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import service.app as app_mod
    from model.encode import Encoder
    from service.metrics import Metrics
    from service.settings import Settings
    from service.state import ServiceState

    data_dir, weights, job_id = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    settings = Settings(data_dir=data_dir, weights_dir=weights, device="cpu", torch_threads=1, max_wait_ms=2,
                        job_batch_size=2, build_demo_gallery=False, _env_file=None)
    encoder = Encoder.from_weights(weights, device="cpu")
    Encoder.from_weights = classmethod(lambda cls, *a, **k: encoder)  # children reuse the loaded model

    def child():
        state = ServiceState(settings=settings, metrics=Metrics())
        app_mod._start(state)
        print("started", os.getpid(), flush=True)
        while state.jobs.get(job_id).state not in ("succeeded", "failed"):
            time.sleep(0.01)
        print("finished", state.jobs.get(job_id).state, flush=True)
        app_mod._stop(state)

    print("zygote", os.getpid(), flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "run":
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    child()
                    code = 0
                finally:
                    os._exit(code)
            print("pid", pid, flush=True)
        elif cmd == "reap":
            _, status = os.waitpid(int(args[0]), 0)
            print("reaped", status, flush=True)
    """
)


class _Zygote:
    def __init__(self, data_dir: Path, weights: Path, job_id: str, log: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
        self.stderr = open(log, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(data_dir), str(weights), job_id],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, env=env, cwd=REPO_ROOT)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("zygote", 600)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def expect(self, word: str, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                parts = self.lines.get(timeout=max(0.0, deadline - time.monotonic())).split()
            except queue.Empty:
                raise AssertionError(f"no {word!r} from the service process in {timeout} s") from None
            if parts and parts[0] == word:
                return parts

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self.stderr.close()


def _bulk_zip(points: np.ndarray) -> tuple[bytes, list[str]]:
    names: list[str] = []
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, p in enumerate(points):
            names.append(f"shapes/s{i:02d}.ply")
            zf.writestr(names[-1], ply_bytes(p))
            names.append(f"pics/p{i:02d}.png")
            zf.writestr(names[-1], png_bytes(size=32 + i, color=(7 * i % 256, 90, 200)))
    return buf.getvalue(), names


def _wait_progress(data_dir: Path, job_id: str, since: int, total: int, timeout: float = 300.0) -> None:
    """Until the job's ``done`` counter passes ``since`` (or the job is complete): the machine's speed does
    not decide whether kills land in the middle of the job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = _done(data_dir, job_id)
        if done > since or done >= total:
            return
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} made no progress past {since} in {timeout} s")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def _done(data_dir: Path, job_id: str) -> int:
    jobs = JobStore(data_dir / JOB_DB)
    try:
        job = jobs.get(job_id)
        assert job is not None
        return job.done
    finally:
        jobs.close()


def _check_store(data_dir: Path, job_id: str, acked: int, before: set[str], rng: np.random.Generator) -> set[str]:
    """Index == SQLite; at least ``acked`` (the job's last ``done``) files indexed, among them all those
    indexed at the previous check (``before``); every item found by its own code; nothing twice. Returns
    the names indexed. (``done`` counts files, not a prefix of the archive: a batch's pictures and clouds
    are two transactions.)"""
    with HashStore(data_dir) as store:
        for modality in ("image", "points"):
            for bits in BITS_CHOICES:
                assert store.index_count(modality, bits) == store.count(modality)
        indexed = store.source_names(f"job:{job_id}")
        assert len(indexed) == len(set(indexed)), "an item was indexed twice"
        now = {nm for _, nm in indexed}
        assert len(now) >= acked, f"the job reported {acked} files done, {len(now)} are indexed"
        assert before <= now, f"indexed items lost: {sorted(before - now)}"
        n = store.count()
        records = [r for r in store.get_many(range(1, 2 * n + 10)) if r is not None]
        for rec in records:
            d, ids = store.search(rec.modality, rec.codes[64], 64, n)
            assert rec.id in ids[0][d[0] == 0], f"item {rec.id} not found by its own code"
        for pick in rng.permutation(len(records))[:4]:
            rec = records[int(pick)]
            for bits in BITS_CHOICES:
                d, ids = store.search(rec.modality, rec.codes[bits], bits, n)
                want = brute_force(store, rec.modality, rec.codes[bits], bits, n)
                got = [(int(i), int(x)) for i, x in zip(ids[0], d[0], strict=True) if i >= 0]
                assert got == want
        return now


@pytest.mark.slow
def test_sigkill_loop_resumes_bulk_job(tmp_path, synth_npz, tiny_weights):
    rng = np.random.default_rng(SEED)
    points = load_dataset(synth_npz).points[np.arange(0, 96, 3)]
    data, names = _bulk_zip(points)
    data_dir = tmp_path / "data"
    job_id = _queue_upload(data_dir, "zip", data)
    zygote = _Zygote(data_dir, tiny_weights, job_id, tmp_path / "service.log")
    t0 = time.monotonic()
    history: list[tuple[int, int]] = []
    indexed: set[str] = set()
    batch_s: float | None = None  # how long a batch takes on this machine: the window of a kill mid-job
    try:
        for round_no in range(KILLS):
            zygote.send("run")
            pid = int(zygote.expect("pid", 120)[1])
            if round_no % 4 != 3:  # mostly while indexing: once the job moved on, at a random moment of a batch
                zygote.expect("started", 300)
                _wait_progress(data_dir, job_id, history[-1][0] if history else 0, len(names))
                if batch_s is None:
                    t1, at = time.monotonic(), _done(data_dir, job_id)
                    _wait_progress(data_dir, job_id, at, len(names))
                    batch_s = time.monotonic() - t1
                time.sleep(rng.uniform(0.0, batch_s))
            else:  # every 4th round: at a random moment of the start-up
                time.sleep(rng.uniform(0.0, 0.15))
            acked = _done(data_dir, job_id)
            os.kill(pid, signal.SIGKILL)
            zygote.send(f"reap {pid}")
            status = int(zygote.expect("reaped", 120)[1])
            assert status & 0x7F == signal.SIGKILL or status == 0, _tail(tmp_path / "service.log")
            indexed = _check_store(data_dir, job_id, acked, indexed, rng)
            history.append((acked, len(indexed)))
        zygote.send("run")
        pid = int(zygote.expect("pid", 120)[1])
        assert zygote.expect("finished", 600)[1] == "succeeded"
        zygote.send(f"reap {pid}")  # the last service closes its store before the checks below open it
        assert int(zygote.expect("reaped", 120)[1]) == 0
    finally:
        zygote.close()
        logger.info("%d kills in %.1f s; (acknowledged, indexed) after each: %s", len(history),
                    time.monotonic() - t0, history)
    assert _check_store(data_dir, job_id, len(names), indexed, rng) == set(names)
    jobs = JobStore(data_dir / JOB_DB)
    job = jobs.get(job_id)
    jobs.close()
    assert job is not None and (job.state, job.total, job.done, job.failed) == ("succeeded", 64, 64, 0), job
    with HashStore(data_dir) as store:
        assert store.count("points") == len(points) and store.count("image") == len(names)
    assert not (data_dir / UPLOAD_DIR / f"{job_id}.zip").exists()
    assert sum(0 < a < len(names) for a, _ in history) >= KILLS // 2, f"too few kills mid-job: {history}"
