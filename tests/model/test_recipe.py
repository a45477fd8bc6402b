"""Training recipes (model/recipe.py, ``cmah train --recipe``): the format's checks, step-based training,
weight averaging, and a resumed recipe run that ends with the same weights as a straight one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.config import TINY
from model.recipe import (
    RECIPES_DIR,
    RESOLVED_FILE,
    STAGE_DONE_FILE,
    RecipeError,
    average_snapshots,
    load_recipe,
    run_recipe,
)
from model.train import CHECKPOINT_FILE, SNAPSHOT_DIR, TrainConfig, Trainer, lr_at_step
from model.weights import MANIFEST_FILE, WEIGHTS_FILE
from service.cli import main

BASE = """
[model]
preset = "tiny"

[[stage]]
name = "a"
kind = "train"
steps = 4
"""


def _write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_recipes_load():
    assert {p.stem for p in RECIPES_DIR.glob("*.toml")} >= {"tiny", "cpu", "gpu"}
    tiny = load_recipe("tiny")
    assert tiny.model == TINY and tiny.path == RECIPES_DIR / "tiny.toml" and len(tiny.sha256) == 64
    assert [s.kind for s in tiny.stages] == ["train", "train", "average"]
    pretrain, main_stage, _ = tiny.stages
    assert not pretrain.loss.cl_full and pretrain.loss.reconstruction            # [defaults] then the stage
    assert pretrain.train.batch_size == main_stage.train.batch_size == 16 and main_stage.train.seed == 1
    for name in ("cpu", "gpu"):
        recipe = load_recipe(name)
        assert recipe.model.name == "mobile" and recipe.stages[-1].kind == "average"
        assert all(s.train.image_styles for s in recipe.stages if s.kind == "train")
    assert load_recipe(RECIPES_DIR / "tiny.toml").sha256 == tiny.sha256      # by path too


@pytest.mark.parametrize("edit,message", [
    (("steps = 4", "steps = 4\nlrr = 1e-3"), "stage 1 ('a'): unknown key 'lrr' (did you mean 'lr'?)"),
    (("steps = 4", 'steps = "4"'), "stage 1 ('a'): steps: expected int, got a string '4'"),
    (("steps = 4", "steps = 0"), "stage 1 ('a'): steps: must be >= 1, got 0"),
    (("steps = 4", "batch_size = 8"), "stage 1 ('a'): missing required key 'steps'"),
    (('kind = "train"', 'kind = "finetune"'), "stage 1 ('a'): kind: unknown stage kind 'finetune'"),
    (('name = "a"\n', ""), "stage 1: missing required key 'name'"),
    (("steps = 4", "steps = 4\nlr = true"), "stage 1 ('a'): lr: expected float, got a boolean"),
    (("steps = 4", "steps = 4\nepochs = 3"), "stage 1 ('a'): unknown key 'epochs'"),
    (("steps = 4", "steps = 4\ntime_budget_min = 3.0"), "stage 1 ('a'): unknown key 'time_budget_min'"),
    (("steps = 4", "steps = 4\nwarmup_steps = 4"), "warmup_steps: must be < steps (4), got 4"),
    (("steps = 4", "steps = 4\nreconstruction = false"), "fusion: needs reconstruction = true"),
    (("steps = 4", "steps = 4\nneighbours = 2"), "neighbours needs neighbour_refresh_steps"),
    (('preset = "tiny"', ""), "[model]: missing required key 'preset'"),
    (('preset = "tiny"', 'preset = "huge"'), "[model]: preset: unknown model config 'huge'"),
    (('preset = "tiny"', 'preset = "tiny"\nbits = [16, 48]'), "[model]: bits: each must be one of [16, 32, 64]"),
    (('preset = "tiny"', 'preset = "tiny"\nimage = { image_size = 32.5 }'),
     "[model.image]: image_size: expected int, got a number 32.5"),
    (('preset = "tiny"', 'preset = "tiny"\n[defaults]\nbatch = 8'), "[defaults]: unknown key 'batch'"),
    (("[[stage]]", "[[stages]]"), "unknown key 'stages' (did you mean 'stage'?)"),
    (("steps = 4", "steps = 4\n[[stage]]\nname = 'a'\nkind = 'train'\nsteps = 2"), "stage names must differ"),
    (("steps = 4", "steps = 4\n[[stage]]\nname = 'avg'\nkind = 'average'\nlast = 1"),
     "stage 2 ('avg'): kind: 'average' needs a previous train stage with snapshot_every > 0"),
    (("steps = 4", "steps = 4\nsnapshot_every = 2\n[[stage]]\nname = 'avg'\nkind = 'average'\nlast = 3"),
     "stage 2 ('avg'): last: must lie in [1, 2]"),
    (("steps = 4", "steps = 4\nsnapshot_every = 2\n[[stage]]\nname = 'avg'\nkind = 'average'"),
     "stage 2 ('avg'): missing required key 'last'"),
    (("[model]", "[model"), "not a valid TOML file"),
])
def test_bad_recipes_name_file_stage_and_key(tmp_path, edit, message):
    assert BASE.count(edit[0]) == 1
    path = _write(tmp_path, BASE.replace(*edit))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_recipe_errors_are_one_line_exit_2(synth_npz, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        (["--recipe", str(_write(tmp_path, BASE.replace("steps = 4", "steps = -1"), "neg.toml"))],
         "steps: must be >= 1"),
        (["--recipe", str(_write(tmp_path, BASE.replace("train", "swim"), "kind.toml"))], "unknown stage kind"),
        (["--recipe", "no-such-recipe"], "no such recipe file or shipped recipe (shipped: cpu, gpu, tiny"),
        (["--recipe", "tiny", "--batch-size", "64", "--seed", "0"],
         "--recipe sets the model and training settings: drop --batch-size, --seed (or --recipe)"),
        (["--recipe", "tiny", "--config", "tiny"], "drop --config"),
    ]
    for argv, message in cases:
        assert main(["train", "--data", str(synth_npz), "--out", str(out), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("cmah train: error: ") and message in err and err.count("\n") == 1, err
    assert main(["train", "--recipe", "tiny", "--out", str(out)]) == 2                 # no data anywhere
    assert "--data is required" in capsys.readouterr().err
    assert not out.exists()


def test_step_based_run_ends_at_exactly_steps(synth_npz, tmp_path):
    """steps=7 with 5 steps an epoch: warm-up and cosine over steps, the last step at min_lr."""
    tc = TrainConfig(batch_size=16, steps=7, warmup_steps=2, lr=1e-3, min_lr=1e-5, log_every=1)
    tr = Trainer(TINY, tc, synth_npz, tmp_path, show_progress=False)
    assert tr.steps_per_epoch() == 5
    summary = tr.run()
    assert summary["steps"] == 7 and summary["stopped"] == "completed" and summary["epochs_done"] == 1
    lrs = [row["lr"] for row in summary["history"]]
    assert lrs == [lr_at_step(s, tc) for s in range(7)]
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    with pytest.raises(ValueError, match="time budget"):
        Trainer(TINY, TrainConfig(steps=5, time_budget_min=1.0), synth_npz, tmp_path / "b", show_progress=False)


def test_average_snapshots_is_the_mean(tmp_path):
    states = [{"w": torch.tensor([1.0, 2.0]) * k, "n": torch.tensor(k)} for k in (1, 2, 6)]
    paths = []
    for i, state in enumerate(states):
        paths.append(tmp_path / f"{i}.pt")
        torch.save({"model": state}, paths[-1])
    mean = average_snapshots(paths)
    assert torch.equal(mean["w"], torch.tensor([3.0, 6.0])) and int(mean["n"]) == 6   # counters: the last's


def test_init_from_another_objective_takes_the_shared_modules(synth_npz, tmp_path):
    """A stage may switch losses: a model without decoders (CL only) seeds a full one, decoders fresh."""
    cl_only = TINY.with_loss(cl_masked=False, reconstruction=False, fusion=False)
    Trainer(cl_only, TrainConfig(batch_size=16, max_steps=1), synth_npz, tmp_path / "a", show_progress=False).run()
    src = torch.load(tmp_path / "a" / CHECKPOINT_FILE, weights_only=False)["model"]
    tc = TrainConfig(batch_size=16, init_from=str(tmp_path / "a" / CHECKPOINT_FILE))
    tr = Trainer(TINY, tc, synth_npz, tmp_path / "b", show_progress=False)
    state = tr.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in src.items())
    assert any(k.startswith("image_decoder.") for k in state) and not any(k.startswith("image_decoder.") for k in src)


@pytest.mark.slow
def test_resumed_recipe_equals_a_straight_run(synth_npz, tiny_recipe_run, tmp_path, capsys):
    """`cmah train --recipe tiny` end to end; stopped inside the neighbour stage (after its first graph,
    before the second) and resumed, it ends with exactly the weights of an uninterrupted run."""
    (a, printed), b = tiny_recipe_run, tmp_path / "b"
    base = ["train", "--recipe", "tiny", "--data", str(synth_npz), "--quiet"]
    assert "completed: recipe tiny, 3 stages, 24 steps" in printed
    assert main([*base, "--out", str(b), "--max-steps", "18"]) == 0        # 8 of pretrain + 10 of main
    assert "max_steps: 18 steps of recipe tiny" in capsys.readouterr().out
    assert (b / "1-pretrain" / STAGE_DONE_FILE).is_file() and not (b / "2-main" / STAGE_DONE_FILE).exists()
    assert not (b / "weights").exists()
    assert main([*base, "--out", str(b)]) == 2                              # a run there already
    assert "--resume" in capsys.readouterr().err
    assert main([*base, "--out", str(b), "--resume"]) == 0
    for stage in ("1-pretrain", "2-main", "3-average"):
        sa = torch.load(a / stage / CHECKPOINT_FILE, weights_only=False)["model"]
        sb = torch.load(b / stage / CHECKPOINT_FILE, weights_only=False)["model"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), stage
    wa, wb = load_file(str(a / "weights" / WEIGHTS_FILE)), load_file(str(b / "weights" / WEIGHTS_FILE))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert sorted(p.name for p in (a / "2-main" / SNAPSHOT_DIR).iterdir()) == \
        [f"step-{s:08d}.pt" for s in (4, 8, 12, 16)]
    assert json.loads((b / "3-average" / STAGE_DONE_FILE).read_text())["averaged_steps"] == [8, 12, 16]
    resolved = json.loads((a / RESOLVED_FILE).read_text())
    assert resolved["sha256"] == load_recipe("tiny").sha256 and resolved["data"]["sha256"]
    assert resolved["stages"][1]["neighbour_refresh_steps"] == 12 and resolved["stages"][1]["lr"] == 1e-3
    record = json.loads((b / "weights" / MANIFEST_FILE).read_text())["recipe"]
    assert record["name"] == "tiny" and record["sha256"] == resolved["sha256"]
    assert record["steps.2-main"] == 16 and record["data_sha256"] == resolved["data"]["sha256"]
    assert {"wall_s.1-pretrain", "device", "cpu", "torch"} <= record.keys()
    assert all(not isinstance(v, dict | list) for v in record.values())    # flat


def test_resume_refuses_another_recipe(synth_npz, tmp_path):
    path = _write(tmp_path, BASE.replace("steps = 4", "steps = 2\nbatch_size = 16"))
    out = tmp_path / "out"
    run = run_recipe(load_recipe(path), synth_npz, out, show_progress=False)
    assert run.stopped == "completed" and run.steps == 2 and (run.weights / WEIGHTS_FILE).is_file()
    assert run_recipe(load_recipe(path), synth_npz, out, resume=True, show_progress=False).steps == 2  # all done
    path.write_text(path.read_text().replace("steps = 2", "steps = 3"))
    with pytest.raises(RecipeError, match="another recipe or data"):
        run_recipe(load_recipe(path), synth_npz, out, resume=True, show_progress=False)


def test_recipe_data_path_and_default_out(synth_npz, tmp_path, monkeypatch, capsys):
    """A recipe may name its data file (--data overrides it); --out defaults to runs/NAME."""
    text = BASE.replace("[model]", f'name = "mini"\n[data]\npath = "{synth_npz}"\n[model]')
    path = _write(tmp_path, text.replace("steps = 4", "steps = 1\nbatch_size = 16"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--recipe", str(path), "--quiet"]) == 0
    assert "weights in runs/mini/weights" in capsys.readouterr().out
    resolved = json.loads((tmp_path / "runs" / "mini" / RESOLVED_FILE).read_text())
    assert resolved["data"]["path"] == str(synth_npz) and resolved["recipe"] == "mini"
    assert main(["train", "--recipe", str(path), "--data", str(tmp_path / "none.npz")]) == 2
    assert "none.npz: no such dataset file" in capsys.readouterr().err
