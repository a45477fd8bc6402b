"""``cmah weights average`` and model.checkpoints.average_weights: checkpoint averaging of inference weights
(how the shipped weights were made)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.checkpoints import average_weights
from model.cmah import HashEncoder
from model.config import CPU
from model.weights import WEIGHTS_FILE, WeightsError, load_weights, save_weights, weights_id
from service.cli import main


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):
    """``cmah weights average ARGS``: (exit status, stdout, stderr)."""
    def _run(*args: str) -> tuple[int, str, str]:
        rc = main(["weights", "average", *args])
        out, err = capsys.readouterr()
        return rc, out, err
    return _run


def test_mean_matches_a_direct_reference(run, tiny_weights: Path, other_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "avg"
    rc, stdout, err = run(str(tiny_weights), str(other_weights), "--out", str(out), "--weights", "0.25", "0.75")
    assert rc == 0, err
    assert stdout == f"averaged 2 weights directories into {out}\n"
    a, b = load_file(str(tiny_weights / WEIGHTS_FILE)), load_file(str(other_weights / WEIGHTS_FILE))
    got = load_file(str(out / WEIGHTS_FILE))
    assert set(got) == set(a)
    n_float = 0
    for k, v in got.items():
        if v.is_floating_point():
            ref = (0.25 * a[k].float() + 0.75 * b[k].float()).half()
            assert (v == ref).all(), k
            n_float += int((a[k] != b[k]).any())
        else:
            assert (v == a[k]).all(), k
    assert n_float > 10                            # the two inputs really differ
    load_weights(out)                              # sha256 and config verified
    rec = json.loads((out / "manifest.json").read_text())["weight_average"]["inputs"]
    assert [i["weights_id"] for i in rec] == [weights_id(tiny_weights), weights_id(other_weights)]
    assert [i["coefficient"] for i in rec] == [0.25, 0.75]


def test_equal_default_and_self_average_is_identity(tiny_weights: Path, tmp_path: Path) -> None:
    out = average_weights([tiny_weights, tiny_weights], tmp_path / "same")
    a, got = load_file(str(tiny_weights / WEIGHTS_FILE)), load_file(str(out / WEIGHTS_FILE))
    assert all((got[k] == a[k]).all() for k in a)


def test_bad_inputs_exit_2_and_write_nothing(run, tiny_weights: Path, tmp_path: Path) -> None:
    cpu_dir = save_weights(HashEncoder(CPU), tmp_path / "cpu")
    cases = {
        "differs": [str(tiny_weights), str(cpu_dir)],
        "at least two": [str(tiny_weights)],
        "coefficients for": [str(tiny_weights), str(tiny_weights), "--weights", "1"],
        "sum to 1": [str(tiny_weights), str(tiny_weights), "--weights", "0.7", "0.7"],
        "manifest": [str(tiny_weights), str(tmp_path / "missing")],
    }
    for i, (msg, args) in enumerate(cases.items()):
        out = tmp_path / f"out{i}"
        rc, _, err = run(*args, "--out", str(out))
        assert rc == 2, (msg, err)
        assert msg in err and len(err.strip().splitlines()) == 1 and err.startswith("cmah weights: error: "), msg
        assert not out.exists(), msg
    rc, _, err = run(str(tiny_weights), str(tmp_path / "cpu"), "--out", str(tmp_path / "cpu"))
    assert rc == 2 and "one of the inputs" in err


def test_library_error_type(tiny_weights: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="at least two"):
        average_weights([tiny_weights], tmp_path / "x")


def test_slim_refuses_a_missing_file_and_a_foreign_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``cmah checkpoint slim`` (a slim copy is made and used in tests/scripts/test_device_run.py)."""
    out = tmp_path / "slim.pt"
    assert main(["checkpoint", "slim", str(tmp_path / "missing.pt"), str(out)]) == 2
    assert capsys.readouterr().err == f"cmah checkpoint: error: {tmp_path / 'missing.pt'}: no such file\n"
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    assert main(["checkpoint", "slim", str(foreign), str(out)]) == 2
    err = capsys.readouterr().err
    assert "not a cmah training checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
