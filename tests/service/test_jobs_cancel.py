"""Job management: GET /api/v1/admin/jobs (list, state filter, pages), POST .../jobs/{id}/cancel (a cancelled job
keeps what it indexed, stays cancelled across restarts and is never resumed), items/s and ETA in the status."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from svc_helpers import admin_headers, job_items, wait_job, wait_ready

from model.dataset import load_dataset, save_dataset
from service.app import create_app
from service.job_store import JOB_DB, JobStore
from service.jobs import UPLOAD_DIR
from service.routes.admin import MAX_JOBS_LIMIT

JOBS = "/api/v1/admin/jobs"
H = admin_headers()


@pytest.fixture(scope="module")
def six_npz(tmp_path_factory, synth_npz) -> Path:
    ds = load_dataset(synth_npz)
    idx = np.arange(1, len(ds), 7)[:6]
    path = tmp_path_factory.mktemp("cancel") / "six.npz"
    save_dataset(path, ds.points[idx], ds.labels[idx], np.array([f"six_{i}" for i in idx]), ds.classes)
    return path


@contextmanager
def _service(make_settings, data_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(data_dir, build_demo_gallery=False, job_batch_size=2))) as c:
        wait_ready(c)
        yield c


class Gate:
    """Holds the job runner before its ``n``-th batch of clouds until :meth:`open` (the test hook that makes a
    job slow enough to cancel at a known point)."""

    def __init__(self, client: TestClient, n: int):
        self.writer = client.app.state.cmah.writer
        self.original = self.writer.add_clouds
        self.n, self.calls = n, 0
        self.reached, self.released = threading.Event(), threading.Event()
        self.writer.add_clouds = self._add_clouds

    def _add_clouds(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            self.reached.set()
            assert self.released.wait(60), "the test never opened the gate"
        return self.original(*args, **kwargs)

    def wait(self) -> None:
        assert self.reached.wait(120), "the job never reached the gate"

    def open(self) -> None:
        self.released.set()


def _submit(c: TestClient, npz: Path, name: str = "six.npz") -> str:
    r = c.post(JOBS, files={"file": (name, npz.read_bytes())}, headers=H)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def _settled(c: TestClient, job_id: str, data_dir: Path, timeout: float = 60.0) -> dict:
    """The job's status once the runner has let go of it (its upload is deleted when it does)."""
    deadline = time.monotonic() + timeout
    while (data_dir / UPLOAD_DIR / f"{job_id}.npz").exists():
        assert time.monotonic() < deadline, "the runner did not let go of the job"
        time.sleep(0.05)
    return c.get(f"{JOBS}/{job_id}", headers=H).json()


