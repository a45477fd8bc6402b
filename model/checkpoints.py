"""Weights and checkpoints made from others: the weighted mean of weights directories (checkpoint
averaging) and a slim copy of a training checkpoint to start another run from.

:func:`average_weights`: every floating-point tensor of the output is the weighted mean of the inputs'
(computed in float32, stored as float16 like every weights directory); the hash layers' BatchNorm running
statistics are averaged the same way, integer buffers (BatchNorm's batch counters) come from the first
input. The inputs must have the same config; each is verified by the loader (sha256, config) first. The
manifest is the first input's, with ``files`` rewritten and a ``weight_average`` record (the inputs'
weights ids and the coefficients); evaluate the result with ``cmah eval`` before shipping it. The shipped
weights have been made this way since 4d184c4 (docs/training-log.md, docs/model.md).

:func:`slim_checkpoint`: a full checkpoint (model, AdamW moments, RNG states) of the ``cpu`` config is
about 77 MB: too big to come back from the GPU machine (16 MiB per file) or to carry there next to the
dataset. The slim copy keeps the model's state in float16 (12.8 MB for ``cpu``), the model and training
configs, the step / epoch / elapsed counters and the loss history, and drops the optimiser and RNG states,
so it continues a chain with ``cmah train --init-from`` (every module's weights; a fresh optimiser and
schedule), not with ``--resume``. The trainer checks that the model config matches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .weights import MANIFEST_FILE, WeightsError, load_weights, save_weights, weights_id

#: What a slim checkpoint keeps of a training checkpoint besides the model's state.
SLIM_KEEP = ("model_config", "train_config", "step", "epoch", "elapsed_s", "history")


class CheckpointError(ValueError):
    """A file that is not a training checkpoint of this project."""


def average_weights(dirs: Sequence[str | Path], out: str | Path, coefficients: Sequence[float] | None = None) -> Path:
    """Write the weighted mean of the weights in ``dirs`` to ``out``; returns ``out``.

    ``coefficients`` default to equal ones; they must be >= 0 and sum to 1. Raises :class:`WeightsError`
    (nothing written) for fewer than two inputs, bad coefficients, ``out`` among the inputs, an input that
    does not load, or inputs of different configs.
    """
    if len(dirs) < 2:
        raise WeightsError(f"give at least two weights directories to average, got {len(dirs)}")
    coef = [1.0 / len(dirs)] * len(dirs) if coefficients is None else [float(c) for c in coefficients]
    if len(coef) != len(dirs):
        raise WeightsError(f"{len(coef)} coefficients for {len(dirs)} weights directories")
    if any(c < 0 for c in coef) or abs(sum(coef) - 1.0) > 1e-6:
        raise WeightsError(f"coefficients must be >= 0 and sum to 1, got {coef}")
    if Path(out).resolve() in {Path(d).resolve() for d in dirs}:
        raise WeightsError(f"--out {out} is one of the inputs")
    models = [load_weights(d) for d in dirs]
    first = models[0]
    for d, m in zip(dirs[1:], models[1:], strict=True):
        if m.cfg.to_dict() != first.cfg.to_dict():
            raise WeightsError(f"{d}: config {m.cfg.name!r} differs from {dirs[0]}'s {first.cfg.name!r}; "
                               "only weights of one config can be averaged")
    states = [m.state_dict() for m in models]
    mean = {k: sum(c * s[k].float() for c, s in zip(coef, states, strict=True)) if v.is_floating_point() else v
            for k, v in states[0].items()}
    first.load_state_dict(mean)
    manifest = json.loads((Path(dirs[0]) / MANIFEST_FILE).read_text())
    extra = {k: v for k, v in manifest.items() if k not in ("format_version", "config", "bits", "parameters", "files")}
    extra["weight_average"] = {"inputs": [{"dir": str(d), "weights_id": weights_id(d), "coefficient": c}
                                          for d, c in zip(dirs, coef, strict=True)]}
    return save_weights(first, out, extra)


def slim_checkpoint(src: Path, dest: Path, dtype: torch.dtype = torch.float16) -> dict:
    """Write the slim copy of training checkpoint ``src`` to ``dest`` (atomically); returns what was written.

    Raises :class:`CheckpointError` when ``src`` is not a training checkpoint of this project.
    """
    ck = torch.load(src, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or "model" not in ck or "model_config" not in ck:
        raise CheckpointError(f"{src}: not a cmah training checkpoint (no 'model' / 'model_config')")
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in ck["model"].items()}
    out = {"model": state, **{k: ck[k] for k in SLIM_KEEP if k in ck}, "slim": {"from": str(src), "dtype": str(dtype)}}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    torch.save(out, tmp)
    os.replace(tmp, dest)
    return out
