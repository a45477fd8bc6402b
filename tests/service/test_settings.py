"""Settings from CMAH_* variables, and run_server (the entry point of `cmah serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from service.settings import DEMO_DATA, Settings


def test_defaults(monkeypatch):
    for var in ("CMAH_DATA_DIR", "CMAH_ADMIN_TOKEN", "CMAH_MAX_BATCH"):
        monkeypatch.delenv(var, raising=False)
    s = Settings(_env_file=None)
    assert s.data_dir == Path(".cmah-data") and s.weights_dir is None and s.device == "auto"
    assert s.max_upload_bytes == 32 * 1024 * 1024 and s.admin_token is None and s.backend == "faiss"
    assert (s.max_batch, s.max_wait_ms, s.max_pending) == (32, 5.0, 256)
    assert s.build_demo_gallery is True and s.demo_data == DEMO_DATA and s.cors_origins == []
    assert s.scan == "auto"


def test_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CMAH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CMAH_ADMIN_TOKEN", "zq-secret-77")
    monkeypatch.setenv("CMAH_MAX_BATCH", "8")
    monkeypatch.setenv("CMAH_CORS_ORIGINS", '["http://localhost:3000"]')
    monkeypatch.setenv("CMAH_BUILD_DEMO_GALLERY", "false")
    s = Settings(_env_file=None)
    assert s.data_dir == tmp_path and s.admin_token.get_secret_value() == "zq-secret-77" and s.max_batch == 8
    assert s.cors_origins == ["http://localhost:3000"] and s.build_demo_gallery is False
    assert "zq-secret-77" not in repr(s)


def test_scan_setting(monkeypatch):
    from index.flat import SCAN_CHOICES

    assert get_args(Settings.model_fields["scan"].annotation) == SCAN_CHOICES  # the store's choices, no more
    for choice in SCAN_CHOICES:
        monkeypatch.setenv("CMAH_SCAN", choice)
        assert Settings(_env_file=None).scan == choice
    monkeypatch.setenv("CMAH_SCAN", "gpu")
    with pytest.raises(ValidationError, match=r"(?s)scan.*Input should be 'auto', 'numba' or 'faiss'"):
        Settings(_env_file=None)


def test_every_setting_is_in_the_docs_table():
    table = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    assert [f for f in Settings.model_fields if f"| `CMAH_{f.upper()}` |" not in table] == []


def test_app_store_uses_the_scan_setting(monkeypatch, tmp_path, make_settings):
    """CMAH_SCAN=faiss reaches every flat index of the app's store: none of them even looks for the kernel
    (with "auto" each one would, and would compile it in the background)."""
    from fastapi.testclient import TestClient
    from svc_helpers import wait_ready

    import index.flat
    from index.codes import BITS_CHOICES
    from index.records import MODALITIES
    from service.app import create_app

    looked_up = []
    monkeypatch.setattr(index.flat, "load_scan_kernel", lambda: looked_up.append(1))  # returns None: FAISS
    app = create_app(make_settings(tmp_path / "d", scan="faiss", build_demo_gallery=False))
    with TestClient(app) as client:
        wait_ready(client)
        store = app.state.cmah.store
        assert all(store.backend.flat_index(m, b).scan == "faiss" for m in MODALITIES for b in BITS_CHOICES)
    assert looked_up == []


@pytest.mark.parametrize(("mode", "workers", "torch_threads"), [("chunks", 2, 1), ("intra-op", 1, 2)])
def test_app_uses_the_cpu_parallel_setting(tmp_path, make_settings, mode, workers, torch_threads):
    """CMAH_CPU_PARALLEL: "chunks" splits model calls over CMAH_TORCH_THREADS workers with one torch thread
    each; "intra-op" gives torch the threads."""
    import concurrent.futures

    import torch
    from fastapi.testclient import TestClient
    from svc_helpers import wait_ready

    from service.app import create_app

    before = torch.get_num_threads()
    try:
        app = create_app(make_settings(tmp_path / "d", torch_threads=2, cpu_parallel=mode, build_demo_gallery=False))
        with TestClient(app) as client:
            wait_ready(client)
            assert app.state.cmah.encoder.workers == workers
            # torch's thread count is per thread (OpenMP): a new thread, as the engine's, gets the app's
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                assert pool.submit(torch.get_num_threads).result() == torch_threads
    finally:
        torch.set_num_threads(before)


def test_run_server_passes_host_port_and_data_dir(monkeypatch, tmp_path, tiny_weights):
    import uvicorn

    from service.app import run_server

    seen = {}

    def fake_run(self, sockets=None):
        seen.update(app=self.config.app, host=self.config.host, port=self.config.port)
        self.started = True

    monkeypatch.setenv("CMAH_WEIGHTS_DIR", str(tiny_weights))
    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    assert run_server(host="0.0.0.0", port=8123, data_dir=str(tmp_path / "d")) == 0
    assert (seen["host"], seen["port"]) == ("0.0.0.0", 8123)
    assert seen["app"].state.cmah.settings.data_dir == tmp_path / "d"


def test_run_server_refuses_missing_weights(monkeypatch, tmp_path):
    from model.weights import WeightsError
    from service.app import run_server

    monkeypatch.setenv("CMAH_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsError, match="manifest"):
        run_server(data_dir=str(tmp_path / "d"))
