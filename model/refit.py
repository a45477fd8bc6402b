"""Re-fit the hash layers on frozen encoder features (``cmah refit-heads``).

The end-to-end trained heads (FC -> BN -> ReLU -> FC -> tanh, model.hash_head) learn from one
minibatch's contrastive pairs at a time while the encoders move under them. Once the encoders are
trained, a second stage can fit new heads on their frozen [CLS] features with a similarity-preserving
objective over the whole training set: the DJSRH objective (model.djsrh) — the codes' cosine
similarities reconstruct a joint image/point affinity of the paired features. Measured on the
shipped CPU model, that alone beat the trained heads at every code length (docs/ablation.md).

Only training shapes are used (the documented split's retrieval part, never its queries). Image
features come from the canonical render (what the gallery stores), optionally plus ``views`` random
views per shape (random viewpoint, light, colours and background, as in training); each image row is
paired with its shape's point features. Measured on the shipped model (docs/ablation.md), the random
views did not make random-view image queries any better and cost canonical accuracy, so the default
is 0.

The result is an ordinary weights directory whose config has ``hash_head = "normed"``: the encoders
unchanged, the heads standardise + L2-normalise the feature (statistics stored as buffers), then the
paper's FC -> ReLU -> FC -> tanh; sign at inference as always. Some code lengths can keep their
trained heads (``bits``; recorded as ``head_overrides`` in the config) where those score better.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from .cmah import HashEncoder
from .config import CMAHConfig
from .djsrh import DJSRHConfig, DJSRHHasher
from .encode import Encoder
from .renderer import random_view, render

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefitConfig:
    #: random-view renders per shape added to the canonical one for the image features
    views: int = 0
    hidden: int = 1024
    batch_size: int = 64             # encoder batch for feature extraction
    seed: int = 0
    djsrh: DJSRHConfig = field(default_factory=DJSRHConfig)


@dataclass
class PairFeatures:
    """Paired frozen features: row i of ``image`` and ``points`` show the same shape ``shape[i]``."""

    image: np.ndarray    # [R, D_img]
    points: np.ndarray   # [R, D_pts]
    shape: np.ndarray    # [R] index into the input clouds


@torch.no_grad()
def pair_features(enc: Encoder, points: np.ndarray, views: int = 0, seed: int = 0, batch_size: int = 64,
                  progress: bool = True) -> PairFeatures:
    """[CLS] features of ``points`` [N, P, 3] and of 1 + ``views`` renders of each cloud."""
    if views < 0:
        raise ValueError(f"views must be >= 0, got {views}")
    gen = torch.Generator().manual_seed(seed)
    img: list[list[np.ndarray]] = [[] for _ in range(views + 1)]
    pts: list[np.ndarray] = []
    for s in tqdm(range(0, len(points), batch_size), desc="features", unit="batch", disable=not progress):
        cloud = enc.points_tensor(points[s:s + batch_size])
        pts.append(enc.point_features(cloud))
        img[0].append(enc.image_features(enc.render_points(cloud)))
        for v in range(views):
            view = random_view(len(cloud), gen, device=enc.device)
            img[v + 1].append(enc.image_features(render(cloud.to(enc.device), view, enc.render_cfg)))
    fp = np.concatenate(pts)
    n = len(fp)
    return PairFeatures(image=np.concatenate([np.concatenate(rows) for rows in img]),
                        points=np.tile(fp, (views + 1, 1)), shape=np.tile(np.arange(n), views + 1))


def kept_bits(cfg: CMAHConfig, bits: Sequence[int] | None = None) -> tuple[int, ...]:
    """The code lengths of ``cfg`` that keep their heads when ``bits`` (default: all) are re-fitted.

    Raises ``ValueError`` naming the problem: ``bits`` not among the model's lengths, or a kept head that
    is itself a re-fitted one (re-fitted heads share one feature standardisation).
    """
    refit = tuple(cfg.bits) if bits is None else tuple(sorted(set(bits)))
    if not refit or any(b not in cfg.bits for b in refit):
        raise ValueError(f"bits to re-fit {list(refit)} must be some of the weights' code lengths {list(cfg.bits)}")
    keep = tuple(b for b in cfg.bits if b not in refit)
    for b in keep:
        kind, _ = cfg.head_spec(b)
        if kind != "bn":
            raise ValueError(f"the {b}-bit heads of these weights are re-fitted ({kind!r}) ones, which cannot be "
                             "kept beside new ones; re-fit them as well")
    return keep


def fit_heads(model: HashEncoder, feats: PairFeatures, cfg: RefitConfig = RefitConfig(),
              bits: Sequence[int] | None = None) -> HashEncoder:
    """A copy of ``model`` with ``"normed"`` hash heads fitted on ``feats`` (encoders unchanged).

    ``bits``: the code lengths to re-fit (default: all of the model's); the others keep ``model``'s
    heads, which must then be trained (``"bn"``) ones: re-fitted heads share one feature
    standardisation, so a re-fitted head of another fit cannot be kept beside new ones.
    """
    keep = kept_bits(model.cfg, bits)
    overrides = tuple((b, *model.cfg.head_spec(b)) for b in keep)
    new_cfg = dataclasses.replace(model.cfg, hash_head="normed", hash_hidden=cfg.hidden, head_overrides=overrides)
    new = HashEncoder(new_cfg)
    taken = ("image_encoder.", "point_encoder.") + tuple(f"{m}.heads.{b}." for m in ("image_hash", "point_hash")
                                                          for b in keep)
    state = {k: v for k, v in model.state_dict().items() if k.startswith(taken)}
    missing, unexpected = new.load_state_dict(state, strict=False)
    if unexpected or any(k.startswith(taken) for k in missing):
        raise ValueError(f"encoder weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    dj = dataclasses.replace(cfg.djsrh, hidden=cfg.hidden)
    for i, b in enumerate(new_cfg.bits):
        if b in keep:
            log.info("%d-bit heads: kept (trained)", b)
            continue
        hasher = DJSRHHasher(b, dj, seed=cfg.seed + i).fit(feats.image, feats.points)
        log.info("%d-bit heads: DJSRH loss %.4f -> %.4f", b, hasher.loss_history[0], hasher.loss_history[-1])
        for mod, multi in (("image", new.image_hash), ("points", new.point_hash)):
            mean, std = hasher.stats[mod]
            multi.norm.set_stats(torch.from_numpy(mean), torch.from_numpy(std))
            net, head = hasher.nets[mod], multi.heads[str(b)]
            head.fc1.load_state_dict(net[0].state_dict())
            head.fc2.load_state_dict(net[2].state_dict())
    return new.eval()
