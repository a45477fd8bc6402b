"""The CMAH trainer (``cmah train``).

Unsupervised: each step takes a batch of training shapes (points only — labels are never read here),
renders one image per shape online from a random view and appearance, augments the points, and
minimises the CMAH objective. Resumable: a checkpoint (model, optimiser, schedule position, RNG
states, history) is written every few minutes and at the end, so a long run can be a chain of short
ones (``--resume``). At the end it exports the inference weights (fp16 safetensors + manifest), the
train log JSON and a loss-curve PNG.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .augment import PointAugment
from .cmah import CMAH
from .config import CMAHConfig
from .dataset import PointDataset, load_dataset, make_split
from .device import pick_device
from .neighbours import NeighbourGraph, joint_features, knn_joint
from .renderer import RenderConfig, knn_geometry, random_view, render
from .styles import draw_training_images
from .weights import load_weights, save_weights

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.json"
CURVE_FILE = "loss_curve.png"
GEOMETRY_FILE = "geometry_cache.npz"
#: on a time budget, a due neighbour-graph rebuild is skipped (the current graph kept) when less than
#: this many times the last build's duration is left: the few steps it would serve cannot repay it
GRAPH_REBUILD_MIN_LEFT = 4.0
SNAPSHOT_DIR = "snapshots"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    #: "cosine" (default: warm-up then cosine to min_lr) or "step" (the paper: x0.1 every 20 epochs)
    schedule: str = "cosine"
    step_epochs: int = 20
    seed: int = 0
    n_train: int | None = None           # None: the whole retrieval set of the documented split
    #: the retrieval set's first shapes kept out of training as validation queries (``cmah eval
    #: --validation``); 0: train on the whole retrieval set
    holdout: int = 0
    time_limit_min: float | None = None  # stop (with a checkpoint) after this much wall time
    #: train for a fixed wall-clock budget: the cosine schedule runs over time instead of epochs and the
    #: run ends when the budget is spent (resumed runs count the time already spent)
    time_budget_min: float | None = None
    max_steps: int | None = None         # stop after this many optimiser steps (tests, smoke runs)
    checkpoint_every_min: float = 5.0
    log_every: int = 10
    grad_clip: float = 3.0
    #: training image views: azimuth range (degrees, centred on the canonical view; 360 = any azimuth)
    view_azim_spread: float = 360.0
    #: rotate training point clouds about z (off: keep the dataset's aligned orientation)
    rotate_points: bool = False
    compile: bool = False                # torch.compile the model (GPU)
    #: start from the model weights of another run's checkpoint (fine-tune / continue with a fresh
    #: optimiser and schedule); ignored when ``--resume`` finds a checkpoint of this run
    init_from: str | None = None
    amp: bool = True                     # bf16 autocast on CUDA (CPU always runs fp32)
    #: neighbour positives (model.neighbours): each shape's k nearest training shapes by the model's
    #: own joint features; 0 = off (plain instance NT-Xent). Half of every batch is anchors, half one
    #: neighbour of each, and ``neighbour_alpha`` of each anchor's contrastive target goes to them
    neighbours: int = 0
    neighbour_alpha: float = 0.5
    #: rebuild the neighbour graph from the current model every this many epochs (and on --resume)
    neighbour_refresh_epochs: int = 4
    #: a CNN picture encoder starts from its pinned ImageNet weights (model.backbone)
    pretrained_image: bool = True
    #: the pretrained picture encoder's learning rate as a fraction of ``lr`` (fine-tuning)
    image_lr_scale: float = 1.0
    #: training pictures drawn in many styles (model.styles: splats, shading, outlines, icons, framing,
    #: backgrounds, encodings); off: the renderer's random views only
    image_styles: bool = False
    #: a step-based run (``cmah train --recipe``): the total optimiser steps. Warm-up and cosine run
    #: over steps, the run ends at exactly this step, and --resume restores the neighbour graph instead
    #: of rebuilding it (an exact resume). None: ``epochs`` / ``time_budget_min`` as above
    steps: int | None = None
    warmup_steps: int = 0                # with ``steps``: linear warm-up over this many steps
    #: with ``steps``: rebuild the neighbour graph every this many steps (None: every
    #: ``neighbour_refresh_epochs`` epochs' worth of steps)
    neighbour_refresh_steps: int | None = None
    #: save the model's weights every this many steps under snapshots/ (0: never), for a recipe's
    #: weight-averaging stage
    snapshot_every: int = 0


def render_config_for(cfg: CMAHConfig) -> RenderConfig:
    """The renderer settings that produce this model's input images."""
    return RenderConfig(image_size=cfg.image.image_size)


