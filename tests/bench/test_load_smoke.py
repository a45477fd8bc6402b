"""bench/load.py with a bulk job, run for a few seconds against a real server on tiny weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.dataset import load_dataset, save_dataset

ROOT = Path(__file__).resolve().parents[2]
SEARCHES = ("image-to-points", "points-to-images", "image-to-images", "points-to-points")


def _subset(src: Path, dest: Path, idx: np.ndarray) -> Path:
    ds = load_dataset(src)
    save_dataset(dest, ds.points[idx], ds.labels[idx], ds.names[idx], ds.classes)
    return dest


@pytest.mark.slow
def test_load_under_a_bulk_job(tiny_weights: Path, synth_npz: Path, tmp_path: Path) -> None:
    gallery = _subset(synth_npz, tmp_path / "gallery.npz", np.arange(0, 96, 8))  # 12 shapes, several classes
    job = _subset(synth_npz, tmp_path / "job.npz", np.arange(1, 96, 12))  # 8 shapes per job
    out = tmp_path / "load.json"
    cmd = [sys.executable, "bench/load.py", "--weights", str(tiny_weights), "--clients", "4", "--seconds", "5",
           "--queries", "2", "--bulk-job", str(job), "--job-poll", "0.2", "--json", str(out),
           "--ready-timeout", "600", "--request-timeout", "60",
           "--server-env", "CMAH_TORCH_THREADS=1", "CMAH_MAX_WAIT_MS=2", "CMAH_JOB_BATCH_SIZE=4",
           f"CMAH_DEMO_DATA={gallery}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert "**Bulk job**" in r.stdout and "| `POST admin/jobs` |" in r.stdout, r.stdout
    res = json.loads(out.read_text())
    assert res["errors"] == 0 and res["messages"] == [], res
    assert all(res["routes"][route]["requests"] > 0 for route in SEARCHES), res["routes"]
    bulk = res["bulk"]
    assert bulk["submitted"] >= 1 and bulk["failed"] == 0 and bulk["file_errors"] == 0, bulk
    assert bulk["shapes"] >= 1 and bulk["items_added"] >= 2, bulk  # each shape: a point item and an image item
    assert bulk["rss_check"].startswith("pass"), bulk
