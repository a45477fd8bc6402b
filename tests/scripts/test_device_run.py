"""The GPU-session tooling that can be checked without a GPU: scripts/gpu/device_run.sh's refusals, and that
the code paths it runs (cmah train / eval / refit-heads / checkpoint slim / data restore, bench/search_gpu.py)
import nothing the GPU machine lacks (scripts/gpu/device_sim makes FAISS, pydantic, FastAPI... unimportable).
The whole pipeline's CPU dry run (``bash scripts/gpu/device_run.sh --dry-run all``) takes a minute or more
and is run by hand (docs/development.md, "Using a GPU session")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _device_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", CMAH_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "scripts" / "gpu" / "device_sim"), str(ROOT)])
    return env


def _py(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env or _device_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_device_sim_blocks_the_service_packages() -> None:
    r = _py("-c", "import faiss")
    assert r.returncode != 0 and "not installed on the GPU machine" in r.stderr
    r = _py("-m", "service.cli", "index", "info")
    assert r.returncode == 2
    assert "cmah index needs the package" in r.stderr and "Traceback" not in r.stderr


def test_encode_paths_import_without_faiss() -> None:
    """model/ imports index.codes: that must not pull in the store (FAISS) with the package."""
    r = _py("-c", "import model.encode, model.cuda_graphs, index.exact; from index import pack_signs")
    assert r.returncode == 0, r.stderr


def test_train_slim_init_and_eval_without_service_packages(synth_npz: Path, tiny_weights: Path,
                                                           tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ["--data", str(synth_npz), "--config", "tiny", "--device", "cpu", "--batch-size", "4",
              "--max-steps", "1", "--quiet"]
    r = _py("-m", "service.cli", "train", *common, "--out", str(run), "--resume", "--time-limit-min", "5",
            "--time-budget-min", "5")
    assert r.returncode == 0, r.stderr
    slim = tmp_path / "slim.pt"
    r = _py("-m", "service.cli", "checkpoint", "slim", str(run / "checkpoint.pt"), str(slim))
    assert r.returncode == 0, r.stderr
    ck = torch.load(slim, weights_only=False)
    assert "optimizer" not in ck and all(v.dtype != torch.float32 for v in ck["model"].values())
    r = _py("-m", "service.cli", "train", *common, "--out", str(tmp_path / "run2"), "--init-from", str(slim))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "eval.json"
    r = _py("-m", "service.cli", "eval", "--weights", str(tiny_weights), "--data", str(synth_npz), "--bits", "16",
            "--timing-repeats", "1", "--device", "cpu", "--quiet", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "16" in json.loads(out.read_text())["map"]["i2p"]


def test_data_restore_without_service_packages(synth_npz: Path, tmp_path: Path) -> None:
    """device_run.sh restores the carried dataset with ``cmah data restore``."""
    q8, restored = tmp_path / "q8.npz", tmp_path / "restored.npz"
    r = _py("-m", "service.cli", "data", "quantize", str(synth_npz), str(q8))
    assert r.returncode == 0, r.stderr
    r = _py("-m", "service.cli", "data", "restore", str(q8), str(restored), "--no-compress", "--check", str(synth_npz))
    assert r.returncode == 0, r.stderr
    assert "labels/names/classes equal" in r.stdout


def test_search_gpu_bench_runs_without_faiss(tmp_path: Path) -> None:
    out = tmp_path / "search.json"
    r = _py("bench/search_gpu.py", "--device", "cpu", "--n", "3000", "--bits", "16", "64", "--batches", "1", "4",
            "--seconds", "0.05", "--copy-mib", "4", "--json", str(out))
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and all(row["scan_qps"] > 0 for row in rows)
    assert "exactness checked against numpy" in r.stdout


@pytest.mark.parametrize(("args", "env", "message"), [
    ([], {"OUT": "{tmp}"}, "no JOB given"),
    (["bogus"], {"OUT": "{tmp}"}, "unknown JOB 'bogus'"),
    (["all"], {}, "OUT is not set"),
])
def test_device_run_refuses_bad_arguments(tmp_path: Path, args: list[str], env: dict[str, str],
                                          message: str) -> None:
    environ = {k: v for k, v in os.environ.items() if k != "OUT"}
    environ.update({k: v.format(tmp=tmp_path) for k, v in env.items()})
    r = subprocess.run(["bash", "scripts/gpu/device_run.sh", *args], cwd=ROOT, env=environ, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_run_needs_cuda_outside_the_dry_run(tmp_path: Path) -> None:
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    r = subprocess.run(["bash", "scripts/gpu/device_run.sh", "bench"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2
    log = (tmp_path / "out" / "device_run.log").read_text()
    assert "torch sees no CUDA device" in log and "exit status 2" in log
