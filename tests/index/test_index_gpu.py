"""index.gpu: the torch popcount scan (on CPU tensors here), device selection, no torch on the CPU path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from index.codes import BITS_CHOICES
from index.flat import FaissFlatIndex
from index.gpu import FaissGpuAccelerator, TorchAccelerator, faiss_gpu_available, make_accelerator

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("bits", BITS_CHOICES)
@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_torch_scan_matches_reference(ref: SimpleNamespace, rng: np.random.Generator, bits: int, kind: str) -> None:
    torch = pytest.importorskip("torch")
    from index.gpu import torch_hamming_topk

    codes = ref.make_codes(kind, rng, 700, bits)
    queries = np.concatenate([codes[:5], ref.random_codes(rng, 5, bits)])
    rows = np.arange(700)
    for k in (1, 9, 699, 700, 800):
        for chunk in (None, 128):  # 128: several chunks merged
            d, r = torch_hamming_topk(torch.from_numpy(queries), torch.from_numpy(codes), k, chunk_rows=chunk)
            assert d.dtype == torch.int32 and r.dtype == torch.int64
            exp_d, exp_r = ref.search(queries, codes, rows, min(k, 700))
            np.testing.assert_array_equal(d.numpy(), exp_d)
            np.testing.assert_array_equal(r.numpy(), exp_r)


@pytest.mark.parametrize("bits", BITS_CHOICES)
def test_torch_accelerator_in_flat_index(ref: SimpleNamespace, rng: np.random.Generator, bits: int) -> None:
    pytest.importorskip("torch")
    codes = ref.clustered_codes(rng, 400, bits)
    ids = rng.choice(5000, size=400, replace=False).astype(np.int64)
    index = FaissFlatIndex(bits, accelerator=TorchAccelerator(device="cpu"))
    index.add(ids[:300], codes[:300])
    q = np.concatenate([codes[:4], ref.random_codes(rng, 4, bits)])
    ref.assert_same(index.search(q, 12), ref.search(q, codes[:300], ids[:300], 12))
    index.add(ids[300:], codes[300:])  # the device copy is refreshed after a change
    index.remove(ids[:50])
    for k in (1, 12, 350, 500):
        ref.assert_same(index.search(q, k), ref.search(q, codes[50:], ids[50:], k))


@pytest.mark.skipif(not faiss_gpu_available(), reason="faiss GPU support / GPU not available")
def test_faiss_gpu_accelerator(ref: SimpleNamespace, rng: np.random.Generator) -> None:  # pragma: no cover
    codes = ref.clustered_codes(rng, 2000, 64)
    index = FaissFlatIndex(64, accelerator=FaissGpuAccelerator())
    index.add(np.arange(2000), codes)
    ref.assert_same(index.search(codes[:10], 20), ref.search(codes[:10], codes, np.arange(2000), 20))


def test_device_selection() -> None:
    assert make_accelerator("cpu") is None
    with pytest.raises(ValueError):
        make_accelerator("tpu")
    available = make_accelerator("auto")
    if available is None:
        with pytest.raises(RuntimeError):
            make_accelerator("cuda")


def test_cpu_path_does_not_import_torch(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from index import HashStore
        with HashStore(sys.argv[1]) as s:
            s.add([{"modality": "image", "name": "a", "codes": {64: np.zeros(8, dtype=np.uint8)}}])
            s.search("image", np.zeros(8, dtype=np.uint8), 64, 1)
        assert "torch" not in sys.modules, "torch was imported"
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    res = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env, cwd=REPO_ROOT
    )
    assert res.returncode == 0, res.stderr
