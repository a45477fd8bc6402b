"""The `cmah` console script: subcommands, the bad-file contract (exit 2, one line, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.dataset import load_dataset
from model.encode import Encoder
from model.io import write_ply
from service.cli import main

CMAH = [sys.executable, "-m", "service.cli"]


def test_help_lists_the_subcommands():
    out = subprocess.run([*CMAH, "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("train", "refit-heads", "eval", "encode", "render", "serve", "synth", "index", "weights", "checkpoint",
                "data"):
        assert cmd in out


@pytest.fixture(scope="module")
def ply_file(tmp_path_factory, synth_npz) -> Path:
    path = tmp_path_factory.mktemp("files") / "shape.ply"
    write_ply(path, load_dataset(synth_npz).points[0])
    return path


def test_encode_points_and_image_print_hex(ply_file, tiny_weights, tmp_path, capsys):
    for bits in (16, 32, 64):
        assert main(["encode", str(ply_file), "--bits", str(bits), "--weights", str(tiny_weights)]) == 0
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert len(last) == bits // 4 and int(last, 16) >= 0
    img = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(img)
    assert main(["encode", str(img), "--weights", str(tiny_weights)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "image" in out[0] and len(out[-1]) == 16


def test_encode_is_deterministic(ply_file, tiny_weights, capsys):
    main(["encode", str(ply_file), "--weights", str(tiny_weights)])
    a = capsys.readouterr().out.strip().splitlines()[-1]
    main(["encode", str(ply_file), "--weights", str(tiny_weights)])
    assert capsys.readouterr().out.strip().splitlines()[-1] == a


BAD_FILES = [
    (b"", "empty.ply"),
    (b"ply\nformat ascii 1.0\nelement vertex 100\nproperty float x\nproperty float y\nproperty float z\n"
     b"end_header\n1 2 3\n", "short.ply"),
    (b"\x00\x01garbage" * 50, "junk.xyz"),
    (b"OFF\n4 0 0\n0 0 0\n1 1 1\nnan 0 0\n1 0 1\n", "nan.off"),
]


@pytest.mark.parametrize("content,name", BAD_FILES)
def test_bad_3d_file_exits_2_with_one_line(tmp_path, tiny_weights, content, name, capsys):
    path = tmp_path / name
    path.write_bytes(content)
    for args in (["encode", str(path), "--weights", str(tiny_weights)], ["render", str(path), "-o",
                                                                         str(tmp_path / "o.png")]):
        assert main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and name in lines[0]
    assert not (tmp_path / "o.png").exists()


def test_console_script_bad_file_has_no_traceback(tmp_path, tiny_weights):
    path = tmp_path / "short.ply"
    path.write_bytes(BAD_FILES[1][0])
    proc = subprocess.run([*CMAH, "encode", str(path), "--weights", str(tiny_weights)], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "short.ply" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_file_and_bad_dataset_exit_2(tmp_path, tiny_weights, capsys):
    assert main(["encode", str(tmp_path / "nope.ply"), "--weights", str(tiny_weights)]) == 2
    assert "nope.ply" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, points=np.zeros((2, 3)))
    assert main(["eval", "--weights", str(tiny_weights), "--data", str(bad)]) == 2
    assert "bad.npz" in capsys.readouterr().err
    assert main(["encode", str(tmp_path / "x.ply"), "--weights", str(tmp_path)]) == 2


def test_render_writes_png(ply_file, tmp_path):
    out = tmp_path / "r.png"
    assert main(["render", str(ply_file), "-o", str(out), "--size", "64"]) == 0
    assert Image.open(out).size == (64, 64)
    out2 = tmp_path / "r2.png"
    assert main(["render", str(ply_file), "-o", str(out2), "--size", "64", "--view", "120,10"]) == 0
    assert not np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(out2)))


def test_synth_writes_a_loadable_dataset(tmp_path):
    out = tmp_path / "s.npz"
    assert main(["synth", "-o", str(out), "--per-class", "2"]) == 0
    ds = load_dataset(out)
    assert len(ds) == 2 * len(ds.classes)


def test_synth_into_a_missing_folder_names_it(tmp_path, capsys):
    assert main(["synth", "-o", str(tmp_path / "nope" / "s.npz"), "--per-class", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nope'}: no such directory" in err and len(err.strip().splitlines()) == 1


def test_train_cli_tiny_run(synth_npz, tmp_path, capsys):
    rc = main(["train", "--data", str(synth_npz), "--config", "tiny", "--out", str(tmp_path / "run"),
               "--max-steps", "2", "--batch-size", "8", "--quiet", "--device", "cpu"])
    assert rc == 0
    assert (tmp_path / "run" / "weights" / "manifest.json").is_file()
    assert main(["train", "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "r2")]) == 2


def test_train_cli_one_code_length(synth_npz, tmp_path, capsys):
    """--bits trains the hash layers of the given lengths only (the paper's one model per length)."""
    run = tmp_path / "run16"
    assert main(["train", "--data", str(synth_npz), "--config", "tiny", "--out", str(run), "--bits", "16",
                 "--max-steps", "1", "--batch-size", "8", "--quiet", "--device", "cpu"]) == 0
    manifest = json.loads((run / "weights" / "manifest.json").read_text())
    assert manifest["config"]["bits"] == [16]
    enc = Encoder.from_weights(run / "weights", device="cpu")
    codes = enc.encode_point_tensors(enc.points_tensor(load_dataset(synth_npz).points[:2]))
    assert enc.bits == (16,) and set(codes) == {16} and codes[16].shape == (2, 2)
    capsys.readouterr()
    assert main(["eval", "--weights", str(run / "weights"), "--data", str(synth_npz), "--bits", "32",
                 "--quiet"]) == 2
    assert "no [32]-bit head" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["serve"], ["index", "info"]])
def test_a_bad_setting_is_one_line_naming_the_variable(command, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CMAH_BACKEND", "gpu")
    monkeypatch.setenv("CMAH_MAX_BATCH", "0")
    monkeypatch.chdir(tmp_path)                        # no .env of the checkout
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "CMAH_BACKEND='gpu'" in err and "CMAH_MAX_BATCH='0'" in err
