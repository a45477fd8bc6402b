"""bench/ablation.py variant names: loss switches, +hard, and @BITS (one model per code length)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from ablation import variant_config  # noqa: E402

from model.config import ABLATIONS, CODE_LENGTHS  # noqa: E402


def test_variant_names_set_switches_loss_and_code_lengths():
    full = variant_config("tiny", "full")
    assert full.bits == CODE_LENGTHS and full.loss.contrastive == "ntxent"
    one = variant_config("tiny", "full@16")
    assert one.bits == (16,) and one.loss == full.loss
    hard = variant_config("tiny", "cl-f+hard@64")
    assert hard.bits == (64,) and hard.loss.contrastive == "hard"
    assert {k: getattr(hard.loss, k) for k in ABLATIONS["cl-f"]} == ABLATIONS["cl-f"]


@pytest.mark.parametrize("name", ["full@24", "full@", "fusion", "full@16+hard"])
def test_unknown_variant_names_are_refused(name):
    with pytest.raises(SystemExit, match="unknown variant"):
        variant_config("tiny", name)
