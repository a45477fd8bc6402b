"""The dynamic batcher: own answers and own errors per caller, real batches under concurrency."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from svc_helpers import ply_bytes, png_bytes

from model.encode import Encoder
from service.engine import EngineStopped, InferenceEngine, QueueFull


@pytest.fixture(scope="module")
def encoder(tiny_weights: Path) -> Encoder:
    return Encoder.from_weights(tiny_weights, device="cpu")


def _clouds(encoder: Encoder, n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        p = torch.randn(encoder.num_points, 3, generator=g) * torch.rand(3, generator=g)
        out.append(p / p.norm(dim=-1).max())
    return out


def _single(encoder: Encoder, t: torch.Tensor) -> dict[int, np.ndarray]:
    return {b: c[0] for b, c in encoder.encode_point_tensors(t[None]).items()}


def test_concurrent_callers_get_their_own_codes_in_one_batch(encoder):
    sizes: list[int] = []
    engine = InferenceEngine(encoder, max_batch=16, max_wait_ms=200, on_batch=lambda kind, n: sizes.append(n))
    engine.start()
    try:
        clouds = _clouds(encoder, 6)
        futures = [engine.submit("points", t) for t in clouds]
        for t, f in zip(clouds, futures, strict=True):
            got = f.result(timeout=10)
            want = _single(encoder, t)
            assert all(np.array_equal(got[b], want[b]) for b in want)
        assert engine.largest_batch == 6 and sizes == [6]
    finally:
        engine.stop()


def test_one_bad_item_fails_alone(encoder):
    engine = InferenceEngine(encoder, max_batch=16, max_wait_ms=200)
    engine.start()
    try:
        clouds = _clouds(encoder, 4)
        bad = torch.zeros(encoder.num_points, 2)  # wrong shape: stacking / the model fails on it
        futures = [engine.submit("points", t) for t in clouds[:2]]
        bad_future = engine.submit("points", bad)
        futures += [engine.submit("points", t) for t in clouds[2:]]
        with pytest.raises(RuntimeError, match="could not encode"):
            bad_future.result(timeout=10)
        for t, f in zip(clouds, futures, strict=True):
            assert np.array_equal(f.result(timeout=10)[64], _single(encoder, t)[64])
    finally:
        engine.stop()


def test_kinds_are_batched_separately(encoder):
    engine = InferenceEngine(encoder, max_batch=8, max_wait_ms=100)
    engine.start()
    try:
        img = torch.rand(3, encoder.image_size, encoder.image_size)
        fi = engine.submit("image", img)
        fp = engine.submit("points", _clouds(encoder, 1)[0])
        want = encoder.encode_image_tensors(img[None])[64][0]
        assert np.array_equal(fi.result(timeout=10)[64], want)
        assert fp.result(timeout=10)[64].shape == (8,)
        assert engine.batches == 2
    finally:
        engine.stop()


def test_queue_is_bounded_and_stop_fails_waiters(encoder):
    engine = InferenceEngine(encoder, max_batch=100, max_pending=2, max_wait_ms=5000)
    with pytest.raises(EngineStopped):
        engine.submit("points", _clouds(encoder, 1)[0])
    engine.start(warm_up=False)
    clouds = _clouds(encoder, 3)
    futures = [engine.submit("points", t) for t in clouds[:2]]
    with pytest.raises(QueueFull):
        engine.submit("points", clouds[2])
    engine.stop()
    for f in futures:  # answered by the final batch or failed by the shutdown, never left hanging
        assert f.done()


def test_http_concurrency_batches_and_answers_each_caller(client, shape_points):
    """Concurrent HTTP searches share model calls; each caller gets its own answer (or its own error)."""
    st = client.app.state.cmah
    url = "/api/v1/search/points-to-images"
    bodies = [ply_bytes(p) for p in shape_points] * 2
    expected = [client.post(url, files={"file": ("q.ply", b)}, params={"k": 3}).json()["results"] for b in bodies]
    bad = b"ply\nformat ascii 1.0\nelement vertex 5\n"  # truncated header
    before, wait = st.engine.largest_batch, st.engine.max_wait
    st.engine.largest_batch, st.engine.max_wait = 0, 0.2  # a generous window on a busy machine

    def call(body: bytes):
        return client.post(url, files={"file": ("q.ply", body)}, params={"k": 3})

    try:
        with concurrent.futures.ThreadPoolExecutor(len(bodies) + 1) as pool:
            results = list(pool.map(call, [*bodies, bad]))
    finally:
        st.engine.max_wait = wait
    for r, want in zip(results, expected, strict=False):
        assert r.status_code == 200 and r.json()["results"] == want
    assert results[-1].status_code == 400 and results[-1].json()["error"] in ("truncated", "garbage")
    assert st.engine.largest_batch > 1, "no request was batched with another"
    st.engine.largest_batch = max(before, st.engine.largest_batch)
    text = client.get("/metrics").text

    def metric(prefix: str) -> float:
        return float(next(ln for ln in text.splitlines() if ln.startswith(prefix)).split()[-1])

    singles = metric('cmah_inference_batch_size_bucket{kind="points",le="1.0"}')
    assert singles < metric('cmah_inference_batch_size_count{kind="points"}')  # some batches were larger than 1


def test_image_and_points_requests_mixed(client, shape_points):
    def call(i: int):
        if i % 2:
            return client.post("/api/v1/search/image-to-images", files={"file": ("q.png", png_bytes())})
        return client.post("/api/v1/search/points-to-points", files={"file": ("q.ply", ply_bytes(shape_points[0]))})

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(6)))
    assert all(r.status_code == 200 for r in results)
    assert len({str(r.json()["results"]) for r in results}) == 2


def test_idle_engine_encodes_in_the_callers_thread(encoder):
    """An announced request that finds the engine idle is encoded at once, in its caller's thread; with
    another request announced (or one queued) it is not, and goes through the queue."""
    engine = InferenceEngine(encoder, max_batch=8, max_wait_ms=5000)
    engine.start(warm_up=False)
    try:
        cloud = _clouds(encoder, 1)[0]
        with engine.arriving("points"):
            got = engine.encode_if_idle("points", cloud)
        assert got is not None and all(np.array_equal(got[b], c) for b, c in _single(encoder, cloud).items())
        assert engine.batches == 1 and engine.pending == 0
        with engine.arriving("image"), engine.arriving("points"):
            assert engine.encode_if_idle("points", cloud) is None
        with pytest.raises(ValueError, match="kind"):
            engine.encode_if_idle("text", cloud)
    finally:
        engine.stop()
    assert engine.encode_if_idle("points", cloud) is None  # stopped: submit() says so


def test_announced_requests_wait_only_for_announced_company(encoder):
    """A batch of announced requests leaves as soon as no other is being prepared (not after max_wait), and
    waits for one that is."""
    sizes: list[int] = []
    engine = InferenceEngine(encoder, max_batch=8, max_wait_ms=5000, on_batch=lambda kind, n: sizes.append(n))
    engine.start(warm_up=False)
    try:
        a, b = _clouds(encoder, 2)
        t0 = time.monotonic()
        with engine.arriving("points"):
            pass
        engine.submit("points", a, announced=True).result(timeout=4)  # alone: no 5 s wait
        assert sizes == [1]
        with engine.arriving("points"):  # b is being prepared while a waits for company
            with engine.arriving("points"):
                pass
            fa = engine.submit("points", a, announced=True)
            time.sleep(0.2)
            assert not fa.done()
            fb = engine.submit("points", b, announced=True)
        fa.result(timeout=4), fb.result(timeout=4)
        assert sizes == [1, 2] and time.monotonic() - t0 < 4
    finally:
        engine.stop()
