"""Evaluation and training plots (matplotlib, Agg backend). Every function writes a PNG, returns its path.

Inputs are plain numpy / python structures produced by :mod:`model.metrics` and the training log:

* ``plot_precision_at_k(curves, ks, path)``: ``curves[direction][label] = float [len(ks)]``
  (e.g. ``curves["i2p"]["64"]``), one subplot per direction, one line per code length / method.
* ``plot_pr_curves(pr, path)``: ``pr[direction][label] = (precision [R], recall [R])`` (or a dict with
  ``"precision"`` / ``"recall"``), as returned by :func:`model.metrics.precision_recall_by_radius`.
* ``plot_tsne(...)``: t-SNE of packed hash codes, coloured by class, marker per modality.
* ``plot_loss_curves(history, path)``: the training log rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from index.codes import unpack_sign_bits  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["class_colors", "plot_loss_curves", "plot_pr_curves", "plot_precision_at_k", "plot_tsne"]

#: Marker per modality; unknown modalities cycle through ``_EXTRA_MARKERS``.
MODALITY_MARKERS = {"image": "o", "images": "o", "img": "o", "points": "^", "point": "^", "pc": "^"}
_EXTRA_MARKERS = ("s", "D", "v", "P", "X", "*")
#: Class legends are drawn (outside the axes, right) up to this many classes, else omitted.
MAX_LEGEND_CLASSES = 40


def _prepare(path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    logger.info("wrote %s", path)
    return path


def _grid(n: int, width: float = 5.0, height: float = 4.0) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(max(n, 1), 3)
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[: max(n, 1)]


def class_colors(n_classes: int) -> np.ndarray:
    """float [n_classes, 4] RGBA colours: tab20 + tab20b (40 distinct), then tab20c, then hsv."""
    base = np.concatenate(
        [
            colormaps["tab20"](np.arange(20)),
            colormaps["tab20b"](np.arange(20)),
            colormaps["tab20c"](np.arange(20)),
        ]
    )
    if n_classes <= len(base):
        return base[:n_classes]
    return colormaps["hsv"](np.linspace(0.0, 1.0, n_classes, endpoint=False))


def plot_precision_at_k(
    curves: Mapping[str, Mapping[str, np.ndarray]], ks: Sequence[int] | np.ndarray, path: str | Path
) -> Path:
    """Precision@K curves.

    Args:
        curves: ``curves[direction][label]`` = float [len(ks)] mean precision at each K.
        ks: the cut-offs, [len(ks)].
        path: output PNG.
    """
    out = _prepare(path)
    ks_arr = np.asarray(ks)
    fig, axes = _grid(len(curves))
    for ax, (direction, lines) in zip(axes, curves.items(), strict=False):
        for label, values in lines.items():
            ax.plot(ks_arr, np.asarray(values, dtype=float), marker="o", markersize=3, label=str(label))
        ax.set_title(str(direction))
        ax.set_xlabel("K (top retrieved)")
        ax.set_ylabel("precision@K")
        ax.set_ylim(0.0, 1.0)
        ax.grid(True, alpha=0.3)
        if lines:
            ax.legend(fontsize=8)
    return _save(fig, out)


def _pr_pair(value: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(value, Mapping):
        return np.asarray(value["precision"], dtype=float), np.asarray(value["recall"], dtype=float)
    precision, recall = value
    return np.asarray(precision, dtype=float), np.asarray(recall, dtype=float)


def _is_pr_leaf(value: Any) -> bool:
    if isinstance(value, Mapping):
        return "precision" in value and "recall" in value
    return isinstance(value, tuple | list) and len(value) == 2


def plot_pr_curves(pr: Mapping[str, Any], path: str | Path) -> Path:
    """Precision-recall curves over Hamming radius.

    Args:
        pr: ``pr[direction][label] = (precision float [R], recall float [R])`` (or a mapping with
            keys ``"precision"`` / ``"recall"``), one subplot per direction; a flat
            ``pr[label] = (precision, recall)`` gives one panel. NaN points are skipped.
        path: output PNG.
    """
    out = _prepare(path)
    flat = bool(pr) and all(_is_pr_leaf(v) for v in pr.values())
    panels: dict[str, Mapping[str, Any]] = {"": pr} if flat else dict(pr)
    fig, axes = _grid(len(panels))
    for ax, (direction, lines) in zip(axes, panels.items(), strict=False):
        for label, value in lines.items():
            precision, recall = _pr_pair(value)
            ok = np.isfinite(precision) & np.isfinite(recall)
            ax.plot(recall[ok], precision[ok], marker=".", markersize=4, label=str(label))
        ax.set_title(str(direction))
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.05)
        ax.grid(True, alpha=0.3)
        if lines:
            ax.legend(fontsize=8)
    return _save(fig, out)


def _unpack_pm1(codes: np.ndarray, bits: int | None) -> np.ndarray:
    """uint8 [N, B] packed -> float32 [N, bits] in {-1, +1}."""
    arr = np.asarray(codes)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"codes must be packed uint8 [N, B], got {arr.dtype} {arr.shape}")
    n_bits = 8 * arr.shape[1] if bits is None else int(bits)
    return unpack_sign_bits(arr, n_bits).astype(np.float32)


def plot_tsne(
    codes_by_modality: Mapping[str, np.ndarray],
    labels_by_modality: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    path: str | Path,
    n_sample: int = 1000,
    seed: int = 0,
    bits: int | None = None,
    metric: str = "hamming",
    title: str | None = None,
    max_iter: int = 1000,
) -> Path:
    """t-SNE of hash codes of several modalities in one embedding.

    Up to ``n_sample`` items are drawn at random (``seed``) from *each* modality; all sampled codes are
    unpacked to ±1 vectors float [n, bits] and embedded together with scikit-learn's t-SNE
    (``init="pca"``, ``metric`` = ``"hamming"`` by default, i.e. the fraction of differing bits;
    perplexity ``min(30, (n - 1) / 3)``). Points are coloured by class (tab20 + tab20b: 40 distinct
    colours) with a marker per modality (image ``o``, points ``^``). The class legend is drawn outside
    the axes on the right when there are at most ``MAX_LEGEND_CLASSES`` (40) classes and omitted above
    that; the modality legend is always drawn.

    Args:
        codes_by_modality: ``{"image": uint8 [N1, B], "points": uint8 [N2, B]}``.
        labels_by_modality: the class ids, same keys, int [N1] / [N2].
        class_names: [C] names, index = class id.
        path: output PNG.
        bits: code length if the last byte is padded (default ``8 * B``).
        max_iter: t-SNE optimisation steps (scikit-learn needs >= 250).
    """
    from sklearn.manifold import TSNE  # deferred: scikit-learn is slow to import

    out = _prepare(path)
    rng = np.random.default_rng(seed)
    feats, labels, modality = [], [], []
    for i, (name, codes) in enumerate(codes_by_modality.items()):
        lab = np.asarray(labels_by_modality[name])
        if lab.shape[0] != np.asarray(codes).shape[0]:
            raise ValueError(f"{name}: {np.asarray(codes).shape[0]} codes but {lab.shape[0]} labels")
        take = np.arange(lab.shape[0])
        if lab.shape[0] > n_sample:
            take = np.sort(rng.choice(lab.shape[0], size=n_sample, replace=False))
        feats.append(_unpack_pm1(np.asarray(codes)[take], bits))
        labels.append(lab[take])
        modality.append(np.full(take.shape[0], i))
    x = np.concatenate(feats)
    y = np.concatenate(labels).astype(np.int64)
    mod = np.concatenate(modality)
    if x.shape[0] < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {x.shape[0]}")
    perplexity = float(min(30.0, (x.shape[0] - 1) / 3.0))
    emb = TSNE(
        n_components=2,
        init="pca",
        metric=metric,
        perplexity=perplexity,
        random_state=seed,
        n_jobs=1,
        max_iter=max_iter,
    ).fit_transform(x)

    n_classes = max(len(class_names), int(y.max()) + 1 if y.size else 0)
    colors = class_colors(n_classes)
    fig, ax = plt.subplots(figsize=(9, 7))
    names = list(codes_by_modality)
    markers = [
        MODALITY_MARKERS.get(n.lower(), _EXTRA_MARKERS[i % len(_EXTRA_MARKERS)]) for i, n in enumerate(names)
    ]
    for i in range(len(names)):
        sel = mod == i
        ax.scatter(
            emb[sel, 0], emb[sel, 1], c=colors[y[sel]], marker=markers[i], s=12, alpha=0.75, linewidths=0
        )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "t-SNE of hash codes")
    mod_handles = [
        Line2D([], [], marker=markers[i], linestyle="", color="0.3", label=names[i])
        for i in range(len(names))
    ]
    mod_legend = ax.legend(handles=mod_handles, loc="upper left", fontsize=8)
    if n_classes <= MAX_LEGEND_CLASSES:
        ax.add_artist(mod_legend)
        present = np.unique(y)
        cls_handles = [
            Line2D(
                [],
                [],
                marker="o",
                linestyle="",
                color=colors[c],
                label=str(class_names[c]) if c < len(class_names) else str(c),
            )
            for c in present
        ]
        ax.legend(
            handles=cls_handles,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=6,
            ncol=2 if len(cls_handles) > 20 else 1,
            frameon=False,
        )
    return _save(fig, out)


def plot_loss_curves(
    history: Sequence[Mapping[str, Any]], path: str | Path, log_y: bool | None = None
) -> Path:
    """Training losses vs step, learning rate on a twin axis.

    Args:
        history: rows like ``{"step": int, "epoch": float, "loss": float, "loss_contrastive": float,
            "loss_rec_2d": float, "loss_rec_3d": float, "lr": float}``; every key starting with
            ``"loss"`` that appears in some row is plotted (rows without it, or with None / NaN, are
            skipped). ``step`` falls back to the row index when absent.
        path: output PNG.
        log_y: log-scale loss axis; default: when every plotted value is > 0 and they span more than
            a factor of 20.
    """
    out = _prepare(path)
    steps = np.array([float(row.get("step", i)) for i, row in enumerate(history)], dtype=float)
    loss_keys = sorted(
        {k for row in history for k in row if str(k).startswith("loss")}, key=lambda k: (k != "loss", k)
    )
    fig, ax = plt.subplots(figsize=(9, 5))
    all_vals: list[float] = []
    for key in loss_keys:
        vals = np.array([_num(row.get(key)) for row in history], dtype=float)
        ok = np.isfinite(vals)
        if not ok.any():
            continue
        ax.plot(steps[ok], vals[ok], label=key, linewidth=1.8 if key == "loss" else 1.0)
        all_vals.extend(vals[ok].tolist())
    if log_y is None:
        pos = np.asarray(all_vals)
        log_y = bool(pos.size and np.all(pos > 0) and pos.max() / pos.min() > 20.0)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    lrs = np.array([_num(row.get("lr")) for row in history], dtype=float)
    if np.isfinite(lrs).any():
        ax2 = ax.twinx()
        ok = np.isfinite(lrs)
        (line,) = ax2.plot(steps[ok], lrs[ok], color="0.4", linestyle="--", linewidth=1.0, label="lr")
        ax2.set_ylabel("learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        handles.append(line)
        labels.append("lr")
    if handles:
        ax.legend(
            handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(handles)
        )
    ax.set_title("training losses")
    return _save(fig, out)


def _num(value: Any) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
