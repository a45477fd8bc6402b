"""Shared fixtures: a small synthetic dataset and tiny random weights (no ../shared needed)."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Randomly initialised tiny-config weights in the shipped format."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("weights") / "tiny"
    save_weights(HashEncoder(TINY), out, extra={"training": {"note": "random init, tests only"}})
    return out
