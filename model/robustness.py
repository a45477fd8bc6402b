"""Robustness of image -> points retrieval to changed query pictures (``cmah eval --robustness``).

The database side is what :func:`model.evaluate.evaluate` builds: the point codes of the database
shapes (:meth:`~model.encode.Encoder.points_tensor` then
:meth:`~model.encode.Encoder.encode_point_tensors`, batches of ``batch_size``). Each query shape is
drawn as a picture, changed by one perturbation of :data:`PERTURBATIONS`, and encoded the way a user's
file is: a PIL image -> :meth:`~model.encode.Encoder.image_tensor` ->
:meth:`~model.encode.Encoder.encode_image_tensors`. Every row is mAP@topk (:func:`model.metrics.map_at_k`,
the function ``evaluate`` uses) and its ratio to the ``canonical`` row.

Perturbations (each gets a :class:`QueryBatch` and returns one PIL image per query, in order):

* ``canonical``: the canonical render at the model's resolution, quantised to 8 bits (a PNG);
* ``grayscale``: that picture converted to grey and back to RGB;
* ``48px``: that picture downsized to 48 x 48;
* ``jpeg30``: that picture through a JPEG of quality 30;
* ``2048px``: the canonical view rendered at :data:`LARGE_RENDER_SIZE` px and upsized (bicubic) to
  2048 x 2048 (a native 2048-px render takes seconds per shape on a CPU);
* ``random_view``: a render from :func:`model.renderer.random_view` (viewpoint, light, colours and
  background of the training distribution), seeded per query;
* ``sketch``, ``depth``: the eval-only styles of :mod:`model.eval_styles` (code training never runs).

``canonical_float_map`` in the result is the same mAP from the float renders without the 8-bit
picture (bit for bit what ``evaluate`` reports as ``map["i2p"]``).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from . import metrics
from .encode import Encoder
from .eval_styles import STYLES
from .evaluate import EvalData
from .renderer import RenderConfig, ViewParams, canonical_view, knn_geometry, random_view, render, to_uint8

log = logging.getLogger(__name__)

#: Side of the render that the ``2048px`` row upsizes: 256 px took 16 ms a shape on one core against
#: 115 ms at 512 and ~0.6 s at 1024 (normals precomputed), and any size above the model's 112 px
#: reaches the encoder as the same downsized picture.
LARGE_RENDER_SIZE = 256
LARGE_SIZE = 2048
SMALL_SIZE = 48
JPEG_QUALITY = 30


@dataclass
class QueryBatch:
    """One batch of query shapes and what the perturbations draw from."""

    points: torch.Tensor            # [B, N, 3] model input points (CPU)
    index: np.ndarray               # [B] positions in the query set
    canonical: list[Image.Image]    # canonical renders at the model's resolution, 8-bit RGB
    seed: int = 0
    _geometry: tuple[torch.Tensor, torch.Tensor] | None = None

    def geometry(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normals [B, N, 3] and k-NN spacing [B, N] for the renders, computed once per batch."""
        if self._geometry is None:
            self._geometry = knn_geometry(self.points)
        return self._geometry

    def seeds(self, salt: int) -> list[int]:
        """One seed per query, from the run's seed, a per-perturbation ``salt`` and the query's position."""
        return [(self.seed * 1_000_003 + salt) * 1_000_033 + int(i) for i in self.index]


# --- picture changes (PIL -> PIL) ------------------------------------------------------------------
def to_grayscale(img: Image.Image) -> Image.Image:
    return img.convert("L").convert("RGB")


def downsize(img: Image.Image, size: int = SMALL_SIZE) -> Image.Image:
    return img.resize((size, size), Image.Resampling.BICUBIC)


