"""The one encode path: inputs -> model tensors -> binary codes. Used by ``cmah encode``, ``cmah eval``,
bulk indexing and the HTTP service, so every caller preprocesses exactly the same way.

* Images (Pillow, already validated RGB): padded to a square on white (the whole picture is kept),
  resized with antialiasing to the model's resolution, RGB in [0, 1].
* Point clouds (validated, normalised [N, 3]: centroid at the origin, max norm 1): resampled to the
  model's point count if needed. Their image counterpart (what a point item is indexed as in the
  image store) is the canonical render from :mod:`model.renderer`.
* Codes: sign of the hash layer output, packed by :func:`index.codes.pack_sign_bits` (uint8
  [B, bits / 8], bit 1 = non-negative output, big-endian within each byte).

On CPU, :meth:`Encoder.set_parallel` runs a model call as chunks of the batch on several threads with
one intra-op thread each (what the service does; on a small machine this beats one call with several
intra-op threads, measured in docs/benchmarks.md). On a GPU with ``CMAH_CUDA_GRAPHS=1``, batches of up
to 8 replay a CUDA graph of the encoder (:mod:`model.cuda_graphs`; off by default until measured on a GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from index.codes import pack_sign_bits

from .cmah import HashEncoder
from .cuda_graphs import GraphedCall
from .device import pick_device
from .renderer import RenderConfig, canonical_view, render
from .weights import SHIPPED_WEIGHTS_DIR, load_weights, weights_id

Codes = dict[int, np.ndarray]
#: Ways a model call uses the CPU threads (:meth:`Encoder.use_cpu_threads`).
CPU_PARALLEL_MODES = ("chunks", "intra-op")


def pack_codes(h: torch.Tensor) -> np.ndarray:
    """Continuous codes [B, bits] -> packed sign bits uint8 [B, bits / 8] (bit 1 where h >= 0)."""
    return pack_sign_bits(h.detach().float().cpu().numpy())


class Encoder:
    """Inference wrapper around :class:`HashEncoder` (eval mode, no grad, batched)."""

    def __init__(self, model: HashEncoder, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cfg = model.cfg
        self.bits = tuple(model.cfg.bits)
        self.render_cfg = RenderConfig(image_size=self.cfg.image.image_size)
        #: :func:`~model.weights.weights_id` of the weights directory loaded (``None``: built in memory)
        self.weights_id: str | None = None
        self.workers = 1
        self._pool: ThreadPoolExecutor | None = None
        # on a GPU (CMAH_CUDA_GRAPHS=1), small batches replay a CUDA graph of the encoder: one launch, not hundreds
        self._image_call = GraphedCall(self.model.encode_images, name="image encoder")
        self._point_call = GraphedCall(self.model.encode_points, name="point encoder")

    def use_cpu_threads(self, threads: int, mode: str = "chunks") -> None:
        """How model calls use ``threads`` CPU threads (the service's ``CMAH_CPU_PARALLEL``): ``"chunks"``
        = torch gets one thread (in this thread and the threads started later) and batches are split over
        ``threads`` workers; ``"intra-op"`` = one call with ``threads`` torch threads. On a GPU the
        model's work is not on the CPU: torch keeps ``threads``, no chunks."""
        if mode not in CPU_PARALLEL_MODES:
            raise ValueError(f"mode must be one of {CPU_PARALLEL_MODES}, got {mode!r}")
        chunks = mode == "chunks" and self.device.type == "cpu"
        torch.set_num_threads(1 if chunks else threads)
        self.set_parallel(threads if chunks else 1)

    def set_parallel(self, workers: int) -> None:
        """Run each model call on CPU as up to ``workers`` chunks of its batch, on as many threads with
        one intra-op thread each (1: one call in the caller's thread, with torch's own threads). The
        caller sets ``torch.set_num_threads(1)`` too when it wants every model call single-threaded."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.workers = workers if self.device.type == "cpu" else 1
        if self.workers > 1:
            self._pool = ThreadPoolExecutor(self.workers - 1, thread_name_prefix="cmah-encode",
                                            initializer=torch.set_num_threads, initargs=(1,))

    def _call(self, fn: Callable[[torch.Tensor], torch.Tensor | dict[int, torch.Tensor]],
              x: torch.Tensor) -> torch.Tensor | dict[int, torch.Tensor]:
        """``fn(x)``, split over the parallel chunks when :meth:`set_parallel` asked for them."""
        n = min(self.workers, len(x))
        if n <= 1 or self._pool is None:
            return fn(x)
        chunks = x.tensor_split(n)
        rest = [self._pool.submit(_no_grad_call, fn, c) for c in chunks[1:]]
        parts = [_no_grad_call(fn, chunks[0])] + [f.result() for f in rest]
        if isinstance(parts[0], dict):
            return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}  # type: ignore[index]
        return torch.cat(parts)  # type: ignore[arg-type]

    @classmethod
    def from_weights(cls, weights_dir: str | Path | None = None, device: str = "auto") -> Encoder:
        dev = pick_device(device)
        d = weights_dir or SHIPPED_WEIGHTS_DIR
        enc = cls(load_weights(d, dev), dev)
        enc.weights_id = weights_id(d)
        return enc

    @property
    def image_size(self) -> int:
        return self.cfg.image.image_size

    @property
    def num_points(self) -> int:
        return self.cfg.points.num_points

    # --- preprocessing ------------------------------------------------------------------------------
    def image_tensor(self, img: Image.Image) -> torch.Tensor:
        """A validated RGB picture -> [3, S, S] float in [0, 1] (padded square on white, resized)."""
        img = img.convert("RGB")
        w, h = img.size
        side = max(w, h)
        if w != h:
            canvas = Image.new("RGB", (side, side), (255, 255, 255))
            canvas.paste(img, ((side - w) // 2, (side - h) // 2))
            img = canvas
        if side != self.image_size:
            img = img.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC, reducing_gap=3.0)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def points_tensor(self, points: np.ndarray | torch.Tensor) -> torch.Tensor:
        """[N, 3] or [B, N, 3] normalised points -> [B, num_points, 3] float32 (deterministic resampling)."""
        p = torch.as_tensor(np.asarray(points, dtype=np.float32))
        if p.ndim == 2:
            p = p[None]
        n = p.shape[1]
        if n != self.num_points:
            # deterministic: evenly spaced indices (down) or cyclic repetition (up)
            idx = torch.linspace(0, n - 1, self.num_points).round().long() if n > self.num_points \
                else torch.arange(self.num_points) % n
            p = p[:, idx]
        return p

    @torch.no_grad()
    def render_points(self, points: torch.Tensor) -> torch.Tensor:
        """[B, N, 3] -> canonical renders [B, 3, S, S] (how point items appear in the image store)."""
        def one_call(p: torch.Tensor) -> torch.Tensor:
            return render(p, canonical_view(p.shape[0], self.device), self.render_cfg)

        return self._call(one_call, points.to(self.device))  # type: ignore[return-value]

    # --- encoding -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image_tensors(self, images: torch.Tensor) -> Codes:
        """[B, 3, S, S] in [0, 1] -> packed codes per code length."""
        h = self._call(self._image_call, images.to(self.device))
        return {b: pack_codes(v) for b, v in h.items()}  # type: ignore[union-attr]

    @torch.no_grad()
    def encode_point_tensors(self, points: torch.Tensor) -> Codes:
        h = self._call(self._point_call, points.to(self.device))
        return {b: pack_codes(v) for b, v in h.items()}  # type: ignore[union-attr]

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> np.ndarray:
        return self._call(self.model.image_features, images.to(self.device)).float().cpu().numpy()  # type: ignore[union-attr]

    @torch.no_grad()
    def point_features(self, points: torch.Tensor) -> np.ndarray:
        return self._call(self.model.point_features, points.to(self.device)).float().cpu().numpy()  # type: ignore[union-attr]

    def encode_image(self, img: Image.Image) -> Codes:
        """One picture -> {bits: uint8 [bits / 8]}."""
        return {b: c[0] for b, c in self.encode_image_tensors(self.image_tensor(img)[None]).items()}

    def encode_points(self, points: np.ndarray) -> Codes:
        """One normalised cloud [N, 3] -> {bits: uint8 [bits / 8]}."""
        return {b: c[0] for b, c in self.encode_point_tensors(self.points_tensor(points)).items()}

    # --- datasets -----------------------------------------------------------------------------------
    def encode_point_dataset(self, points: np.ndarray, batch_size: int = 64, desc: str = "points",
                             features: bool = False, progress: bool = True) -> dict[str, np.ndarray]:
        """Encode a dataset's clouds both ways: as points and as their canonical renders.

        Returns ``{"points_<bits>": codes, "image_<bits>": codes}`` (+ ``"points_feat"``/``"image_feat"``
        continuous [CLS] features when ``features``), rows in input order.
        """
        out: dict[str, list[np.ndarray]] = {}

        def add(key: str, val: np.ndarray) -> None:
            out.setdefault(key, []).append(val)

        for s in tqdm(range(0, len(points), batch_size), desc=desc, unit="batch", disable=not progress):
            pts = self.points_tensor(points[s:s + batch_size])
            imgs = self.render_points(pts)
            for b, c in self.encode_point_tensors(pts).items():
                add(f"points_{b}", c)
            for b, c in self.encode_image_tensors(imgs).items():
                add(f"image_{b}", c)
            if features:
                add("points_feat", self.point_features(pts))
                add("image_feat", self.image_features(imgs))
        return {k: np.concatenate(v) for k, v in out.items()}


def _no_grad_call(fn: Callable[[torch.Tensor], object], x: torch.Tensor) -> object:
    with torch.no_grad():  # grad mode is per thread
        return fn(x)


def time_call(fn: Callable[[], object], repeats: int = 100, warmup: int = 10) -> float:
    """Mean wall time of ``fn()`` in milliseconds after ``warmup`` calls (CUDA synchronised)."""
    import time

    for _ in range(warmup):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats * 1000.0