def _stamp(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def test_cancel_running_and_queued_jobs_keeps_what_they_indexed(make_settings, tmp_path, six_npz):
    data_dir = tmp_path / "data"
    with _service(make_settings, data_dir) as c:
        gate = Gate(c, 2)  # before the 2nd batch: shapes 1-2 are stored
        running = _submit(c, six_npz)
        gate.wait()
        queued = _submit(c, six_npz, "second.npz")

        t0 = datetime.now(UTC)
        job = c.get(f"{JOBS}/{running}", headers=H).json()
        t1 = datetime.now(UTC)
        assert (job["state"], job["done"], job["total"], job["failed"]) == ("running", 2, 6, 0), job
        # items/s: 2 shapes since the run started; ETA: the 4 left at that rate
        started = _stamp(job["started"])
        rate, eta = job["items_per_second"], job["eta_seconds"]
        assert 2 / (t1 - started).total_seconds() - 1e-3 <= rate <= 2 / (t0 - started).total_seconds() + 1e-3
        assert eta == pytest.approx(4 / rate, rel=0.02, abs=0.1) and eta > 0
        assert job["ended"] is None
        assert c.get(f"{JOBS}/{queued}", headers=H).json()["items_per_second"] is None  # not started

        r = c.post(f"{JOBS}/{running}/cancel", headers=H)
        assert r.status_code == 200, r.text
        assert (r.json()["state"], r.json()["eta_seconds"]) == ("cancelled", None) and r.json()["ended"]
        r = c.post(f"{JOBS}/{queued}/cancel", headers=H)
        assert (r.status_code, r.json()["state"]) == (200, "cancelled")
        gate.open()  # the batch being stored when the cancel came is stored; nothing after it

        job = _settled(c, running, data_dir)
        assert (job["state"], job["done"], job["total"]) == ("cancelled", 4, 6), job
        assert job["eta_seconds"] is None and job["items_per_second"] > 0
        assert sorted(i.modality for i in job_items(c, running)) == ["image"] * 4 + ["points"] * 4
        assert all(i.name.startswith("six_") for i in job_items(c, running))
        other = _settled(c, queued, data_dir)
        assert (other["state"], other["done"], other["started"]) == ("cancelled", 0, None)
        assert job_items(c, queued) == []
        time.sleep(0.5)
        assert c.get(f"{JOBS}/{running}", headers=H).json()["done"] == 4  # it did not go on
        assert c.get("/ready").json()["items"] == 8
        metrics = c.get("/metrics").text
        assert 'cmah_jobs_total{state="cancelled"} 2.0' in metrics

        for job_id in (running, queued):  # ended jobs cannot be cancelled again
            r = c.post(f"{JOBS}/{job_id}/cancel", headers=H)
            assert (r.status_code, r.json()["error"]) == (409, "job_ended"), r.text
            assert "'cancelled'" in r.json()["detail"]
        done = _submit(c, six_npz, "third.npz")
        assert wait_job(c, done)["state"] == "succeeded"
        r = c.post(f"{JOBS}/{done}/cancel", headers=H)
        assert (r.status_code, r.json()["error"]) == (409, "job_ended") and "'succeeded'" in r.json()["detail"]
        assert c.get(f"{JOBS}/{done}", headers=H).json()["state"] == "succeeded"

    with _service(make_settings, data_dir) as c:  # a restart: cancelled jobs stay so and do not resume
        assert c.app.state.cmah.jobs.unfinished() == []
        time.sleep(0.5)
        for job_id, n in ((running, 4), (queued, 0)):
            job = c.get(f"{JOBS}/{job_id}", headers=H).json()
            assert (job["state"], job["done"]) == ("cancelled", n)
            assert len(job_items(c, job_id)) == 2 * n
        assert c.get("/ready").json()["items"] == 8 + 12


def test_a_job_cancelled_just_before_a_kill_is_not_resumed(make_settings, tmp_path, six_npz):
    """The cancel is durable when it is answered: a process killed right after it (the job still 'running' in
    the runner, its upload still there) does not resume the job at the next start, and removes the upload."""
    data_dir = tmp_path / "data"
    (data_dir / UPLOAD_DIR).mkdir(parents=True)
    jobs = JobStore(data_dir / JOB_DB)
    job = jobs.create("npz", "six.npz")
    jobs.update(job.id, state="running", total=6, done=2)
    assert jobs.cancel(job.id)[1] == "running"
    jobs.close()
    upload = data_dir / UPLOAD_DIR / f"{job.id}.npz"
    upload.write_bytes(six_npz.read_bytes())
    with _service(make_settings, data_dir) as c:
        time.sleep(0.5)
        body = c.get(f"{JOBS}/{job.id}", headers=H).json()
        assert (body["state"], body["done"]) == ("cancelled", 2)
        assert job_items(c, job.id) == [] and not upload.exists()


def test_list_jobs_filters_and_pages(make_settings, tmp_path, six_npz):
    data_dir = tmp_path / "data"
    with _service(make_settings, data_dir) as c:
        ids = [_submit(c, six_npz, f"n{i}.npz") for i in range(3)]
        for job_id in ids:
            wait_job(c, job_id)
        jobs = c.app.state.cmah.jobs
        cancelled = jobs.create("npz", "gone.npz")
        jobs.cancel(cancelled.id)
        newest_first = [cancelled.id, *ids[::-1]]

        body = c.get(JOBS, headers=H).json()
        assert (body["total"], body["offset"], body["limit"]) == (4, 0, 50)
        assert [j["id"] for j in body["jobs"]] == newest_first
        assert body["jobs"][1] == c.get(f"{JOBS}/{ids[-1]}", headers=H).json() | {
            "items_per_second": body["jobs"][1]["items_per_second"]}
        pages = [c.get(JOBS, params={"offset": o, "limit": 3}, headers=H).json() for o in (0, 3, 6)]
        assert [[j["id"] for j in p["jobs"]] for p in pages] == [newest_first[:3], newest_first[3:], []]
        assert {p["total"] for p in pages} == {4}
        body = c.get(JOBS, params={"state": "succeeded"}, headers=H).json()
        assert body["total"] == 3 and {j["state"] for j in body["jobs"]} == {"succeeded"}
        body = c.get(JOBS, params=[("state", "cancelled"), ("state", "queued")], headers=H).json()
        assert [j["id"] for j in body["jobs"]] == [cancelled.id]
        assert c.get(JOBS, params={"state": "running"}, headers=H).json() == {"total": 0, "offset": 0, "limit": 50,
                                                                             "jobs": []}
        for job in c.get(JOBS, params={"state": "succeeded"}, headers=H).json()["jobs"]:
            assert job["eta_seconds"] is None and job["items_per_second"] > 0
            assert _stamp(job["started"]) <= _stamp(job["ended"])
            assert job["items_per_second"] == pytest.approx(
                6 / (_stamp(job["ended"]) - _stamp(job["started"])).total_seconds(), rel=0.01)


@pytest.mark.parametrize(("method", "url"), [("get", JOBS), ("post", f"{JOBS}/abc/cancel")])
def test_job_routes_need_the_token(client, method, url):
    r = getattr(client, method)(url)
    assert (r.status_code, r.json()["error"]) == (401, "unauthorized")
    r = getattr(client, method)(url, headers=admin_headers("wrong"))
    assert (r.status_code, r.json()["error"]) == (403, "forbidden")


def test_cancel_unknown_job_is_404(client):
    r = client.post(f"{JOBS}/{'0' * 32}/cancel", headers=H)
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = client.post(f"{JOBS}/{'x' * 65}/cancel", headers=H)
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request") and "job_id" in r.json()["detail"]


@pytest.mark.parametrize(("params", "name"), [
    ({"state": "done"}, "state"), ({"limit": 0}, "limit"), ({"limit": MAX_JOBS_LIMIT + 1}, "limit"),
    ({"offset": -1}, "offset"), ([("state", "queued")] * 6, "state"),
])
def test_bad_list_parameters_are_422_naming_them(client, params, name):
    r = client.get(JOBS, params=params, headers=H)
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), r.text
    assert f"query.{name}" in r.json()["detail"]


