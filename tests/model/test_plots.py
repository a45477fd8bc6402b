"""Each plot function writes a readable PNG of a sensible size with something drawn on it: axes and
text (dark pixels) and coloured curves or points, not a blank or single-colour canvas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.plots import plot_loss_curves, plot_pr_curves, plot_precision_at_k, plot_tsne

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= 300 and im.size[1] >= 200, im.size
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    drawn = (rgb < 235).any(axis=-1).mean()  # anything but the white canvas
    dark = (rgb < 80).all(axis=-1).mean()  # axes, ticks and text
    coloured = (rgb.max(axis=-1) - rgb.min(axis=-1) > 60).mean()  # curves, markers
    assert 0.01 < drawn < 0.9, f"{path.name}: {drawn:.1%} of the pixels drawn"
    assert dark > 0.001, f"{path.name}: no axes or text ({dark:.2%} dark pixels)"
    assert coloured > 0.001, f"{path.name}: nothing in colour ({coloured:.2%} of the pixels)"


def test_plot_precision_at_k(tmp_path: Path) -> None:
    ks = np.array([1, 10, 50, 100, 500])
    curves = {
        d: {b: np.linspace(0.9, 0.4, len(ks)) - 0.01 * i for i, b in enumerate(["16", "32", "64", "itq-64"])}
        for d in ["i2p", "p2i"]
    }
    out = plot_precision_at_k(curves, ks, tmp_path / "sub" / "p_at_k.png")
    assert out == tmp_path / "sub" / "p_at_k.png"
    assert_png(out)


def test_plot_pr_curves(tmp_path: Path) -> None:
    r = np.linspace(0, 1, 17)
    p = np.concatenate([[np.nan], np.linspace(0.95, 0.1, 16)])  # NaN where nothing was retrieved
    pr = {"i2p": {"16": (p, r), "64": {"precision": p, "recall": r}}, "p2i": {"64": (p, r)}}
    assert_png(plot_pr_curves(pr, tmp_path / "pr.png"))
    assert_png(plot_pr_curves({"64": (p, r)}, tmp_path / "pr_flat.png"))


@pytest.mark.parametrize("n_classes", [40, 45])  # 45: class legend omitted
def test_plot_tsne(tmp_path: Path, n_classes: int) -> None:
    rng = np.random.default_rng(0)
    names = [f"class{i}" for i in range(n_classes)]
    lab_img, lab_pts = rng.integers(0, n_classes, 80), rng.integers(0, n_classes, 70)
    proto = rng.integers(0, 256, size=(n_classes, 8), dtype=np.uint8)
    codes = {"image": proto[lab_img], "points": proto[lab_pts] ^ rng.integers(0, 2, (70, 8), dtype=np.uint8)}
    out = plot_tsne(
        codes,
        {"image": lab_img, "points": lab_pts},
        names,
        tmp_path / f"tsne{n_classes}.png",
        n_sample=30,
        max_iter=250,
    )
    assert_png(out)


def test_plot_loss_curves(tmp_path: Path) -> None:
    history = [
        {
            "step": s,
            "epoch": s / 100,
            "loss": 5.0 / (1 + s),
            "loss_contrastive": 3.0 / (1 + s),
            "loss_rec_2d": 1.0 / (1 + s) ** 0.5,
            "loss_rec_3d": 1.0 / (1 + s) ** 0.5 if (s // 10) % 2 else None,
            "lr": 1e-3 * min(1.0, (s + 1) / 20),
        }
        for s in range(0, 300, 10)
    ]
    assert_png(plot_loss_curves(history, tmp_path / "loss.png"))
    assert_png(plot_loss_curves([{"loss": 1.0}, {"loss": 0.5}], tmp_path / "loss_min.png"))
