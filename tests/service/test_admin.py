"""Admin routes: bearer auth, background indexing jobs (npz and zip), persistence across restarts."""

from __future__ import annotations

import asyncio
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from svc_helpers import admin_headers, ply_bytes, png_bytes, wait_job, wait_ready

from model.dataset import load_dataset, save_dataset
from service.app import create_app
from service.job_store import JOB_DB, JobStore
from service.jobs import FILE_GONE

JOBS = "/api/v1/admin/jobs"


@pytest.fixture(scope="module")
def job_npz(tmp_path_factory, synth_npz) -> Path:
    ds = load_dataset(synth_npz)
    idx = np.arange(3, len(ds), 19)[:5]
    path = tmp_path_factory.mktemp("job") / "five.npz"
    save_dataset(path, ds.points[idx], ds.labels[idx], np.array([f"job_{i}" for i in idx]), ds.classes)
    return path


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "unauthorized"),
    ({"Authorization": "Basic abc"}, 401, "unauthorized"),
    (admin_headers("wrong-token"), 403, "forbidden"),
])
def test_admin_auth(client, headers, status, code):
    for method, url in (("post", JOBS), ("get", f"{JOBS}/x"), ("delete", "/api/v1/admin/items/1")):
        r = getattr(client, method)(url, headers=headers)
        assert (r.status_code, r.json()["error"]) == (status, code)


@pytest.mark.parametrize("headers", [{}, admin_headers()], ids=["no-token", "token"])
def test_unsupported_methods_on_admin_routes_are_405(client, headers):
    """A method an admin route does not take is 405 (with ``Allow``), token or not; unknown admin paths and
    the methods the routes take still need the token."""
    for method, url, allow in (("OPTIONS", JOBS, "POST"), ("PUT", f"{JOBS}/x", "GET"),
                               ("PATCH", "/api/v1/admin/items/1", "DELETE"), ("PUT", f"{JOBS}/from-path", "POST")):
        r = client.request(method, url, headers=headers)
        assert (r.status_code, r.json()["error"]) == (405, "method_not_allowed"), (method, url, r.text)
        assert allow in r.headers["allow"]
    r = client.options("/api/v1/admin/no-such-route")
    assert (r.status_code, r.json()["error"]) == (401, "unauthorized")


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("wrong-token", 403), ("", 401)])
def test_admin_refused_before_the_body_is_read(make_settings, tmp_path, token, status):
    """A big upload without the right token is answered at once: not one byte of the body is received."""
    app = create_app(make_settings(tmp_path))
    headers = [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"900000000")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": JOBS, "raw_path": JOBS.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    received, sent = [], []

    async def receive() -> dict:
        received.append(1)
        return {"type": "http.request", "body": b"x" * 65536, "more_body": len(received) < 16}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == status
    assert received == []


def test_admin_disabled_without_token(make_settings, tmp_path):
    with TestClient(create_app(make_settings(tmp_path, admin_token=None, build_demo_gallery=False))) as c:
        r = c.post(JOBS, headers=admin_headers())
        assert r.status_code == 403 and "CMAH_ADMIN_TOKEN is not set" in r.json()["detail"]


def test_job_rejects_other_files(client):
    r = client.post(JOBS, files={"file": ("shape.ply", b"ply\n")}, headers=admin_headers())
    assert r.status_code == 415 and r.json()["error"] == "unsupported_format"
    r = client.post(JOBS, files={"file": ("fake.zip", b"not a zip at all")}, headers=admin_headers())
    assert r.status_code == 415