def jpeg_round_trip(img: Image.Image, quality: int = JPEG_QUALITY) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] float in [0, 1] -> 8-bit RGB PIL images (what a saved PNG holds)."""
    return [Image.fromarray(a) for a in to_uint8(images.cpu()).numpy()]


# --- perturbations (QueryBatch -> pictures) --------------------------------------------------------
def _canonical(q: QueryBatch) -> list[Image.Image]:
    return list(q.canonical)


def _grayscale(q: QueryBatch) -> list[Image.Image]:
    return [to_grayscale(im) for im in q.canonical]


def _small(q: QueryBatch) -> list[Image.Image]:
    return [downsize(im) for im in q.canonical]


def _jpeg(q: QueryBatch) -> list[Image.Image]:
    return [jpeg_round_trip(im) for im in q.canonical]


def _large(q: QueryBatch) -> Iterator[Image.Image]:
    """The canonical view rendered at LARGE_RENDER_SIZE, upsized to LARGE_SIZE lazily (one 12 MB picture alive)."""
    normals, spacing = q.geometry()
    imgs = render(q.points, canonical_view(len(q.points)), RenderConfig(image_size=LARGE_RENDER_SIZE),
                  normals, spacing)
    return (im.resize((LARGE_SIZE, LARGE_SIZE), Image.Resampling.BICUBIC) for im in to_pil(imgs))


def seeded_random_views(seeds: Sequence[int]) -> ViewParams:
    """One :func:`random_view` per seed, stacked into a batch (the same view whatever the batching)."""
    return ViewParams.cat([random_view(1, torch.Generator().manual_seed(s)) for s in seeds])


def _random_view(q: QueryBatch) -> list[Image.Image]:
    normals, spacing = q.geometry()
    size = q.canonical[0].size[0]
    return to_pil(render(q.points, seeded_random_views(q.seeds(1)), RenderConfig(image_size=size),
                         normals, spacing))


def _style(name: str, salt: int) -> Callable[[QueryBatch], list[Image.Image]]:
    def draw(q: QueryBatch) -> list[Image.Image]:
        return to_pil(STYLES[name](q.points, q.seeds(salt)))

    draw.__name__ = f"_{name}"
    return draw


#: The rows of the robustness table, in order; ``canonical`` is the reference.
PERTURBATIONS: dict[str, Callable[[QueryBatch], Iterable[Image.Image]]] = {
    "canonical": _canonical,
    "grayscale": _grayscale,
    f"{SMALL_SIZE}px": _small,
    f"jpeg{JPEG_QUALITY}": _jpeg,
    f"{LARGE_SIZE}px": _large,
    "random_view": _random_view,
    "sketch": _style("sketch", 2),
    "depth": _style("depth", 3),
}


# --- evaluation -------------------------------------------------------------------------------------
def point_codes(enc: Encoder, points: np.ndarray, bits: int, batch_size: int = 64,
                progress: bool = True) -> np.ndarray:
    """Packed ``bits``-bit point codes of clouds [M, N, 3] -> uint8 [M, bits / 8], as ``evaluate`` makes them."""
    out = []
    for s in tqdm(range(0, len(points), batch_size), desc="database", unit="batch", disable=not progress):
        out.append(enc.encode_point_tensors(enc.points_tensor(points[s:s + batch_size]))[bits])
    return np.concatenate(out)


def encode_pictures(enc: Encoder, images: Iterable[Image.Image], bits: int) -> np.ndarray:
    """Pictures -> packed ``bits``-bit codes [B, bits / 8] through the user path (``image_tensor``)."""
    return enc.encode_image_tensors(torch.stack([enc.image_tensor(im) for im in images]))[bits]


def query_codes(enc: Encoder, points: np.ndarray, bits: int, names: Sequence[str], seed: int = 0,
                batch_size: int = 64, progress: bool = True) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Codes of the query clouds [M, N, 3] under each named perturbation, plus the float canonical
    renders' codes under ``"canonical_float"``; also the seconds spent per name."""
    codes: dict[str, list[np.ndarray]] = {n: [] for n in (*names, "canonical_float")}
    seconds = dict.fromkeys(codes, 0.0)
    for s in tqdm(range(0, len(points), batch_size), desc="queries", unit="batch", disable=not progress):
        pts = enc.points_tensor(points[s:s + batch_size])
        t0 = time.perf_counter()
        float_imgs = enc.render_points(pts)                           # [B, 3, S, S], as evaluate renders
        codes["canonical_float"].append(enc.encode_image_tensors(float_imgs)[bits])
        q = QueryBatch(pts, np.arange(s, s + len(pts)), to_pil(float_imgs), seed)
        seconds["canonical_float"] += time.perf_counter() - t0
        for name in names:
            t0 = time.perf_counter()
            codes[name].append(encode_pictures(enc, PERTURBATIONS[name](q), bits))
            seconds[name] += time.perf_counter() - t0
    return {k: np.concatenate(v) for k, v in codes.items()}, seconds


def robustness(encoder: Encoder, eval_data: EvalData, bits: int = 64, topk: int = 2000, seed: int = 0,
               progress: bool = True, names: Sequence[str] | None = None, batch_size: int = 64) -> dict[str, Any]:
    """i2p mAP@topk at ``bits`` bits for each perturbation of the query pictures (default: all).

    Returns ``{"rows": {name: {"map", "ratio"}}, "canonical_float_map", "bits", "topk", "seed",
    "queries", "db", "split", "seconds", "elapsed_s"}``; ``ratio`` = map / the canonical row's map."""
    t0 = time.monotonic()
    if bits not in encoder.bits:
        raise ValueError(f"the weights have no {bits}-bit head; they provide {list(encoder.bits)}")
    names = list(PERTURBATIONS) if names is None else ["canonical", *(n for n in names if n != "canonical")]
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise ValueError(f"unknown perturbations {unknown}; choose from {list(PERTURBATIONS)}")
    db = point_codes(encoder, eval_data.db.points, bits, batch_size, progress)
    qc, seconds = query_codes(encoder, eval_data.query.points, bits, names, seed, batch_size, progress)
    ql, dl = eval_data.query.labels, eval_data.db.labels
    maps = {n: float(metrics.map_at_k(c, db, ql, dl, topk)) for n, c in qc.items()}
    ref = maps["canonical"]
    rows = {n: {"map": maps[n], "ratio": maps[n] / ref if ref > 0 else float("nan")} for n in names}
    for n in names:
        log.info("robustness %-12s mAP %.4f (x%.3f), %.1f s", n, rows[n]["map"], rows[n]["ratio"], seconds[n])
    return {"rows": rows, "canonical_float_map": maps["canonical_float"], "bits": bits, "topk": topk,
            "seed": seed, "queries": len(ql), "db": len(dl), "split": eval_data.split_note,
            "seconds": {k: round(v, 2) for k, v in seconds.items()}, "elapsed_s": round(time.monotonic() - t0, 1)}


def format_robustness_table(res: dict[str, Any]) -> str:
    """The rows as a markdown table: perturbation, mAP@topk, ratio to the canonical row."""
    lines = [f"| query picture | i2p mAP@{res['topk']}, {res['bits']} bits | ratio to canonical |",
             "|---|---:|---:|"]
    for name, row in res["rows"].items():
        lines.append(f"| {name} | {row['map']:.4f} | {row['ratio']:.3f} |")
    lines.append(f"\n{res['queries']} queries against {res['db']} database shapes ({res['split']}); "
                 f"canonical from the float renders (as `evaluate`): {res['canonical_float_map']:.4f}; "
                 f"{res['elapsed_s']:.0f} s")
    return "\n".join(lines)
