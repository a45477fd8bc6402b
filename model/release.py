"""What a recipe run's weights measure, and whether they may replace the shipped weights.

A finished ``cmah train --recipe`` run measures its exported weights on the recipe's validation split
(:func:`measure`: cross-modal mAP@2000 at every code length, and the robustness table of
:mod:`model.robustness`) and writes the figures into its flat manifest record. ``cmah weights ship``
then compares them with the shipped weights' (:func:`ship_refusals`), measures the documented split
once (:func:`documented`) and copies the weights into ``weights/``.

The rule (issue "no step back"): new weights ship when their robustness table is better — a higher mean
ratio over the perturbed rows *and* a higher worst ratio — and their validation mean (i2p and p2i over
all code lengths) is at most :data:`MAX_VALIDATION_DROP` below the shipped weights'.

Every figure is a flat ``"group.key": number`` entry, so the manifest stays small and greppable:
``validation.i2p.64``, ``validation.mean``, ``robustness.grayscale`` (ratio),
``robustness.grayscale.map``, ``documented.p2i.32`` ...
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import PointDataset
from .encode import Encoder
from .evaluate import EvalData, encode_set, load_eval_data, retrieval_metrics
from .manifest import read_manifest
from .robustness import robustness

log = logging.getLogger(__name__)

CROSS = ("i2p", "p2i")
TOPK = 2000
#: How far below the shipped weights' validation mean new weights may be and still ship.
MAX_VALIDATION_DROP = 0.01


def _map_record(group: str, res: dict[str, Any], bits: Sequence[int]) -> dict[str, float]:
    out = {f"{group}.{d}.{b}": round(res["map"][d][str(b)], 4) for d in CROSS for b in bits}
    out[f"{group}.mean"] = round(float(np.mean([res["map"][d][str(b)] for d in CROSS for b in bits])), 4)
    return out


def cross_modal_map(enc: Encoder, ev: EvalData, group: str, progress: bool = True) -> dict[str, float]:
    """i2p and p2i mAP@2000 at every code length of ``enc`` on ``ev`` (the validation split, as ``cmah
    eval --validation``, or the documented one); flat entries under ``group``."""
    q = encode_set(enc, ev.query, "query", progress=progress)
    db = encode_set(enc, ev.db, "database", progress=progress)
    res = retrieval_metrics(q.codes, db.codes, ev.query.labels, ev.db.labels, enc.bits, TOPK, CROSS, curves=False)
    return _map_record(group, res, enc.bits)


def measure(weights_dir: str | Path, data: str | Path | PointDataset, validation: int,
            progress: bool = True) -> dict[str, float]:
    """Validation mAP and the robustness table (image -> points at the largest code length) of the weights
    in ``weights_dir``, on the validation split of ``data`` with ``validation`` queries."""
    enc = Encoder.from_weights(weights_dir, "cpu")
    ev = load_eval_data(data, validation=validation)
    out = cross_modal_map(enc, ev, "validation", progress)
    rob = robustness(enc, ev, max(enc.bits), TOPK, progress=progress)
    for name, row in rob["rows"].items():
        out[f"robustness.{name}"] = round(row["ratio"], 4)
        out[f"robustness.{name}.map"] = round(row["map"], 4)
    log.info("validation mean %.4f; robustness ratios %s", out["validation.mean"],
             {k: v for k, v in out.items() if k.startswith("robustness.") and not k.endswith(".map")})
    return out


def documented(weights_dir: str | Path, data: str | Path, progress: bool = True) -> dict[str, float]:
    """i2p and p2i mAP@2000 on the documented split of ``data`` (reported once, for shipped weights)."""
    return cross_modal_map(Encoder.from_weights(weights_dir, "cpu"), load_eval_data(data), "documented", progress)


def ratios(record: dict[str, Any]) -> dict[str, float]:
    """The perturbed rows' ratios of a flat record (``canonical`` left out: it is 1 by definition)."""
    return {k.split(".", 1)[1]: float(v) for k, v in record.items()
            if k.startswith("robustness.") and k.count(".") == 1 and k != "robustness.canonical"}


def legacy_record(manifest: dict[str, Any]) -> dict[str, float]:
    """The validation figures of weights made before recipes (nested ``training.validation.map``)."""
    val = (manifest.get("training") or {}).get("validation") or {}
    if not val.get("map"):
        return {}
    bits = sorted(int(b) for b in val["map"].get("i2p", {}))
    return _map_record("validation", val, bits)


def shipped_record(weights_dir: str | Path) -> dict[str, Any]:
    """The flat record of the weights in ``weights_dir``: a recipe run's, else the legacy figures."""
    manifest = read_manifest(weights_dir)
    return dict(manifest.get("recipe") or legacy_record(manifest))


def ship_refusals(candidate: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Why ``candidate`` may not replace ``current`` (empty: it may), by the rule in the module doc."""
    why = []
    cv, sv = candidate.get("validation.mean"), current.get("validation.mean")
    if cv is None or sv is None:
        why.append("a validation mean is missing (run `cmah weights ship` with --data)")
    elif cv < sv - MAX_VALIDATION_DROP:
        why.append(f"validation mean {cv:.4f} is more than {MAX_VALIDATION_DROP} below the shipped {sv:.4f}")
    cr, sr = ratios(candidate), ratios(current)
    rows = sorted(set(cr) & set(sr))
    if not rows:
        why.append("a robustness table is missing")
    else:
        c_mean, s_mean = np.mean([cr[r] for r in rows]), np.mean([sr[r] for r in rows])
        c_min, s_min = min(cr[r] for r in rows), min(sr[r] for r in rows)
        if not (c_mean > s_mean and c_min > s_min):
            why.append(f"robustness is not better: mean ratio {c_mean:.3f} vs {s_mean:.3f}, worst {c_min:.3f} "
                       f"vs {s_min:.3f} over {', '.join(rows)}")
    return why
