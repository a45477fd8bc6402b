"""The shipped weights: intact, still making the same codes, still retrieving well on the demo gallery.

A change that alters what the service returns (the weights, preprocessing, rendering, the sign rule)
fails here. If the change is deliberate, regenerate the fingerprint (docs/development.md):

    .venv/bin/python tests/model/shipped_weights_fingerprint.py
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from shipped_weights_fingerprint import encode_demo_set, load_demo_set, masked_sha256, read_fingerprint

from model.dataset import PointDataset
from model.encode import Encoder
from model.manifest import MANIFEST_FILE, SHIPPED_WEIGHTS_DIR, read_manifest, weights_id
from model.metrics import map_at_k

REGENERATE = "if the change is deliberate, run: .venv/bin/python tests/model/shipped_weights_fingerprint.py"

#: mAP over the whole gallery (each of the 319 shapes queries the other modality's 319) must stay above
#: these, per code length; the weights of a12333a measure i2p .481 / .536 / .562, p2i .478 / .526 / .557.
#: They stay fixed when the fingerprint is regenerated: raise them when better weights ship.
MAP_FLOOR = {16: 0.45, 32: 0.50, 64: 0.53}


@pytest.fixture(scope="module")
def demo() -> PointDataset:
    return load_demo_set()


@pytest.fixture(scope="module")
def demo_codes(demo: PointDataset) -> dict[str, np.ndarray]:
    return encode_demo_set(Encoder.from_weights(device="cpu"), demo)


def test_weights_files_match_their_manifest_and_the_fingerprint() -> None:
    manifest = read_manifest(SHIPPED_WEIGHTS_DIR)
    on_disk = {p.name for p in SHIPPED_WEIGHTS_DIR.iterdir() if p.is_file()}
    assert on_disk == set(manifest["files"]) | {MANIFEST_FILE}, "weights/ holds files its manifest does not list"
    for name, info in manifest["files"].items():
        path = Path(SHIPPED_WEIGHTS_DIR, name)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == info["sha256"], f"{name}: sha256 differs"
        assert path.stat().st_size == info["bytes"]
    assert weights_id(SHIPPED_WEIGHTS_DIR) == read_fingerprint()["weights_sha256"], (
        f"weights/ changed since the fingerprint was made; {REGENERATE}")


def test_demo_codes_match_the_fingerprint(demo: PointDataset, demo_codes: dict[str, np.ndarray]) -> None:
    fingerprint = read_fingerprint()
    assert fingerprint["shapes"] == len(demo)
    assert sorted(demo_codes) == sorted(fingerprint["codes"])
    changed = [key for key, entry in fingerprint["codes"].items()
               if masked_sha256(demo_codes[key], entry["fragile"]) != entry["sha256"]]
    assert not changed, f"the demo gallery's codes changed ({', '.join(changed)}); {REGENERATE}"


@pytest.mark.parametrize("bits", sorted(MAP_FLOOR))
def test_demo_map_stays_above_the_floor(bits: int, demo: PointDataset, demo_codes: dict[str, np.ndarray]) -> None:
    image, points = demo_codes[f"image_{bits}"], demo_codes[f"points_{bits}"]
    i2p = map_at_k(image, points, demo.labels, demo.labels, None)
    p2i = map_at_k(points, image, demo.labels, demo.labels, None)
    assert min(i2p, p2i) >= MAP_FLOOR[bits], f"{bits} bits: i2p {i2p:.4f}, p2i {p2i:.4f} < {MAP_FLOOR[bits]}"
