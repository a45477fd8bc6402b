"""Dataset format loader (clear errors on anything else), the documented split, point augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.augment import PointAugment
from model.dataset import DatasetError, load_dataset, make_split, save_dataset


def _write(path, **over):
    arrays = dict(points=np.random.default_rng(0).normal(size=(5, 64, 3)).astype(np.float16),
                  labels=np.array([0, 1, 0, 1, 1], np.uint8), names=np.array([f"s{i}" for i in range(5)]),
                  classes=np.array(["a", "b"]))
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def test_round_trip(tmp_path):
    ds = load_dataset(_write(tmp_path / "ok.npz"))
    assert ds.points.dtype == np.float32 and ds.points.shape == (5, 64, 3) and len(ds) == 5
    assert ds.labels.dtype == np.int64 and list(ds.classes) == ["a", "b"] and len(ds.sha256) == 64
    save_dataset(tmp_path / "again.npz", ds.points, ds.labels, ds.names, ds.classes)
    again = load_dataset(tmp_path / "again.npz")
    assert np.allclose(again.points, ds.points, atol=1e-3) and np.array_equal(again.labels, ds.labels)


def test_save_writes_exactly_the_named_file_or_nothing(tmp_path):
    ds = load_dataset(_write(tmp_path / "ok.npz"))
    save_dataset(tmp_path / "plain.data", ds.points, ds.labels, ds.names, ds.classes)   # no ".npz" added
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.npz", "plain.data"]
    assert np.array_equal(load_dataset(tmp_path / "plain.data").labels, ds.labels)
    with pytest.raises(DatasetError, match="no such directory"):
        save_dataset(tmp_path / "missing" / "x.npz", ds.points, ds.labels, ds.names, ds.classes)

    class Unwritable:                        # fails while the archive is being written
        def __array__(self, *args, **kwargs):
            raise RuntimeError("boom")

    before = (tmp_path / "plain.data").read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        save_dataset(tmp_path / "plain.data", ds.points[:2], ds.labels[:2], Unwritable(), ds.classes)
    assert (tmp_path / "plain.data").read_bytes() == before          # the good file is not replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.npz", "plain.data"]   # no temporary left


@pytest.mark.parametrize("over,message", [
    (dict(points=None), "missing array"),
    (dict(points=np.zeros((5, 64), np.float32)), "shape"),
    (dict(points=np.zeros((5, 64, 3), np.int32)), "floating point"),
    (dict(points=np.full((5, 64, 3), np.nan, np.float32)), "NaN"),
    (dict(labels=np.array([0, 1, 0], np.uint8)), "'labels'"),
    (dict(labels=np.array([0, 1, 0, 1, 7], np.uint8)), r"\[0, 2\)"),
    (dict(names=np.arange(5)), "'names'"),
    (dict(classes=np.array([], dtype=str)), "'classes'"),
    (dict(points=np.zeros((0, 64, 3), np.float32), labels=np.zeros(0, np.uint8), names=np.array([], str)),
     "empty"),
])
def test_bad_files_are_refused_with_a_named_problem(tmp_path, over, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset(_write(tmp_path / "bad.npz", **over))


def test_not_an_npz(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DatasetError, match="not a readable"):
        load_dataset(tmp_path / "x.npz")
    np.save(tmp_path / "arr.npy", np.zeros((2, 3)))
    with pytest.raises(DatasetError, match="single .npy"):
        load_dataset(tmp_path / "arr.npy")
    with pytest.raises(DatasetError, match="no such"):
        load_dataset(tmp_path / "missing.npz")


def test_split_sizes_match_the_documented_protocol():
    s = make_split(9843)
    assert len(s.query) == 1600 and len(s.retrieval) == 8243 and len(s.train) == 8243
    assert not set(s.query) & set(s.retrieval)
    assert sorted(np.concatenate([s.query, s.retrieval]).tolist()) == list(range(9843))
    assert set(s.train) <= set(s.retrieval)
    # seeded and stable, in permutation (not class-sorted) order
    again = make_split(9843)
    assert np.array_equal(s.query, again.query) and np.array_equal(s.retrieval, again.retrieval)
    assert not np.all(np.diff(s.retrieval) > 0)
    small = make_split(9843, n_train=5000)
    assert len(small.train) == 5000 and set(small.train) <= set(s.retrieval)


def test_split_scales_to_small_files():
    s = make_split(96)
    assert len(s.query) == round(96 * 1600 / 9843) and len(s.query) + len(s.retrieval) == 96
    with pytest.raises(DatasetError):
        make_split(1)


def test_augmentation_keeps_shape_unit_sphere_and_up_axis():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(4, 256, 3)
    pts = pts / pts.norm(dim=-1).amax(1)[:, None, None]
    out = PointAugment(scale_range=(1.0, 1.0), jitter_sigma=0.0, max_dropout=0.0)(pts, g)
    assert out.shape == pts.shape
    assert torch.allclose(out.norm(dim=-1).amax(1), torch.ones(4), atol=1e-5)
    # rotation about z (no scale/jitter/dropout): z coordinates keep their order, radii in xy kept
    centred = pts - pts.mean(1, keepdim=True)
    centred = centred / centred.norm(dim=-1).amax(1)[:, None, None]
    assert torch.allclose(out[..., 2], centred[..., 2], atol=1e-5)
    assert torch.allclose(out[..., :2].norm(dim=-1), centred[..., :2].norm(dim=-1), atol=1e-5)
    assert not torch.allclose(out[..., 0], centred[..., 0], atol=1e-3)
    full = PointAugment()(pts, g)
    assert full.shape == pts.shape and torch.isfinite(full).all()
    assert torch.allclose(full.mean(1), torch.zeros(4, 3), atol=1e-5)
    unrotated = PointAugment(rotate_z=False, scale_range=(1.0, 1.0), jitter_sigma=0.0, max_dropout=0.0)(pts, g)
    assert torch.allclose(unrotated, centred, atol=1e-5)
