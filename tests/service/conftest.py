"""Fixtures of the service tests: a small demo gallery, settings on tiny weights, a running app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from svc_helpers import ADMIN_TOKEN, ServerProcess, start_server, wait_ready

from model.dataset import load_dataset, save_dataset
from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="session")
def demo_npz(tmp_path_factory: pytest.TempPathFactory, synth_npz: Path) -> Path:
    """A 12-shape gallery (every 8th synthetic shape: several classes)."""
    ds = load_dataset(synth_npz)
    idx = np.arange(0, len(ds), 8)[:12]
    path = tmp_path_factory.mktemp("demo") / "demo.npz"
    save_dataset(path, ds.points[idx], ds.labels[idx], ds.names[idx], ds.classes)
    return path


@pytest.fixture(scope="session")
def make_settings(tiny_weights: Path, demo_npz: Path) -> Callable[..., Settings]:
    def make(data_dir: Path, **overrides: object) -> Settings:
        values: dict = dict(data_dir=data_dir, weights_dir=tiny_weights, device="cpu", demo_data=demo_npz,
                            admin_token=ADMIN_TOKEN, torch_threads=1, max_wait_ms=2, max_upload_bytes=256 * 1024,
                            max_pixels=1_000_000, job_batch_size=8)
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path_factory.mktemp("svc")))
    with TestClient(app) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="session")
def shape_points(synth_npz: Path) -> np.ndarray:
    """A few clouds [4, 1024, 3] not in the demo gallery."""
    return load_dataset(synth_npz).points[[1, 2, 9, 17]]


#: Body timeouts of :func:`live_server` (short, so that the tests of them are quick).
LIVE_BODY_TIMEOUT_S = 2.0
LIVE_BODY_TOTAL_TIMEOUT_S = 30.0  # above the time a loaded machine takes to receive 32 MiB


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path, demo_npz: Path
                ) -> Iterator[ServerProcess]:
    """A real ``cmah serve`` process: tiny weights, no demo gallery, the default 32 MiB upload limit, DEBUG logs
    (uvicorn's access log included) in ``live_server.log_path``, short body timeouts."""
    server = start_server(tmp_path_factory.mktemp("live"), tiny_weights, demo_npz, CMAH_LOG_LEVEL="DEBUG",
                          CMAH_BUILD_DEMO_GALLERY="false", CMAH_BODY_TIMEOUT_S=str(LIVE_BODY_TIMEOUT_S),
                          CMAH_BODY_TOTAL_TIMEOUT_S=str(LIVE_BODY_TOTAL_TIMEOUT_S))
    try:
        server.wait_ready(900)  # a loaded 2-core machine can take minutes
        yield server
    finally:
        server.stop()
