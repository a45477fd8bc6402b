"""Shared fixtures: a small synthetic dataset and tiny random weights (no ../shared needed)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

from model.cmah import HashEncoder
from model.config import TINY
from model.synthetic import write_synthetic
from model.weights import save_weights


@pytest.fixture(scope="session")
def synth_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic dataset file: 8 shape classes x 12 shapes x 1024 points."""
    path = tmp_path_factory.mktemp("data") / "synth.npz"
    write_synthetic(path, n_per_class=12, seed=0)
    return path


def _random_tiny_weights(tmp_path_factory: pytest.TempPathFactory, name: str, seed: int) -> Path:
    torch.manual_seed(seed)
    out = tmp_path_factory.mktemp("weights") / name
    save_weights(HashEncoder(TINY), out, extra={"training": {"note": "random init, tests only"}})
    return out


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Randomly initialised tiny-config weights in the shipped format."""
    return _random_tiny_weights(tmp_path_factory, "tiny", seed=0)


@pytest.fixture(scope="session")
def other_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny weights of the same config as ``tiny_weights`` but other values (as after retraining)."""
    return _random_tiny_weights(tmp_path_factory, "tiny-other", seed=1)


@pytest.fixture(scope="session")
def tiny_recipe_run(synth_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``cmah train --recipe tiny`` run straight through once (its OUT directory and what it printed):
    the recipe, resume and release tests share it."""
    from service.cli import main

    out, printed = tmp_path_factory.mktemp("tiny-recipe") / "run", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", "--recipe", "tiny", "--data", str(synth_npz), "--quiet", "--out", str(out)]) == 0
    return out, printed.getvalue()
