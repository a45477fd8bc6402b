"""Server-side path jobs (POST /api/v1/admin/jobs/from-path): only files under CMAH_IMPORT_ROOT, read in
place and never deleted; and the limit on queued jobs (429, nothing written)."""

from __future__ import annotations

import io
import os
import sqlite3
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from svc_helpers import admin_headers, job_items, ply_bytes, wait_job, wait_ready

from service.app import create_app
from service.job_store import JOB_DB
from service.jobs import UPLOAD_DIR

FROM_PATH = "/api/v1/admin/jobs/from-path"
JOBS = "/api/v1/admin/jobs"


def _zip_bytes(points) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.ply", ply_bytes(points[0]))
        zf.writestr("b.ply", ply_bytes(points[1]))
    return buf.getvalue()


@pytest.fixture(scope="module")
def tree(tmp_path_factory, shape_points) -> Path:
    """``root/`` (the import root) and ``outside/`` next to it."""
    base = tmp_path_factory.mktemp("imports")
    root, outside = base / "root", base / "outside"
    (root / "sub" / "dir").mkdir(parents=True)
    outside.mkdir()
    data = _zip_bytes(shape_points)
    (root / "good.zip").write_bytes(data)
    (root / "sub" / "nested.zip").write_bytes(data)
    (root / "notes.txt").write_text("hello")
    (root / "fake.zip").write_bytes(b"not a zip at all")
    (root / "archive.bin").write_bytes(data)  # a zip by its content
    (root / "cloud.zip").write_bytes(ply_bytes(shape_points[0]))  # a PLY by its content
    (outside / "secret.zip").write_bytes(data)
    (root / "link_out.zip").symlink_to(outside / "secret.zip")
    (root / "link_dir").symlink_to(outside)
    (root / "link_in.zip").symlink_to(root / "good.zip")
    (root / "dangling.zip").symlink_to(outside / "missing.zip")
    return base


@pytest.fixture(scope="module")
def path_client(tmp_path_factory, make_settings, tree):
    settings = make_settings(tmp_path_factory.mktemp("pathsvc"), import_root=tree / "root", build_demo_gallery=False)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def _post(client: TestClient, path: str):
    return client.post(FROM_PATH, json={"path": path}, headers=admin_headers())


@pytest.mark.parametrize("given", ["../outside/secret.zip", "sub/../../outside/secret.zip", "OUTSIDE",
                                   "/etc/passwd", "link_out.zip", "link_dir/secret.zip", "dangling.zip",
                                   "sub/../good.zip"])
def test_paths_outside_the_root_are_403(path_client, tree, given):
    given = str(tree / "outside" / "secret.zip") if given == "OUTSIDE" else given
    r = _post(path_client, given)
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "outside_import_root"


@pytest.mark.parametrize(("given", "status", "code"), [
    ("missing.zip", 404, "not_found"),
    ("sub/missing/x.zip", 404, "not_found"),
    ("sub/dir", 415, "unsupported_format"),
    ("notes.txt", 415, "unsupported_format"),
    ("fake.zip", 415, "unsupported_format"),
    ("cloud.zip", 415, "unsupported_format"),
    ("", 422, "invalid_request"),
])
def test_bad_paths(path_client, given, status, code):
    r = _post(path_client, given)
    assert (r.status_code, r.json()["error"]) == (status, code), r.text


@pytest.mark.parametrize("given", ["good.zip", "ROOT/sub/nested.zip", "link_in.zip", "archive.bin"])
def test_path_job_indexes_in_place_and_keeps_the_file(path_client, tree, given):
    given = str(tree / "root" / "sub" / "nested.zip") if given.startswith("ROOT") else given
    r = _post(path_client, given)
    assert r.status_code == 202, r.text
    job = wait_job(path_client, r.json()["job_id"])
    assert (job["state"], job["kind"], job["filename"], job["done"]) == ("succeeded", "zip", given, 2), job
    assert sorted(i.name for i in job_items(path_client, job["id"])) == ["a.ply", "a.ply", "b.ply", "b.ply"]
    assert (tree / "root" / "good.zip").is_file() and (tree / "root" / "sub" / "nested.zip").is_file()
    data_dir = path_client.app.state.cmah.settings.data_dir
    assert list((data_dir / UPLOAD_DIR).iterdir()) == []  # read in place, not copied


def test_imports_disabled_without_root(client):
    r = _post(client, "good.zip")
    assert (r.status_code, r.json()["error"]) == (403, "imports_disabled")


def _job_rows(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / JOB_DB) as db:
        return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])


def test_queued_jobs_limit(make_settings, tmp_path, tree, shape_points):
    settings = make_settings(tmp_path, max_queued_jobs=2, import_root=tree / "root", build_demo_gallery=False)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        jobs = c.app.state.cmah.jobs
        waiting = [jobs.create("zip", f"w{i}.zip") for i in range(2)]  # queued, never handed to the worker
        rows = _job_rows(tmp_path)
        r = c.post(JOBS, files={"file": ("x.zip", _zip_bytes(shape_points))}, headers=admin_headers())
        assert (r.status_code, r.json()["error"]) == (429, "too_many_jobs"), r.text
        assert int(r.headers["retry-after"]) > 0 and "CMAH_MAX_QUEUED_JOBS" in r.json()["detail"]
        r = _post(c, "good.zip")
        assert (r.status_code, r.json()["error"]) == (429, "too_many_jobs"), r.text
        assert _job_rows(tmp_path) == rows and os.listdir(tmp_path / UPLOAD_DIR) == []  # nothing written
        jobs.update(waiting[0].id, state="failed", error="test")
        r = c.post(JOBS, files={"file": ("x.zip", _zip_bytes(shape_points))}, headers=admin_headers())
        assert r.status_code == 202, r.text
        assert wait_job(c, r.json()["job_id"])["state"] == "succeeded"
