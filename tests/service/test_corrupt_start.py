"""Start-up on damaged data: a bad FAISS snapshot is rebuilt from SQLite (WARNING naming the file, search
still exact); a bad SQLite database stops the start with a message saying what to do, never an empty index."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from svc_helpers import brute_force, free_port, http_status, ply_bytes, png_bytes, wait_ready

from index.errors import StoreCorruptError
from index.persistence import read_snapshot
from index.store import CODES_MODEL_KEY, DB_FILENAME, HashStore
from model.io import load_points, read_image
from model.weights import weights_id
from service.app import create_app

DAMAGED = ("image", "points")  # the 64-bit snapshot of both modalities is damaged


def _damage_snapshot(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00not a snapshot\xff" * 64)
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["truncated", "garbage", "missing"])
def test_damaged_snapshot_at_app_start_is_rebuilt_from_sqlite(make_settings, tmp_path, shape_points, caplog, how):
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as c:  # builds the 12-shape demo gallery, closes the store cleanly
        wait_ready(c)
    paths = [tmp_path / "snapshots" / f"{m}-64.snap" for m in DAMAGED]
    for path in paths:
        _damage_snapshot(path, how)
    with caplog.at_level(logging.WARNING), TestClient(create_app(settings)) as c:
        wait_ready(c)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        for path in paths:
            assert any(str(path) in w and "rebuilding" in w for w in warnings), warnings
        assert len(warnings) == len(paths), warnings
        st = c.app.state.cmah
        img, ply = png_bytes(), ply_bytes(shape_points[0])
        for url, data, modality, code in (
                ("/api/v1/search/image-to-points", img, "points", st.encoder.encode_image(read_image(img))[64]),
                ("/api/v1/search/points-to-images", ply, "image",
                 st.encoder.encode_points(load_points(ply, name="q.ply"))[64])):
            r = c.post(url, files={"file": ("q" + ("." + "png" if modality == "points" else ".ply"), data)},
                       params={"k": 12})
            assert r.status_code == 200, r.text
            hits = [(h["id"], h["distance"]) for h in r.json()["results"]]
            assert hits == brute_force(st.store, modality, code, 64, 12)
            assert len(hits) == 12
    for path in paths:  # rewritten at once
        assert read_snapshot(path)[0].count == 12


def _populated_db(data_dir: Path, weights: Path | None = None) -> Path:
    """800 image items of random codes, recorded as made by ``weights`` (if given: an app on them starts)."""
    rng = np.random.default_rng(0)
    with HashStore(data_dir) as store:
        for _ in range(4):
            store.add([{"modality": "image", "name": f"i{j}", "codes": {64: rng.integers(0, 256, 8, dtype=np.uint8)}}
                       for j in range(200)])
        if weights is not None:
            store.set_value(CODES_MODEL_KEY, weights_id(weights))
    return data_dir / DB_FILENAME


def _corrupt_db(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, path.stat().st_size, dtype=np.uint8)))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "text":
        path.write_text("these are my notes, not a database\n" * 50)
    elif how == "header_only":
        path.write_bytes(path.read_bytes()[:100])


CORRUPTIONS = ["garbage", "truncated", "text", "header_only"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_app_refuses_to_start_on_a_damaged_database(make_settings, tmp_path, caplog, how):
    db = _populated_db(tmp_path)
    _corrupt_db(db, how)
    before = db.read_bytes()
    app = create_app(make_settings(tmp_path))
    with caplog.at_level(logging.ERROR, logger="service"), pytest.raises(StoreCorruptError) as info, TestClient(app):
        pytest.fail("the app started on a damaged database")
    message = str(info.value)
    assert str(db) in message and "backup" in message and "empty index" in message
    assert any("cannot start" in r.getMessage() and str(db) in r.getMessage() for r in caplog.records)
    assert app.state.cmah.ready is False and app.state.cmah.status.startswith("start-up failed")
    assert db.read_bytes() == before, "the damaged database was modified"
    assert TestClient(app).get("/ready").status_code == 503


def test_cmah_serve_exits_with_one_line_on_a_damaged_database(tmp_path, tiny_weights, demo_npz):
    db = _populated_db(tmp_path / "data")
    _corrupt_db(db, "truncated")
    before = db.read_bytes()
    port = free_port()
    env = {"CMAH_WEIGHTS_DIR": str(tiny_weights), "CMAH_DEMO_DATA": str(demo_npz), "CMAH_DEVICE": "cpu",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--data-dir",
                             str(tmp_path / "data")], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        answered = []
        deadline = time.monotonic() + 600  # imports are slow on a loaded machine
        while proc.poll() is None and time.monotonic() < deadline:  # /ready never turns true
            answered.append(http_status(f"http://127.0.0.1:{port}/ready", timeout=1))
            time.sleep(0.1)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, (out, err)
    assert set(answered) <= {0}, answered
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("cmah serve: error: the index database") and str(db) in lines[0]
    assert "restore items.sqlite3 from a backup" in lines[0] and "empty index" in lines[0]
    assert db.read_bytes() == before


@pytest.fixture
def count_quick_checks(monkeypatch) -> list[str]:
    """Every ``PRAGMA quick_check`` run on a connection opened from now on (any thread)."""
    checks: list[str] = []
    connect = sqlite3.connect

    def traced_connect(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(lambda sql: checks.append(sql) if "quick_check" in sql.lower() else None)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced_connect)
    return checks


@pytest.fixture
def serve_env(monkeypatch, tmp_path, tiny_weights, demo_npz) -> Iterator[None]:
    """``cmah serve`` run in this process: settings from the environment, logger levels restored afterwards."""
    for name, value in {"CMAH_WEIGHTS_DIR": str(tiny_weights), "CMAH_DEMO_DATA": str(demo_npz), "CMAH_DEVICE": "cpu",
                        "CMAH_TORCH_THREADS": "1", "CMAH_BUILD_DEMO_GALLERY": "false",
                        "OMP_WAIT_POLICY": "PASSIVE"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no stray .env
    levels = {name: logging.getLogger(name).level for name in ("service", "index", "model")}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


class _StartStopServer:
    """Stands in for ``uvicorn.Server``: runs the app's start-up (store opened, ready) and shutdown, no socket."""

    def __init__(self, config):
        self.app = config.app
        self.started = False

    def run(self) -> None:
        with TestClient(self.app) as c:
            wait_ready(c)
            assert c.app.state.cmah.store.count() == 800
            self.started = True


def test_cmah_serve_runs_quick_check_once(tmp_path, monkeypatch, serve_env, count_quick_checks, tiny_weights):
    """The preflight of ``cmah serve`` checks the database; the store the app opens then does not check again."""
    import uvicorn

    from service import cli

    _populated_db(tmp_path / "data", tiny_weights)
    monkeypatch.setattr(uvicorn, "Server", _StartStopServer)
    assert cli.main(["serve", "--data-dir", str(tmp_path / "data"), "--port", "1"]) == 0
    assert len(count_quick_checks) == 1, count_quick_checks


def test_app_without_preflight_still_checks_the_database(make_settings, tmp_path, count_quick_checks,
                                                         tiny_weights):
    _populated_db(tmp_path, tiny_weights)
    with TestClient(create_app(make_settings(tmp_path, build_demo_gallery=False))) as c:
        wait_ready(c)
    assert len(count_quick_checks) == 1, count_quick_checks
