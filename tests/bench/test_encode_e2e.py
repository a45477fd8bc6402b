"""bench/encode.py end to end (upload bytes -> codes) at batch 1, with a baseline weights directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_e2e_rows_for_weights_and_baseline(tiny_weights: Path, other_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "encode.json"
    cmd = [sys.executable, "bench/encode.py", "--weights", str(tiny_weights), "--baseline-weights", str(other_weights),
           "--skip-model", "--skip-engine", "--devices", "cpu", "--cpu-parallel", "chunks", "--threads", "1",
           "--n", "2", "--warmup", "1", "--json", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert f"| `{tiny_weights}` | prep | `{other_weights}` | prep | `{other_weights}` ÷ `{tiny_weights}` |" in r.stdout
    res = json.loads(out.read_text())
    assert [w["weights"] for w in res["meta"]["baselines"]] == [str(other_weights)]
    rows = res["e2e"]
    assert {r["input"] for r in rows} == {"PNG 512 px", "JPEG 512 px (q 90)", "binary PLY"}, rows
    for row in rows:
        assert row["device"] == "cpu (chunks)" and row["mode"] == "chunks", row
        assert [w["weights"] for w in row["weights"]] == [str(tiny_weights), str(other_weights)], row
        for w in row["weights"]:
            assert w["mean_ms"] > 0 and w["p50_ms"] > 0 and w["p90_ms"] >= w["p50_ms"], w
            assert 0 < w["prep_mean_ms"] < w["mean_ms"] and w["ratio"] > 0, w
        assert row["weights"][0]["ratio"] == 1.0
        assert f"| {row['device']} | {row['input']} | " in r.stdout