def test_openapi_documents_the_job_routes(client):
    spec = client.get("/openapi.json").json()
    params = {p["name"]: p["schema"] for p in spec["paths"][JOBS]["get"]["parameters"]}
    assert (params["limit"]["minimum"], params["limit"]["maximum"]) == (1, MAX_JOBS_LIMIT)
    assert params["offset"]["minimum"] == 0
    states = next(s for s in params["state"]["anyOf"] if s.get("type") == "array")["items"]["enum"]
    assert states == ["queued", "running", "succeeded", "failed", "cancelled"]
    cancel = spec["paths"][f"{JOBS}/{{job_id}}/cancel"]["post"]
    assert {"200", "401", "403", "404", "409"} <= set(cancel["responses"])
    status = spec["components"]["schemas"]["JobStatus"]["properties"]
    assert {"items_per_second", "eta_seconds", "started", "ended"} <= set(status)


def test_old_jobs_database_is_upgraded(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / JOB_DB)
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, filename TEXT NOT NULL, state TEXT NOT "
               "NULL, total INTEGER NOT NULL DEFAULT 0, done INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL "
               "DEFAULT 0, errors TEXT NOT NULL DEFAULT '[]', error TEXT, created TEXT NOT NULL DEFAULT '', "
               "updated TEXT NOT NULL DEFAULT '')")
    db.execute("INSERT INTO jobs (id, kind, filename, state, done) VALUES ('old', 'zip', 'a.zip', 'succeeded', 3)")
    db.commit()
    db.close()
    jobs = JobStore(tmp_path / JOB_DB)
    try:
        old = jobs.get("old")
        assert old is not None and (old.state, old.done, old.started, old.start_done) == ("succeeded", 3, None, 0)
        assert old.speed() == (None, None)
        assert jobs.list() == (1, [old])
    finally:
        jobs.close()


def test_405_lists_every_method_of_the_path(client):
    """``/api/v1/admin/jobs`` takes GET and POST (two routes): a 405 there names both, token or not."""
    for headers in ({}, H):
        r = client.request("OPTIONS", JOBS, headers=headers)
        assert (r.status_code, r.json()["error"]) == (405, "method_not_allowed"), r.text
        assert {"GET", "POST"} <= {m.strip() for m in r.headers["allow"].split(",")}, r.headers["allow"]
    r = client.put(f"{JOBS}/abc/cancel", headers=H)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = client.request("OPTIONS", f"{JOBS}/from-path", headers=H)  # a literal path: not GET /jobs/{job_id}'s
    assert r.status_code == 405 and r.headers["allow"] == "POST"