def resample_points(points: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, P, 3] -> [B, n, 3]: random subset when P >= n, else all points plus random repeats."""
    b, p, _ = points.shape
    if p == n:
        return points
    if p > n:
        idx = torch.rand(b, p, generator=generator).argsort(dim=1)[:, :n]
    else:
        extra = (torch.rand(b, n - p, generator=generator) * p).long()
        idx = torch.cat([torch.arange(p).expand(b, p), extra], dim=1)
    idx = idx.to(points.device)
    return torch.gather(points, 1, idx[..., None].expand(b, n, 3))


def shape_geometry(points: np.ndarray, k: int, batch: int = 64, desc: str = "normals",
                   device: torch.device | str = "cpu", progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Normals [N, P, 3] (fp16) and k-NN spacing [N, P] (fp16) of every shape, batched on ``device``
    (the training device: on a GPU this takes seconds instead of a minute or more of CPU)."""
    normals = np.empty(points.shape, dtype=np.float16)
    spacing = np.empty(points.shape[:2], dtype=np.float16)
    for s in tqdm(range(0, len(points), batch), desc=desc, unit="batch", leave=False, disable=not progress):
        n, sp = knn_geometry(torch.from_numpy(points[s:s + batch]).float().to(device), k)
        normals[s:s + batch] = n.cpu().numpy()
        spacing[s:s + batch] = sp.cpu().numpy()
    return normals, spacing


def _cosine(tc: TrainConfig, t: float) -> float:
    """The cosine from ``lr`` (t = 0) down to ``min_lr`` (t >= 1)."""
    return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


