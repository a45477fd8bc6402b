"""CUDA-graph replay (model/cuda_graphs.py): eager fallback everywhere it must not graph, and on a GPU the
replayed encoder gives the eager encoder's codes for fresh inputs of every graphed shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.cmah import HashEncoder
from model.config import TINY
from model.cuda_graphs import ENV_SWITCH, GraphedCall, graphs_enabled
from model.encode import Encoder

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def graphs_on(monkeypatch):
    monkeypatch.setenv(ENV_SWITCH, "1")


def test_cpu_calls_run_eagerly_and_capture_nothing(graphs_on):
    calls = []

    def fn(x):
        calls.append(x.shape)
        return {16: x * 2}

    g = GraphedCall(fn)
    x = torch.arange(6.0).reshape(2, 3)
    with torch.no_grad():
        out = g(x)
    assert torch.equal(out[16], x * 2)
    assert calls == [x.shape] and g.num_graphs == 0 and not g.usable(x)


@pytest.mark.parametrize("value, enabled", [(None, False), ("", False), ("0", False), ("off", False),
                                            ("1", True), ("true", True), (" ON ", True)])
def test_env_switch_is_off_by_default(monkeypatch, value, enabled):
    if value is None:
        monkeypatch.delenv(ENV_SWITCH, raising=False)
    else:
        monkeypatch.setenv(ENV_SWITCH, value)
    assert graphs_enabled() is enabled


def _encoders(device: str) -> tuple[Encoder, Encoder]:
    torch.manual_seed(0)
    model = HashEncoder(TINY)
    return Encoder(model, device), Encoder(model, device)


@cuda
def test_replayed_encoder_matches_eager_on_fresh_inputs(monkeypatch, graphs_on):
    graphed, eager = _encoders("cuda")
    rng = np.random.default_rng(0)
    for batch in (1, 3, 1, 8, 3):                     # repeated shapes replay; new inputs each time
        pts = torch.from_numpy(rng.normal(size=(batch, TINY.points.num_points, 3)).astype(np.float32))
        pts /= pts.norm(dim=-1).amax(dim=1)[:, None, None]
        imgs = torch.from_numpy(rng.random((batch, 3, TINY.image.image_size, TINY.image.image_size),
                                           dtype=np.float32))
        got_p, got_i = graphed.encode_point_tensors(pts), graphed.encode_image_tensors(imgs)
        monkeypatch.setenv(ENV_SWITCH, "0")
        want_p, want_i = eager.encode_point_tensors(pts), eager.encode_image_tensors(imgs)
        monkeypatch.setenv(ENV_SWITCH, "1")
        for b in TINY.bits:
            np.testing.assert_array_equal(got_p[b], want_p[b])
            np.testing.assert_array_equal(got_i[b], want_i[b])
    assert not graphed._point_call.failed and not graphed._image_call.failed
    assert graphed._point_call.num_graphs == 3 and graphed._image_call.num_graphs == 3   # batch 1, 3, 8


@cuda
def test_outputs_survive_the_next_replay(graphs_on):
    g = GraphedCall(lambda x: {16: x + 1})
    with torch.no_grad():
        a = g(torch.zeros(1, 4, device="cuda"))
        b = g(torch.ones(1, 4, device="cuda"))
    assert a[16].sum().item() == 4 and b[16].sum().item() == 8 and g.num_graphs == 1


@cuda
def test_off_by_default_on_a_gpu(monkeypatch):
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    g = GraphedCall(lambda x: x * 2)
    with torch.no_grad():
        g(torch.zeros(1, 4, device="cuda"))
    assert g.num_graphs == 0


@cuda
def test_large_batches_and_autograd_run_eagerly(graphs_on):
    g = GraphedCall(lambda x: x * 2, max_batch=2)
    with torch.no_grad():
        g(torch.zeros(3, 4, device="cuda"))
    g(torch.zeros(1, 4, device="cuda"))               # grad enabled
    assert g.num_graphs == 0


@cuda
def test_a_failed_capture_falls_back_for_good(graphs_on):
    def syncs(x):
        return x * float(x.sum().item())              # a host sync: not capturable

    g = GraphedCall(syncs)
    x = torch.ones(1, 4, device="cuda")
    with torch.no_grad():
        out = g(x)
        again = g(x)
    assert torch.equal(out, x * 4) and torch.equal(again, x * 4)
    assert g.failed and g.num_graphs == 0
