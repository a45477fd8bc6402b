"""Scale-out against real servers: a Milvus standalone server, an S3 server, one ``cmah serve --role indexer``
and two ``--role search`` replicas, each a separate process.

A dataset is indexed through the indexer's admin job; the indexer is killed with SIGKILL in the middle of the
job and started again; then both replicas must answer every search exactly as a brute-force scan of the
indexer's journal (its SQLite database), hold every shape once (nothing acknowledged lost, nothing twice),
serve previews and clouds from the bucket, forget a deleted item (record, codes and objects), refuse admin
requests with 421, and a replica with other weights must refuse to start with one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from scale_servers import S3Server, milvus_uri, s3_server  # noqa: F401 - fixtures
from svc_helpers import ADMIN_TOKEN, ServerProcess, brute_force, ply_bytes, png_bytes, start_server

from index.metadata import MetadataDB
from index.store import DB_FILENAME
from model.dataset import load_dataset, save_dataset
from model.encode import Encoder
from model.io import load_points, read_image

SHAPES = 40  # one a batch: a job of 40 batches outlasts the kill loop (6) on quiet cores too
BUCKET = "cmah-scale-test"


def _request(method: str, url: str, body: bytes | None = None, headers: dict | None = None
             ) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _multipart(name: str, data: bytes) -> tuple[bytes, dict]:
    boundary = "cmahscaletestboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _json(method: str, url: str, **kw) -> tuple[int, dict]:  # noqa: ANN003
    status, _, body = _request(method, url, **kw)
    return status, json.loads(body) if body else {}


def _admin() -> dict:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _job(indexer: ServerProcess, job_id: str) -> dict:
    return _json("GET", f"{indexer.url}/api/v1/admin/jobs/{job_id}", headers=_admin())[1]


def _items_seen(server: ServerProcess) -> int:
    return int(_json("GET", f"{server.url}/ready")[1].get("items", -1))


def _search(server: ServerProcess, path: str, name: str, data: bytes, k: int, bits: int) -> list[tuple[int, int]]:
    body, headers = _multipart(name, data)
    status, out = _json("POST", f"{server.url}/api/v1/search/{path}?k={k}&bits={bits}", body=body, headers=headers)
    assert status == 200, out
    return [(h["id"], h["distance"]) for h in out["results"]]


@pytest.mark.slow
def test_indexer_and_two_search_replicas_over_a_real_milvus(  # noqa: PLR0915
    milvus_uri: str, s3_server: S3Server, tmp_path: Path, tiny_weights: Path, other_weights: Path,  # noqa: F811
    demo_npz: Path, synth_npz: Path,
) -> None:
    ds = load_dataset(synth_npz)
    idx = np.arange(SHAPES)
    data_npz = tmp_path / "shapes.npz"
    save_dataset(data_npz, ds.points[idx], ds.labels[idx], np.array([f"shape-{i:02d}" for i in range(SHAPES)]),
                 ds.classes)
    for sub in ("indexer", "replica1", "replica2"):
        (tmp_path / sub).mkdir()
    common = {"CMAH_BACKEND": "milvus", "CMAH_MILVUS_URI": milvus_uri, **s3_server.env(BUCKET),
              "CMAH_BUILD_DEMO_GALLERY": "false", "CMAH_JOB_BATCH_SIZE": "1"}
    # (grace 0: the start-up sweep removes the files of the batch the kill interrupts, locally and in the bucket)
    indexer = start_server(tmp_path / "indexer", tiny_weights, demo_npz, CMAH_ROLE="indexer",
                           CMAH_ORPHAN_GRACE_S="0", **common)
    replicas: list[ServerProcess] = []
    try:
        # the replicas start beside the indexer: not ready (503) until it has created the shared collections
        replicas = [start_server(tmp_path / f"replica{i}", tiny_weights, demo_npz, CMAH_ROLE="search",
                                 CMAH_INDEXER_URL=indexer.url, **common) for i in (1, 2)]
        indexer.wait_ready(600)
        for r in replicas:
            r.wait_ready(600)
            assert not r.data_dir.exists()  # a replica keeps nothing of its own
            status, headers, body = _request("GET", f"{r.url}/api/v1/admin/jobs", headers=_admin())
            assert status == 421 and json.loads(body)["error"] == "not_the_indexer", body
            assert indexer.url in json.loads(body)["detail"] and headers.get("location") == indexer.url

        # --- index through the indexer; SIGKILL it in the middle of the job -------------------------------
        body, headers = _multipart("shapes.npz", data_npz.read_bytes())
        status, created = _json("POST", f"{indexer.url}/api/v1/admin/jobs", body=body, headers={**headers, **_admin()})
        assert status == 202, created
        job_id = created["job_id"]
        acknowledged, lags = 0, []
        deadline = time.monotonic() + 300
        while acknowledged < 6:  # at least six batches of one shape reported done
            assert time.monotonic() < deadline, _job(indexer, job_id)
            job = _job(indexer, job_id)
            assert job["state"] in ("queued", "running"), job
            if job["done"] > acknowledged:
                acknowledged, t0 = job["done"], time.monotonic()
                for r in replicas:  # an acknowledged shape is on every replica at once (Strong reads)
                    assert _items_seen(r) >= 2 * acknowledged
                lags.append(time.monotonic() - t0)
            time.sleep(0.05)
        os.kill(indexer.proc.pid, signal.SIGKILL)
        indexer.proc.wait(30)
        assert acknowledged < SHAPES, "the job ended before the kill: make it longer"
        for r in replicas:  # the replicas go on serving what was acknowledged
            assert _items_seen(r) >= 2 * acknowledged
            assert _search(r, "points-to-images", "q.ply", ply_bytes(ds.points[1]), 3, 64)

        indexer = start_server(tmp_path / "indexer", tiny_weights, demo_npz, CMAH_ROLE="indexer",
                               CMAH_ORPHAN_GRACE_S="0", **common)
        indexer.wait_ready(600)
        deadline = time.monotonic() + 300
        while (job := _job(indexer, job_id))["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert (job["state"], job["done"], job["total"]) == ("succeeded", SHAPES, SHAPES), job

        # --- every shape once, on both replicas, as in the indexer's journal ------------------------------
        journal = MetadataDB(indexer.data_dir / DB_FILENAME, check_integrity=False)
        try:
            ids = journal.ids(0, 10_000)
            records = journal.get_many(ids)
            names = sorted((r.modality, r.name) for r in records)
            assert names == sorted((m, f"shape-{i:02d}") for i in range(SHAPES) for m in ("image", "points"))
            for r in replicas:
                assert _items_seen(r) == 2 * SHAPES
                for rec in records[::5]:
                    status, item = _json("GET", f"{r.url}/api/v1/items/{rec.id}")
                    assert status == 200 and (item["name"], item["label"], item["modality"], item["created"]) == (
                        rec.name, rec.label, rec.modality, rec.created), item
                    status, _, png = _request("GET", f"{r.url}/api/v1/items/{rec.id}/preview.png")
                    assert status == 200 and png == (indexer.data_dir / rec.preview).read_bytes()
                    if rec.modality == "points":
                        status, _, ply = _request("GET", f"{r.url}/api/v1/items/{rec.id}/points.ply")
                        assert status == 200 and ply.startswith(b"ply")

            # --- searches through both replicas against the brute-force reference -------------------------
            enc = Encoder.from_weights(tiny_weights, device="cpu")
            queries = [("image-to-points", "points", "q.png", png_bytes()),
                       ("points-to-images", "image", "q.ply", ply_bytes(ds.points[2])),
                       ("points-to-points", "points", "q.ply", ply_bytes(ds.points[3]))]
            for path, target, name, data in queries:
                codes = (enc.encode_image(read_image(data)) if name.endswith(".png")
                         else enc.encode_points(load_points(data, name=name)))
                for bits, k in ((16, 9), (64, 5)):
                    expected = brute_force(journal, target, codes[bits], bits, k)  # type: ignore[arg-type]
                    for r in replicas:
                        assert _search(r, path, name, data, k, bits) == expected, (path, bits, r.url)

            # --- delete a shape's two items: records, codes and objects go --------------------------------
            shape = [rec for rec in records if rec.name == "shape-03"]
            for rec in shape:
                assert _json("DELETE", f"{indexer.url}/api/v1/admin/items/{rec.id}", headers=_admin())[0] == 200
            import boto3

            s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=s3_server.access_key,
                              aws_secret_access_key=s3_server.secret_key, region_name="us-east-1")
            keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
            assert shape[0].preview not in keys and f"clouds/{shape[0].item_key}.npy" not in keys
            assert len(keys) == 2 * (SHAPES - 1)  # a preview and a cloud per shape, nothing twice, no orphan
            code = enc.encode_points(load_points(ply_bytes(ds.points[15]), name="q.ply"))
            expected = brute_force(journal, "points", code[64], 64, 2 * SHAPES)  # type: ignore[arg-type]
            assert {rec.id for rec in shape}.isdisjoint(i for i, _ in expected)
            for r in replicas:
                assert _json("GET", f"{r.url}/api/v1/items/{shape[0].id}")[0] == 404
                assert _search(r, "points-to-points", "q.ply", ply_bytes(ds.points[15]), 2 * SHAPES, 64) == expected
        finally:
            journal.close()

        # --- a replica with other weights refuses to start, with one line ----------------------------------
        env = {k: v for k, v in os.environ.items() if not k.startswith("CMAH_")}
        env.update(common, CMAH_ROLE="search", CMAH_WEIGHTS_DIR=str(other_weights),
                   PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        proc = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--port", "1"], env=env,
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "other weights" in proc.stderr, proc.stderr
        print(f"replica visibility after a batch is acknowledged: max {max(lags) * 1000:.0f} ms "  # noqa: T201
              f"(polled; bounded by the check itself)")
    finally:
        for server in (indexer, *replicas):
            server.stop()


@pytest.mark.parametrize("role", ["indexer", "search"])
def test_a_scale_out_role_without_its_shared_state_is_refused_in_one_line(tmp_path: Path, role: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMAH_")}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[2]), CMAH_MILVUS_URI=str(tmp_path / "lite.db"))
    proc = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--role", role, "--port", "1"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert f"--role {role}" in line and "CMAH_BACKEND=milvus" in line and "not a milvus-lite file" in line
    assert "CMAH_S3_BUCKET" in line
    assert not (tmp_path / ".cmah-data").exists()  # refused before anything was created
