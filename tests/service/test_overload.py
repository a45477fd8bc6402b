"""A full inference queue: searches answer 503 ``overloaded`` with ``Retry-After``, the queue never grows past
``CMAH_MAX_PENDING``, and the service recovers once the model is free again (real engine, real queue)."""

from __future__ import annotations

import concurrent.futures
import time

from fastapi.testclient import TestClient
from svc_helpers import png_bytes, wait_ready

from service.app import create_app

IMG = "/api/v1/search/image-to-images"
MAX_PENDING = 2
CALLERS = 10


def test_full_queue_is_503_with_retry_after_then_recovers(make_settings, tmp_path):
    settings = make_settings(tmp_path, max_pending=MAX_PENDING, max_batch=1, build_demo_gallery=False)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        engine = c.app.state.cmah.engine
        body = png_bytes()

        def call(_: int):
            return c.post(IMG, files={"file": ("q.png", body)})

        most_pending = 0
        engine.model_lock.acquire()  # the model is busy: the worker blocks on its first batch
        with concurrent.futures.ThreadPoolExecutor(CALLERS) as pool:
            try:  # the lock is released before the pool waits for its callers, even when an assertion fails
                futures = [pool.submit(call, i) for i in range(CALLERS)]
                deadline = time.monotonic() + 120
                while sum(f.done() for f in futures) < CALLERS - MAX_PENDING - 1 and time.monotonic() < deadline:
                    most_pending = max(most_pending, engine.pending)
                    time.sleep(0.01)
                most_pending = max(most_pending, engine.pending)
                early = [f.result() for f in futures if f.done()]
                assert engine.pending == MAX_PENDING, f"{engine.pending} requests queued, {len(early)} answered"
                assert c.get("/metrics").text.count(f"cmah_inference_queue_depth {float(MAX_PENDING)}") == 1
            finally:
                engine.model_lock.release()
            answers = [f.result(timeout=120) for f in futures]
        assert most_pending <= MAX_PENDING
        assert early and all(r.status_code == 503 for r in early)
        overloaded = [r for r in answers if r.status_code == 503]
        ok = [r for r in answers if r.status_code == 200]
        assert len(ok) + len(overloaded) == CALLERS and 2 <= len(ok) <= MAX_PENDING + 1
        for r in overloaded:
            assert r.json()["error"] == "overloaded" and r.headers["retry-after"] == "1"
        assert c.post(IMG, files={"file": ("q.png", body)}).status_code == 200  # recovered
        assert engine.pending == 0
