"""``cmah index``: add datasets, 3D files, pictures and folders; info; reencode after the weights changed.
The stored codes are compared with the encoder's own codes of the same inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index.store import CODES_MODEL_KEY, HashStore
from model.dataset import load_dataset
from model.encode import Encoder
from model.io import load_points, write_ply
from model.weights import weights_id
from service.cli import main


@pytest.fixture
def files(tmp_path: Path, synth_npz: Path) -> Path:
    """A folder: two PLY files, a picture, a text file that is no 3D file, and a nested folder."""
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    pts = load_dataset(synth_npz).points
    write_ply(d / "a.ply", pts[0])
    write_ply(d / "sub" / "b.ply", pts[13])
    Image.fromarray(np.full((30, 50, 3), 90, np.uint8)).save(d / "sub" / "photo.png")
    (d / "notes.md").write_text("not indexed")
    return d


def _run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["index", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_add_info_and_codes_equal_the_encoder(tmp_path, files, synth_npz, tiny_weights, capsys):
    dd = tmp_path / "data"
    rc, out, _ = _run(capsys, "add", str(files), str(synth_npz), "--data-dir", str(dd), "--weights",
                      str(tiny_weights), "--label", "mine", "--quiet")
    n_synth = len(load_dataset(synth_npz))
    assert rc == 0, out
    assert f"added {n_synth + 2} shape(s)" in out and "1 picture(s)" in out and "1 file(s) of other types" in out
    enc = Encoder.from_weights(tiny_weights, device="cpu")
    with HashStore(dd) as s:
        assert s.count() == 2 * (n_synth + 2) + 1
        assert s.source_counts() == {"cli": 5, synth_npz.name: 2 * n_synth}
        assert s.get_value(CODES_MODEL_KEY) == weights_id(tiny_weights)
        recs = {(r.modality, r.name): r for r in s.get_many(s.item_ids(0, 10_000))}
    want = enc.encode_points(load_points(files / "sub" / "b.ply"))
    got = recs[("points", "b.ply")]
    assert got.label == "mine" and all(np.array_equal(got.codes[b], want[b]) for b in (16, 32, 64))
    photo = enc.encode_image(Image.open(files / "sub" / "photo.png"))
    assert all(np.array_equal(recs[("image", "photo.png")].codes[b], photo[b]) for b in (16, 32, 64))

    rc, out, _ = _run(capsys, "info", "--data-dir", str(dd), "--weights", str(tiny_weights))
    assert rc == 0 and f"items: {2 * (n_synth + 2) + 1} ({n_synth + 3} image, {n_synth + 2} points)" in out
    assert "made by these weights" in out


def test_bad_inputs_exit_2_with_one_line(tmp_path, files, tiny_weights, capsys):
    dd = tmp_path / "data"
    base = ["--data-dir", str(dd), "--weights", str(tiny_weights), "--quiet"]
    for path, msg in ((tmp_path / "missing.ply", "no such file or folder"),
                      (files / "notes.md", "not a dataset .npz, a 3D file or a picture")):
        rc, out, err = _run(capsys, "add", str(path), *base)
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    assert not (dd / "items.sqlite3").exists()                  # refused before the store was made
    broken = files / "broken.ply"
    broken.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 5\nproperty float x\nend_header\n1\n")
    rc, out, err = _run(capsys, "add", str(files), *base)           # the good files are added, the bad named
    assert rc == 2 and "1 file(s) could not be read" in out and "broken.ply" in out
    with HashStore(dd) as s:
        assert s.count() == 5
    rc, _, err = _run(capsys, "info", "--data-dir", str(tmp_path / "nothing"))
    assert rc == 2 and "no index here" in err


def test_reencode_after_new_weights(tmp_path, files, tiny_weights, other_weights, capsys):
    dd = tmp_path / "data"
    assert _run(capsys, "add", str(files), "--data-dir", str(dd), "--weights", str(tiny_weights), "--quiet")[0] == 0
    new = ["--data-dir", str(dd), "--weights", str(other_weights)]
    rc, _, err = _run(capsys, "add", str(files / "a.ply"), *new, "--quiet")
    assert rc == 2 and "other weights" in err and f"cmah index reencode --data-dir {dd} --weights" in err
    rc, out, _ = _run(capsys, "info", *new)
    assert rc == 0 and "NOT usable with these weights" in out
    rc, out, _ = _run(capsys, "reencode", *new, "--quiet")
    assert rc == 0 and "re-encoded 5 items" in out
    enc = Encoder.from_weights(other_weights, device="cpu")
    with HashStore(dd) as s:
        rec = next(r for r in s.get_many(s.item_ids()) if r.name == "a.ply" and r.modality == "points")
        want = enc.encode_points(load_points(files / "a.ply"))
        assert all(np.array_equal(rec.codes[b], want[b]) for b in (16, 32, 64))
    rc, out, _ = _run(capsys, "reencode", *new)
    assert rc == 0 and "nothing to do" in out
    assert _run(capsys, "add", str(files / "a.ply"), *new, "--quiet")[0] == 0

    # a store whose clouds are gone: points items are refused, then deleted on request (the image items of
    # the clouds are re-encoded from their preview renders); --assume-current records only
    shutil.rmtree(dd / "clouds")
    (dd / "clouds").mkdir()
    old = ["--data-dir", str(dd), "--weights", str(tiny_weights)]
    rc, _, err = _run(capsys, "reencode", *old, "--quiet")
    assert rc == 2 and "--drop-missing" in err
    rc, out, _ = _run(capsys, "reencode", *old, "--assume-current")
    assert rc == 0 and "nothing re-encoded" in out
    with HashStore(dd) as s:
        assert s.get_value(CODES_MODEL_KEY) == weights_id(tiny_weights)
    rc, out, _ = _run(capsys, "reencode", *new, "--drop-missing", "--quiet")
    assert rc == 0 and "re-encoded 4 items" in out and "deleted 3 without a stored cloud" in out
    with HashStore(dd) as s:
        assert sorted((r.modality, r.name) for r in s.get_many(s.item_ids())) == [
            ("image", "a.ply"), ("image", "a.ply"), ("image", "b.ply"), ("image", "photo.png")]
