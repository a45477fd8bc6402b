"""What a recipe run's weights measure and when they ship (model/release.py, ``cmah weights ship``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model.manifest import MANIFEST_FILE, SHIPPED_WEIGHTS_DIR, WEIGHTS_FILE, weights_id
from model.release import MAX_VALIDATION_DROP, legacy_record, ratios, ship_refusals
from service.cli import main

ROWS = ("grayscale", "48px", "jpeg30", "2048px", "random_view", "sketch", "depth")


def _record(mean: float, ratio: float, worst: float | None = None) -> dict[str, float]:
    rec = {"validation.mean": mean, "robustness.canonical": 1.0}
    rec.update({f"robustness.{r}": ratio for r in ROWS})
    rec.update({f"robustness.{r}.map": 0.3 for r in ROWS})
    if worst is not None:
        rec["robustness.depth"] = worst
    return rec


def test_ship_rule_by_hand():
    shipped = _record(0.54, 0.80, worst=0.40)          # mean ratio (6 * .8 + .4) / 7 = .743, worst .40
    assert ship_refusals(_record(0.535, 0.90, worst=0.85), shipped) == []            # .005 lower: ships
    assert ship_refusals(_record(0.54 - MAX_VALIDATION_DROP, 0.9), shipped) == []     # exactly .01 lower
    [why] = ship_refusals(_record(0.52, 0.95), shipped)                              # .02 lower
    assert "validation mean 0.5200 is more than 0.01 below the shipped 0.5400" in why
    [why] = ship_refusals(_record(0.60, 0.99, worst=0.39), shipped)                  # a worse worst row
    assert why.startswith("robustness is not better") and "worst 0.390 vs 0.400" in why
    [why] = ship_refusals(_record(0.60, 0.70, worst=0.70), shipped)                  # a worse mean ratio
    assert "mean ratio 0.700 vs 0.743" in why
    assert len(ship_refusals({"validation.mean": 0.6}, shipped)) == 1                # no table
    assert ratios(shipped)["depth"] == 0.40 and "canonical" not in ratios(shipped)


def test_legacy_record_reads_the_shipped_validation_figures():
    manifest = json.loads((SHIPPED_WEIGHTS_DIR / MANIFEST_FILE).read_text())
    rec = legacy_record(manifest)
    val = manifest["training"]["validation"]
    assert rec["validation.mean"] == pytest.approx(val["x_mean"], abs=5e-5)          # .5356, as documented
    assert rec["validation.p2i.64"] == round(val["map"]["p2i"]["64"], 4)


@pytest.fixture
def tiny_run(tiny_recipe_run: tuple[Path, str]) -> Path:
    """The weights of the shared straight `cmah train --recipe tiny` run (tests/conftest.py)."""
    return tiny_recipe_run[0] / "weights"


def test_recipe_run_writes_its_validation_and_robustness(tiny_run, synth_npz, tmp_path, capsys):
    record = json.loads((tiny_run / MANIFEST_FILE).read_text())["recipe"]
    assert record["holdout"] == 8 and "backbone_sha256" not in record                # tiny: no ImageNet file
    assert {f"robustness.{r}" for r in ROWS} <= record.keys() and record["robustness.canonical"] == 1.0
    assert all(not isinstance(v, dict | list) for v in record.values())              # flat
    out = tmp_path / "eval.json"                                                      # what `cmah eval` says
    assert main(["eval", "--weights", str(tiny_run), "--data", str(synth_npz), "--validation", "8",
                 "--json", str(out), "--quiet", "--timing-repeats", "1"]) == 0
    res = json.loads(out.read_text())["map"]
    for d in ("i2p", "p2i"):
        for b in (16, 32, 64):
            assert record[f"validation.{d}.{b}"] == pytest.approx(res[d][str(b)], abs=5e-5), (d, b)
    mean = sum(res[d][str(b)] for d in ("i2p", "p2i") for b in (16, 32, 64)) / 6
    assert record["validation.mean"] == pytest.approx(mean, abs=5e-5)


def _doctor(weights: Path, dest: Path, **figures: float) -> Path:
    shutil.copytree(weights, dest)
    manifest = json.loads((dest / MANIFEST_FILE).read_text())
    manifest["recipe"].update(figures)
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest))
    return dest


def test_ship_refuses_a_step_back_and_ships_a_step_forward(tiny_run, synth_npz, tmp_path, capsys):
    record = json.loads((tiny_run / MANIFEST_FILE).read_text())["recipe"]
    better = _doctor(tiny_run, tmp_path / "better", **{"validation.mean": record["validation.mean"] + 0.05})
    before = (better / MANIFEST_FILE).read_bytes()
    args = ["weights", "ship", str(tiny_run), "--data", str(synth_npz), "--quiet"]
    assert main([*args, "--to", str(better)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not shipped: validation mean" in err and "--force" in err
    assert (better / MANIFEST_FILE).read_bytes() == before                           # nothing written

    worse = _doctor(tiny_run, tmp_path / "worse", **{f"robustness.{r}": 0.01 for r in ROWS})
    old_id = weights_id(worse)
    assert main([*args, "--to", str(worse)]) == 0
    assert "shipped" in capsys.readouterr().out
    shipped = json.loads((worse / MANIFEST_FILE).read_text())["recipe"]
    assert shipped["replaces_weights_id"] == old_id and {"documented.i2p.64", "documented.mean"} <= shipped.keys()
    assert (worse / WEIGHTS_FILE).read_bytes() == (tiny_run / WEIGHTS_FILE).read_bytes()

    fresh = tmp_path / "fresh"                                                        # nothing shipped yet
    assert main([*args, "--to", str(fresh)]) == 0
    assert weights_id(fresh) == weights_id(tiny_run) and (fresh / MANIFEST_FILE).stat().st_size < 16 * 1024
    assert main(["weights", "ship", str(tmp_path / "none"), "--data", str(synth_npz), "--to", str(fresh)]) == 2
