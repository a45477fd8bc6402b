"""``cmah data quantize`` / ``restore``: the uint8 copy carried to the GPU machine, and its restore."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import model.quantize as qd
from model.dataset import DatasetError, load_dataset, save_dataset
from model.synthetic import write_synthetic
from service.cli import main


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):
    """``cmah data ARGS``: (exit status, stdout, stderr)."""
    def _run(*args: str) -> tuple[int, str, str]:
        rc = main(["data", *args])
        out, err = capsys.readouterr()
        return rc, out, err
    return _run


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("q8") / "synth.npz"
    write_synthetic(path, n_per_class=6, seed=3)
    return path


def test_round_trip_error_bound_and_loader(run, synth: Path, tmp_path: Path) -> None:
    q8, restored = tmp_path / "synth_q8.npz", tmp_path / "restored.npz"
    rc, out, err = run("quantize", str(synth), str(q8))
    assert rc == 0, err
    assert "max abs error after restore" in out
    with np.load(q8) as z:
        assert "points" not in z.files and z["points_axes_uint8"].dtype == np.uint8
        assert float(z["max_abs_error"]) <= 0.004
    with pytest.raises(DatasetError, match="missing array"):   # the loader refuses the quantised file itself
        load_dataset(q8)

    rc, out, err = run("restore", str(q8), str(restored), "--check", str(synth))
    assert rc == 0, out + err
    assert "labels/names/classes equal" in out
    orig, rest = load_dataset(synth), load_dataset(restored)   # the loader accepts the restored file
    with np.load(restored) as z:
        assert z["points"].dtype == np.float16
    err = np.abs(orig.points.astype(np.float64) - rest.points.astype(np.float64)).max()
    assert err <= 0.004
    assert np.array_equal(orig.labels, rest.labels) and np.array_equal(orig.names, rest.names)
    assert np.array_equal(orig.classes, rest.classes)
    assert q8.stat().st_size < 0.75 * synth.stat().st_size

    rc, _, err = run("restore", str(q8), str(tmp_path / "plain.npz"), "--no-compress")
    assert rc == 0, err
    assert np.array_equal(load_dataset(tmp_path / "plain.npz").points, rest.points)


def test_unit_sphere_levels_are_exact_in_float16() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, size=(5, 300, 3)).astype(np.float16)
    pts[0, 0] = [-1.0, 1.0, 0.0]                       # the extremes
    q, scale, offset = qd.quantize_points(pts)
    assert q.shape == (3, 5, 300) and scale == 2 ** -7
    back64 = offset + scale * q.astype(np.float64)
    back = qd.dequantize_points(q, scale, offset)
    assert back.dtype == np.float16
    assert np.array_equal(back.astype(np.float64), back64.transpose(1, 2, 0))   # no float16 rounding
    assert np.abs(back.astype(np.float64) - pts.astype(np.float64)).max() <= 2 ** -8


def test_refuses_when_the_error_bound_is_exceeded(run, tmp_path: Path) -> None:
    src = tmp_path / "big.npz"
    pts = np.random.default_rng(1).uniform(-3, 3, size=(4, 64, 3))    # not in the unit sphere: coarser steps
    save_dataset(src, pts, np.zeros(4, dtype=np.int64), [f"s{i}" for i in range(4)], ["a"])
    rc, _, err = run("quantize", str(src), str(tmp_path / "q.npz"))
    assert rc == 2 and "exceeds --max-error" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q.npz").exists()
    rc, _, err = run("quantize", str(src), str(tmp_path / "q.npz"), "--max-error", "0.02")
    assert rc == 0, err


def test_restore_refuses_a_plain_dataset(run, synth: Path, tmp_path: Path) -> None:
    rc, _, err = run("restore", str(synth), str(tmp_path / "x.npz"))
    assert rc == 2 and "not a quantised dataset" in err


def test_restore_check_against_another_file_exits_1(run, synth: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.npz"
    write_synthetic(other, n_per_class=6, seed=4)                     # same shape, other points
    q8, restored = tmp_path / "q8.npz", tmp_path / "restored.npz"
    assert run("quantize", str(synth), str(q8))[0] == 0
    rc, out, _ = run("restore", str(q8), str(restored), "--check", str(other))
    assert rc == 1 and f"measured against {other}" in out
