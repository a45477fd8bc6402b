"""Robustness evaluation (model.robustness, model.eval_styles) and `cmah eval --robustness` on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from model.dataset import load_dataset
from model.encode import Encoder
from model.eval_styles import STYLES, dilate, erode, render_depth, render_sketch
from model.evaluate import evaluate, load_eval_data
from model.robustness import (
    LARGE_SIZE,
    PERTURBATIONS,
    QueryBatch,
    downsize,
    format_robustness_table,
    jpeg_round_trip,
    robustness,
    seeded_random_views,
    to_grayscale,
)
from model.synthetic import make_synthetic
from service.cli import main


def _picture(size: int = 64) -> Image.Image:
    """A colourful test picture: a red disc and a blue bar on a gradient."""
    y, x = np.mgrid[:size, :size]
    arr = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    arr[(x - size // 3) ** 2 + (y - size // 3) ** 2 < (size // 5) ** 2] = (220, 30, 30)
    arr[size // 2:size // 2 + 6, 4:-4] = (20, 40, 200)
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def clouds() -> torch.Tensor:
    return torch.from_numpy(make_synthetic(n_per_class=1, n_points=512, seed=0).points[:4])


def test_grayscale_has_equal_channels():
    out = np.asarray(to_grayscale(_picture()))
    assert out.shape == (64, 64, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_downsize_gives_48px():
    out = downsize(_picture(112))
    assert out.size == (48, 48) and out.mode == "RGB"


def test_jpeg_changes_pixels_but_not_size():
    img = _picture()
    out = jpeg_round_trip(img)
    assert out.size == img.size and out.mode == "RGB"
    diff = np.abs(np.asarray(out, np.int16) - np.asarray(img, np.int16))
    assert diff.max() > 0 and diff.mean() < 20


@pytest.mark.parametrize("radius", [1, 2, 3, 8, 13])
def test_dilate_and_erode_match_max_pooling(radius):
    x = torch.rand(2, 1, 40, 37, generator=torch.Generator().manual_seed(radius))
    k = 2 * radius + 1
    assert torch.equal(dilate(x, radius), torch.nn.functional.max_pool2d(x, k, stride=1, padding=radius))
    zero_pad = torch.nn.functional.pad(x, (radius,) * 4, value=0.0)
    assert torch.equal(erode(x, radius), -torch.nn.functional.max_pool2d(-zero_pad, k, stride=1))


@pytest.mark.parametrize("style", sorted(STYLES))
def test_styles_are_deterministic_sized_and_drawn(style, clouds):
    a = STYLES[style](clouds, [5, 6, 7, 8], size=96)
    b = STYLES[style](clouds, [5, 6, 7, 8], size=96)
    assert a.shape == (4, 3, 96, 96)
    assert torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert (a.flatten(1).std(1) > 0.02).all()                        # not blank


def test_sketch_draws_ink_where_the_shape_is():
    # a flat square facing the style camera's direction: ink inside, paper far from it
    g = torch.linspace(-0.5, 0.5, 40)
    yy, zz = torch.meshgrid(g, g, indexing="ij")
    square = torch.stack([torch.zeros_like(yy), yy, zz], -1).view(1, -1, 3)
    img = render_sketch(square, [0], size=112)[0].mean(0)              # [S, S] brightness
    dark = img < 0.6
    rows, cols = torch.nonzero(dark, as_tuple=True)
    assert dark.any() and not dark[:10].any() and not dark[:, :10].any()
    box = img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert float(box.mean()) < float(img[:10].mean())                # darker inside than the paper
    depth = render_depth(square, size=112)[0].mean(0)
    assert float(depth[dark].mean()) > 0.3 and float(depth[:10].max()) == 0.0


def test_sketch_seeds_are_per_image(clouds):
    both = render_sketch(clouds[:2], [1, 2])
    alone = render_sketch(clouds[1:2], [2])
    assert torch.equal(both[1:], alone)
    assert not torch.equal(render_sketch(clouds[:1], [1]), render_sketch(clouds[:1], [3]))


def test_random_views_do_not_depend_on_batching():
    v = seeded_random_views([10, 11, 12])
    one = seeded_random_views([11])
    assert v.azim.shape == (3,) and v.color.shape == (3, 3)
    assert torch.equal(v.azim[1:2], one.azim) and torch.equal(v.bg_top[1:2], one.bg_top)


def test_every_perturbation_returns_one_rgb_picture_per_query(clouds):
    size = 32
    canon = [_picture(size) for _ in clouds]
    q = QueryBatch(clouds, np.arange(len(clouds)), canon, seed=0)
    for name, fn in PERTURBATIONS.items():
        imgs = list(fn(q))
        assert len(imgs) == len(clouds), name
        assert all(im.mode == "RGB" for im in imgs), name
    assert list(PERTURBATIONS["2048px"](q))[0].size == (LARGE_SIZE, LARGE_SIZE)
    assert list(PERTURBATIONS["random_view"](q))[0].size == (size, size)


@pytest.fixture(scope="module")
def tiny(synth_npz, tiny_weights):
    enc = Encoder.from_weights(tiny_weights, "cpu")
    return enc, load_eval_data(synth_npz)


def test_canonical_row_matches_evaluate(tiny):
    enc, data = tiny
    ref = evaluate(enc, data, bits=[64], topk=40, timing_repeats=1, progress=False)["map"]["i2p"]["64"]
    res = robustness(enc, data, bits=64, topk=40, progress=False, names=["grayscale", "sketch"])
    assert list(res["rows"]) == ["canonical", "grayscale", "sketch"]
    assert res["canonical_float_map"] == pytest.approx(ref, abs=1e-12)  # the exact evaluate path
    assert res["rows"]["canonical"]["map"] == pytest.approx(ref, abs=0.02)  # 8-bit picture: few flips
    assert res["rows"]["canonical"]["ratio"] == 1.0
    assert res["queries"] == len(data.query) and res["db"] == len(data.db)
    for row in res["rows"].values():
        assert 0.0 <= row["map"] <= 1.0
    table = format_robustness_table(res)
    assert "| sketch |" in table and "mAP@40" in table


def test_robustness_rejects_unknown_names_and_bits(tiny):
    enc, data = tiny
    with pytest.raises(ValueError, match="unknown perturbations"):
        robustness(enc, data, names=["blur"], progress=False)
    with pytest.raises(ValueError, match="128-bit"):
        robustness(enc, data, bits=128, progress=False)


def test_cli_eval_robustness(synth_npz, tiny_weights, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["eval", "--weights", str(tiny_weights), "--data", str(synth_npz), "--robustness", "--topk", "40",
               "--quiet", "--device", "cpu", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    for name in PERTURBATIONS:
        assert f"| {name} |" in printed
    res = json.loads(out.read_text())["robustness"]
    assert set(res["rows"]) == set(PERTURBATIONS) and res["bits"] == 64
    assert res["queries"] == len(load_eval_data(synth_npz).query)
    assert len(load_dataset(synth_npz)) == res["queries"] + res["db"]