def lr_at_step(step: int, tc: TrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of a step-based run (``tc.steps``): linear
    warm-up over ``warmup_steps``, then a cosine that reaches ``min_lr`` at the last step."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    return _cosine(tc, (step - tc.warmup_steps) / max((tc.steps or 0) - 1 - tc.warmup_steps, 1))


def snapshot_path(out_dir: str | Path, step: int) -> Path:
    """Where a run saves its model weights at ``step`` (``TrainConfig.snapshot_every``)."""
    return Path(out_dir) / SNAPSHOT_DIR / f"step-{step:08d}.pt"


def lr_at(epoch: float, tc: TrainConfig, time_frac: float | None = None) -> float:
    """Learning rate at a (fractional) epoch; ``time_frac`` (elapsed / budget) drives the cosine instead
    of the epoch when training on a time budget."""
    if epoch < tc.warmup_epochs:
        return tc.lr * max(epoch / tc.warmup_epochs, 1e-3)
    if time_frac is not None:
        return _cosine(tc, time_frac)
    if tc.schedule == "step":
        return max(tc.lr * 0.1 ** int(epoch // tc.step_epochs), tc.min_lr)
    if tc.schedule != "cosine":
        raise ValueError(f"unknown schedule {tc.schedule!r}")
    return _cosine(tc, (epoch - tc.warmup_epochs) / max(tc.epochs - tc.warmup_epochs, 1e-9))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    def __init__(self, cfg: CMAHConfig, tc: TrainConfig, data: PointDataset | str | Path, out_dir: str | Path,
                 device: str = "auto", resume: bool = False, show_progress: bool = True,
                 geometry_cache: str | Path | None = None):
        """``geometry_cache``: the render-geometry cache file (default: GEOMETRY_FILE in ``out_dir``;
        a recipe's stages share one)."""
        self.cfg, self.tc = cfg, tc
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.geometry_file = Path(geometry_cache) if geometry_cache else self.out / GEOMETRY_FILE
        self.device = pick_device(device)
        self.data = data if isinstance(data, PointDataset) else load_dataset(data)
        self.split = make_split(len(self.data), n_train=tc.n_train, holdout=tc.holdout)
        if tc.neighbours and not 0 < tc.neighbour_alpha <= 1:
            raise ValueError(f"--neighbour-alpha must lie in (0, 1], got {tc.neighbour_alpha}")
        if tc.neighbours and tc.neighbour_refresh_epochs < 1:
            raise ValueError(f"--neighbour-refresh-epochs must be >= 1, got {tc.neighbour_refresh_epochs}")
        if tc.neighbours and tc.batch_size < 4:
            raise ValueError(f"--neighbours needs --batch-size >= 4 (anchors and neighbours), got {tc.batch_size}")
        if tc.neighbours and cfg.loss.contrastive != "ntxent":
            raise ValueError("--neighbours works with the ntxent contrastive loss only")
        if tc.neighbours and not 1 <= tc.neighbours < len(self.split.train):
            raise ValueError(f"--neighbours must lie in [1, {len(self.split.train) - 1}] for "
                             f"{len(self.split.train)} training shapes, got {tc.neighbours}")
        if tc.steps is not None:
            self._check_step_settings(tc)
        self.train_idx = self.split.train
        self.show_progress = show_progress
        torch.manual_seed(tc.seed)
        self.model = CMAH(cfg).to(self.device)
        self.opt = torch.optim.AdamW(self.param_groups(), lr=tc.lr, weight_decay=tc.weight_decay,
                                     betas=(0.9, 0.999))
        self.augment = PointAugment(rotate_z=tc.rotate_points)
        self.render_cfg = render_config_for(cfg)
        self.gen = torch.Generator().manual_seed(tc.seed)
        self.step, self.epoch, self.history = 0, 0, []
        self.elapsed_before = 0.0
        self.graph: NeighbourGraph | None = None
        self.graph_epoch = -1      # epoch the graph was last built, or kept at a skipped rebuild
        self.graph_step = -1       # step the graph was last built (step-based runs)
        self.graph_builds: list[dict[str, float]] = []
        if cfg.image.is_cnn and tc.pretrained_image:     # a checkpoint or --init-from below replaces it
            self.model.encoder.image_encoder.load_imagenet()
        ckpt = self.out / CHECKPOINT_FILE
        if resume and ckpt.is_file():
            self._load_checkpoint(ckpt)
        else:
            if resume:
                log.warning("--resume: no checkpoint in %s, starting from %s", self.out,
                            tc.init_from or "scratch")
            if tc.init_from:
                self._init_from(Path(tc.init_from))
        self.step_fn = self.model.forward_loss
        if tc.compile:
            self.step_fn = torch.compile(self.model.forward_loss)

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups: a pretrained CNN picture encoder learns at ``image_lr_scale`` x the rate."""
        image = [p for p in self.model.encoder.image_encoder.parameters() if p.requires_grad]
        if not (self.cfg.image.is_cnn and self.tc.pretrained_image) or self.tc.image_lr_scale == 1.0:
            return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr_scale": 1.0}]
        ids = {id(p) for p in image}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": image, "lr_scale": self.tc.image_lr_scale}, {"params": rest, "lr_scale": 1.0}]

    @staticmethod
    def _check_step_settings(tc: TrainConfig) -> None:
        if tc.steps is None or tc.steps < 1:
            raise ValueError(f"steps must be >= 1, got {tc.steps}")
        if not 0 <= tc.warmup_steps < tc.steps:
            raise ValueError(f"warmup_steps must lie in [0, steps), got {tc.warmup_steps}")
        if tc.time_budget_min is not None:
            raise ValueError("a step-based run (steps) cannot also have a time budget")
        if tc.neighbour_refresh_steps is not None and tc.neighbour_refresh_steps < 1:
            raise ValueError(f"neighbour_refresh_steps must be >= 1, got {tc.neighbour_refresh_steps}")

    # --- data -------------------------------------------------------------------------------------
    def _geometry(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-shape normals and spacing for rendering, cached next to the checkpoints."""
        path = self.geometry_file
        if path.is_file():
            with np.load(path) as z:
                if str(z["sha"]) == self.data.sha256 and z["normals"].shape == self.data.points.shape:
                    return z["normals"], z["spacing"]
        normals, spacing = shape_geometry(self.data.points, self.render_cfg.k, device=self.device,
                                          progress=self.show_progress)
        np.savez(path, normals=normals, spacing=spacing, sha=np.array(self.data.sha256))
        return normals, spacing

    def batch(self, idx: np.ndarray, normals: np.ndarray, spacing: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One training pair batch: rendered images [B, 3, H, W] and augmented points [B, N, 3]."""
        pts = torch.from_numpy(self.data.points[idx]).float()
        geometry = (pts.to(self.device), torch.from_numpy(normals[idx]).float().to(self.device),
                    torch.from_numpy(spacing[idx]).float().to(self.device))
        with torch.no_grad():
            if self.tc.image_styles:
                images = draw_training_images(*geometry, self.gen, self.render_cfg,
                                              azim_spread=self.tc.view_azim_spread)
            else:
                view = random_view(len(idx), self.gen, azim_spread=self.tc.view_azim_spread)
                images = render(geometry[0], view, self.render_cfg, *geometry[1:])
            points = resample_points(self.augment(pts, self.gen), self.cfg.points.num_points, self.gen)
        return images, points.to(self.device)

    def build_graph(self) -> NeighbourGraph:
        """The neighbour graph of the training shapes from the current model (positions in train_idx)."""
        t = time.monotonic()
        img, pts = joint_features(self.model.encoder, self.data.points[self.train_idx], self.device,
                                  progress=self.show_progress)
        graph = NeighbourGraph(knn_joint(img, pts, self.tc.neighbours))
        self.graph_builds.append({"epoch": self.epoch, "step": self.step,
                                  "seconds": round(time.monotonic() - t, 1)})
        log.info("neighbour graph (k=%d) of %d shapes built in %.0f s", self.tc.neighbours, len(graph),
                 time.monotonic() - t)
        return graph

    def steps_per_epoch(self) -> int:
        """Optimiser steps per pass over the training shapes (as anchors, with neighbours)."""
        n = len(self.train_idx)
        per_step = min(self.tc.batch_size, n) // (2 if self.tc.neighbours else 1)
        return max(n // max(per_step, 1), 1)

    def graph_due(self, left_s: float | None = None) -> bool:
        """Whether to (re)build the neighbour graph now; ``left_s``: time-budget seconds still left."""
        if self.graph is None:
            return True
        if self.tc.steps is not None:
            every = self.tc.neighbour_refresh_steps or self.tc.neighbour_refresh_epochs * self.steps_per_epoch()
            return self.step - self.graph_step >= every
        if self.epoch - self.graph_epoch < self.tc.neighbour_refresh_epochs:
            return False
        last = self.graph_builds[-1]["seconds"] if self.graph_builds else 0.0
        if left_s is not None and left_s < GRAPH_REBUILD_MIN_LEFT * last:
            log.info("neighbour graph kept at epoch %d: %.0f s of the budget left, a rebuild takes ~%.0f s",
                     self.epoch, left_s, last)
            self.graph_epoch = self.epoch            # decided once per refresh period
            return False
        return True

    def step_batch(self, i: int, normals: np.ndarray, spacing: np.ndarray, left_s: float | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Step ``i`` of the current epoch: images, points and (with neighbours) the [B, B] mask;
        ``left_s`` (seconds of the time budget left) lets a rebuild near the end be skipped."""
        tc, n = self.tc, len(self.train_idx)
        if not tc.neighbours:
            bs = min(tc.batch_size, n)
            perm = np.random.default_rng(tc.seed + self.epoch).permutation(self.train_idx)
            images, points = self.batch(np.sort(perm[i * bs:(i + 1) * bs]), normals, spacing)
            return images, points, None
        if self.graph_due(left_s):
            self.graph, self.graph_epoch, self.graph_step = self.build_graph(), self.epoch, self.step
        half = min(tc.batch_size, n) // 2
        perm = np.random.default_rng(tc.seed + self.epoch).permutation(n)
        pos = self.graph.batch(perm[i * half:(i + 1) * half], np.random.default_rng([tc.seed, self.epoch, i]))
        images, points = self.batch(self.train_idx[pos], normals, spacing)
        return images, points, self.graph.mask(pos).to(self.device)

    # --- checkpoints ------------------------------------------------------------------------------
    def _read_checkpoint(self, path: Path, remedy: str, any_loss: bool = False) -> dict[str, Any]:
        """A checkpoint of this model config (else ``ValueError`` ending with ``remedy``); with
        ``any_loss``, of this architecture: the objective (``loss``) may differ."""
        ck = torch.load(path, map_location=self.device, weights_only=False)
        theirs = CMAHConfig.from_dict(ck.get("model_config", {})).to_dict()
        ours = self.cfg.to_dict()
        if any_loss:
            theirs["loss"] = ours["loss"]
        if theirs != ours:
            raise ValueError(f"{path}: checkpoint was trained with a different model config; {remedy}")
        return ck

    def _load_checkpoint(self, path: Path) -> None:
        ck = self._read_checkpoint(path, "use the same --config/--ablation or a new --out directory")
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.step, self.epoch, self.history = ck["step"], ck["epoch"], ck["history"]
        self.elapsed_before = ck.get("elapsed_s", 0.0)
        self.graph_builds = list(ck.get("neighbour_graphs", []))
        knn = ck.get("neighbour_knn")
        if self.tc.steps is not None and knn is not None and knn.shape == (len(self.train_idx), self.tc.neighbours):
            self.graph = NeighbourGraph(knn)       # step-based: the same graph, an exact resume
            self.graph_epoch, self.graph_step = ck["graph_epoch"], ck["graph_step"]
        # otherwise the graph is rebuilt from the resumed model at the first step
        self.gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)

    def _init_from(self, path: Path) -> None:
        """Model weights of another run (its optimiser, schedule and step count are not taken).

        ``path`` is a training checkpoint of this architecture (every module both models have is
        taken: its loss switches may differ, so a model without decoders starts them fresh) or an
        inference weights directory such as ``weights/`` (the encoders are taken, and the hash heads
        when they are of this model's kind; fusion blocks and decoders, which inference weights
        lack, start fresh).
        """
        if path.is_dir():
            self._init_from_weights(path)
            return
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint or weights directory (--init-from)")
        ck = self._read_checkpoint(path, "--init-from needs the same --config", any_loss=True)
        fresh, dropped = self.model.load_state_dict(ck["model"], strict=False)
        log.info("initialised from %s (its step %d); fresh: %s, not taken: %s", path, ck.get("step", 0),
                 sorted({k.split(".")[0] for k in fresh}), sorted({k.split(".")[0] for k in dropped}))

    def _init_from_weights(self, path: Path) -> None:
        src = load_weights(path, device=self.device)           # verifies sha256 and config
        for part in ("image", "points"):
            if getattr(src.cfg, part) != getattr(self.cfg, part):
                raise ValueError(f"{path}: its {part} encoder ({getattr(src.cfg, part)}) differs from "
                                 f"this run's ({getattr(self.cfg, part)}); --init-from needs the same "
                                 "--config")
        enc = self.model.encoder
        enc.image_encoder.load_state_dict(src.image_encoder.state_dict())
        enc.point_encoder.load_state_dict(src.point_encoder.state_dict())
        taken = "encoders"
        if (src.cfg.hash_head, src.cfg.hash_hidden, src.cfg.bits, src.cfg.head_overrides) == \
                (self.cfg.hash_head, self.cfg.hash_hidden, self.cfg.bits, self.cfg.head_overrides):
            enc.image_hash.load_state_dict(src.image_hash.state_dict())
            enc.point_hash.load_state_dict(src.point_hash.state_dict())
            taken += " and hash heads"
        log.info("initialised the %s from weights %s (fusion blocks and decoders start fresh)", taken, path)

    def save_checkpoint(self, elapsed: float) -> None:
        _atomic_torch_save({
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "model_config": self.cfg.to_dict(), "train_config": dataclasses.asdict(self.tc),
            "step": self.step, "epoch": self.epoch, "history": self.history, "elapsed_s": elapsed,
            "neighbour_graphs": self.graph_builds,
            "neighbour_knn": None if self.graph is None else self.graph.knn,
            "graph_epoch": self.graph_epoch, "graph_step": self.graph_step,
            "generator": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
        }, self.out / CHECKPOINT_FILE)

    def save_snapshot(self) -> None:
        """The model's weights at this step (``snapshot_every``), for weight averaging."""
        path = snapshot_path(self.out, self.step)
        path.parent.mkdir(exist_ok=True)
        _atomic_torch_save({"model": self.model.state_dict(), "model_config": self.cfg.to_dict(),
                            "step": self.step}, path)

    # --- loop -------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        tc = self.tc
        normals, spacing = self._geometry()
        steps_per_epoch = self.steps_per_epoch()
        t0 = time.monotonic()
        last_ckpt = t0
        budget_s = tc.time_budget_min * 60 if tc.time_budget_min else None

        def spent_s() -> float:                                        # resumed runs count earlier time
            return self.elapsed_before + time.monotonic() - t0

        stopped = "completed"
        use_amp = tc.amp and self.device.type == "cuda"
        self.model.train()
        while self.epoch < tc.epochs if tc.steps is None else self.step < tc.steps:
            start = self.step - self.epoch * steps_per_epoch           # resume inside an epoch
            # a step-based run ends at exactly tc.steps, inside an epoch or not
            end = steps_per_epoch if tc.steps is None else min(steps_per_epoch, start + tc.steps - self.step)
            bar = tqdm(range(start, end), desc=f"epoch {self.epoch + 1}/{tc.epochs if tc.steps is None else '-'}",
                       unit="step", disable=not self.show_progress, leave=False)
            for i in bar:
                left = budget_s - spent_s() if budget_s else None
                images, points, neighbours = self.step_batch(i, normals, spacing, left)
                frac = spent_s() / budget_s if budget_s else None      # graph builds count in the budget
                if tc.steps is None:
                    lr = lr_at(self.epoch + i / steps_per_epoch, tc, frac)
                else:
                    lr = lr_at_step(self.step, tc)
                for group in self.opt.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                    out = self.step_fn(images, points, self.gen, neighbours, tc.neighbour_alpha)
                self.opt.zero_grad(set_to_none=True)
                out.loss.backward()
                if tc.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
                self.opt.step()
                self.step += 1
                if tc.snapshot_every and self.step % tc.snapshot_every == 0:
                    self.save_snapshot()
                if self.step % tc.log_every == 0 or self.step == 1:
                    row = {"step": self.step, "epoch": round(self.step / steps_per_epoch, 4),
                           "loss": float(out.loss.detach()), "lr": lr,
                           "elapsed_s": round(spent_s(), 1)}
                    row.update({f"loss_{k}": v for k, v in out.parts.items()})
                    self.history.append(row)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.1e}")
                now = time.monotonic()
                if now - last_ckpt > tc.checkpoint_every_min * 60:
                    self.save_checkpoint(spent_s())
                    save_weights(self.model.encoder, self.out / "weights", extra={"training": {
                        "stopped": "in_progress", "steps": self.step}})
                    last_ckpt = now
                if tc.max_steps is not None and self.step >= tc.max_steps:
                    stopped = "max_steps"
                    break
                if tc.time_limit_min is not None and now - t0 > tc.time_limit_min * 60:
                    stopped = "time_limit"
                    break
                if frac is not None and frac >= 1.0:
                    stopped = "time_budget"
                    break
            bar.close()
            if stopped != "completed" or end < steps_per_epoch:
                break
            self.epoch += 1
            log.info("epoch %d done, loss %.4f", self.epoch, self.history[-1]["loss"] if self.history else float("nan"))
        elapsed = spent_s()
        self.save_checkpoint(elapsed)
        return self.finish(stopped, elapsed, steps_per_epoch)

    def finish(self, stopped: str, elapsed: float, steps_per_epoch: int) -> dict[str, Any]:
        """Write the train log, the loss curve and the inference weights."""
        summary = {
            "stopped": stopped, "epochs_done": self.epoch, "steps": self.step,
            "steps_per_epoch": steps_per_epoch, "elapsed_s": round(elapsed, 1),
            "device": str(self.device), "torch": torch.__version__,
            "samples_per_s": round(self.step * min(self.tc.batch_size, len(self.train_idx)) / max(elapsed, 1e-9), 2),
            "neighbour_graphs": self.graph_builds,
            "model_config": self.cfg.to_dict(), "train_config": dataclasses.asdict(self.tc),
            "data": {"path": self.data.source, "sha256": self.data.sha256, "shapes": len(self.data),
                     "query": len(self.split.query), "retrieval": len(self.split.retrieval),
                     "validation": len(self.split.validation), "train": len(self.train_idx)},
            "history": self.history,
        }
        (self.out / LOG_FILE).write_text(json.dumps(summary, indent=1))
        try:
            from .plots import plot_loss_curves
            plot_loss_curves(self.history, self.out / CURVE_FILE)
        except Exception as exc:  # a missing plot must not lose a finished training run
            log.warning("loss curve not written: %s", exc)
        training = {k: summary[k] for k in ("stopped", "epochs_done", "steps", "elapsed_s", "device",
                                            "samples_per_s", "train_config", "data")}
        if self.graph_builds:
            training["neighbour_graphs"] = self.graph_builds
        save_weights(self.model.encoder, self.out / "weights", extra={"training": training})
        return summary