def test_jobs_are_judged_by_content_not_by_name(client, shape_points, job_npz):
    """A zip named ``x.bin`` is a zip job, a dataset named ``data`` an npz job; a PLY named ``.zip`` or a PNG
    named ``.npz`` is refused naming what it is. Inside a zip, a PLY named ``.png`` is indexed as a cloud."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.ply", ply_bytes(shape_points[0]))
        zf.writestr("misnamed.png", ply_bytes(shape_points[1]))
    for name, data, kind, done in (("x.bin", buf.getvalue(), "zip", 2), ("data", job_npz.read_bytes(), "npz", 5)):
        r = client.post(JOBS, files={"file": (name, data)}, headers=admin_headers())
        assert r.status_code == 202, r.text
        job = wait_job(client, r.json()["job_id"])
        assert (job["state"], job["kind"], job["filename"], job["done"], job["failed"]) == (
            "succeeded", kind, name, done, 0), job
    for name, data, got in (("a.zip", ply_bytes(shape_points[0]), "got a PLY 3D file"),
                            ("b.npz", png_bytes(), "got a PNG image")):
        r = client.post(JOBS, files={"file": (name, data)}, headers=admin_headers())
        assert (r.status_code, r.json()["error"]) == (415, "unsupported_format"), r.text
        assert got in r.json()["detail"]
    r = client.post(JOBS, files={"file": ("empty.zip", b"")}, headers=admin_headers())
    assert (r.status_code, r.json()["error"]) == (400, "empty"), r.text


def test_npz_job_indexes_searchable_items_and_survives_restart(make_settings, tmp_path, job_npz):
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        before = c.get("/ready").json()["items"]
        r = c.post(JOBS, files={"file": ("five.npz", job_npz.read_bytes())}, headers=admin_headers())
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        assert r.headers["location"] == f"{JOBS}/{job_id}"
        job = wait_job(c, job_id)
        assert (job["state"], job["total"], job["done"], job["failed"], job["errors"]) == \
            ("succeeded", 5, 5, 0, [])
        assert c.get("/ready").json()["items"] == before + 10
        # a job item is found by its own cloud, as points and as its render
        ds = load_dataset(job_npz)
        hits = c.post("/api/v1/search/points-to-points", files={"file": ("q.ply", ply_bytes(ds.points[0]))},
                      params={"k": 1000}).json()["results"]
        names = {h["name"]: h for h in hits}
        assert "job_3" in names and names["job_3"]["label"] == str(ds.classes[ds.labels[0]])
        hits = c.post("/api/v1/search/points-to-images", files={"file": ("q.ply", ply_bytes(ds.points[0]))},
                      params={"k": 1000}).json()["results"]
        assert sum(h["name"].startswith("job_") for h in hits) == 5
    # a job left "running" by a crashed process, whose upload is gone: it cannot resume
    jobs = JobStore(tmp_path / JOB_DB)
    stale = jobs.create("zip", "crashed.zip")
    jobs.update(stale.id, state="running", total=10, done=4)
    jobs.close()
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        job = c.get(f"{JOBS}/{job_id}", headers=admin_headers()).json()
        assert job["state"] == "succeeded" and job["done"] == 5
        stale_body = wait_job(c, stale.id)
        assert stale_body["state"] == "failed" and stale_body["error"].startswith(FILE_GONE)
        assert "crashed.zip" in stale_body["error"]
        assert c.get("/ready").json()["items"] == before + 10  # no second demo gallery


def test_zip_job_with_labels_and_bad_files(client, shape_points):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("set/red.png", png_bytes(color=(220, 20, 20)))
        zf.writestr("set/chair.ply", ply_bytes(shape_points[2]))
        zf.writestr("set/broken.ply", ply_bytes(shape_points[2], binary=True)[:300])
        zf.writestr("set/notes.png", b"hello")
        zf.writestr("set/labels.csv", "file,label\nred.png,redthing\nset/chair.ply,chair\n")
        zf.writestr("__MACOSX/._red.png", b"junk")
    r = client.post(JOBS, files={"file": ("batch.zip", buf.getvalue())}, headers=admin_headers())
    assert r.status_code == 202
    job = wait_job(client, r.json()["job_id"])
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("succeeded", 4, 2, 2)
    assert {(e["name"], e["error"]) for e in job["errors"]} == {("set/broken.ply", "truncated"),
                                                               ("set/notes.png", "not_an_image")}
    store = client.app.state.cmah.store
    added = [r for r in store.get_many(range(1, 200)) if r is not None and r.source == f"job:{job['id']}"]
    assert sorted((r.modality, r.name, r.label) for r in added) == [
        ("image", "set/chair.ply", "chair"), ("image", "set/red.png", "redthing"), ("points", "set/chair.ply", "chair")]


def test_bad_npz_job_fails_with_reason(client):
    buf = io.BytesIO()
    np.savez(buf, points=np.zeros((2, 3)))
    r = client.post(JOBS, files={"file": ("bad.npz", buf.getvalue())}, headers=admin_headers())
    assert r.status_code == 202
    job = wait_job(client, r.json()["job_id"])
    assert job["state"] == "failed" and "missing array" in job["error"] and "bad.npz" in job["error"]


def test_unknown_job_is_404(client):
    r = client.get(f"{JOBS}/nope", headers=admin_headers())
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_delete_item(client):
    store = client.app.state.cmah.store
    victim = max(r.id for r in store.get_many(range(1, 200)) if r is not None)
    r = client.delete(f"/api/v1/admin/items/{victim}", headers=admin_headers())
    assert r.status_code == 200 and r.json() == {"deleted": victim}
    assert client.get(f"/api/v1/items/{victim}").status_code == 404
    r = client.delete(f"/api/v1/admin/items/{victim}", headers=admin_headers())
    assert r.status_code == 404
