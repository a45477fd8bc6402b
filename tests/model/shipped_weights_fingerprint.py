"""The fingerprint of what the shipped weights do: the demo gallery's codes, hashed.

``tests/model/test_shipped_weights.py`` encodes the demo gallery (``model/assets/demo_modelnet40.npz``)
with the shipped weights, the way the service indexes it (every shape as a point cloud and as its
canonical render), and compares the result with ``shipped_weights.json`` beside this file. After a
deliberate change of what the service returns (new weights, a new encode path), regenerate that file
in one command from the repository root and commit it with the change:

    .venv/bin/python tests/model/shipped_weights_fingerprint.py

The JSON records the weights' sha256 (their :func:`model.weights.weights_id`), and per code set
(``image_16`` ... ``points_64``) the sha256 of the packed codes. A hash output within
:data:`FRAGILE` of zero could change sign with the rounding of another CPU, so the bits whose output
is that close are listed (``fragile``: ``row * bits + bit`` of each) and cleared before hashing
(``sha256``); ``sha256_exact`` is the hash of the codes as they are, for information. Any real
change of the codes moves far more bits than the few fragile ones, so the test still catches it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index.codes import pack_sign_bits, unpack_sign_bits
from model.dataset import PointDataset, load_dataset
from model.encode import Encoder, pack_codes
from model.manifest import SHIPPED_WEIGHTS_DIR, weights_id

REPO = Path(__file__).resolve().parents[2]
DEMO_SET = REPO / "model" / "assets" / "demo_modelnet40.npz"
FINGERPRINT_FILE = Path(__file__).resolve().with_name("shipped_weights.json")
#: hash outputs closer to zero than this count as fragile bits (float noise is ~1e-6 here)
FRAGILE = 1e-3


def load_demo_set() -> PointDataset:
    return load_dataset(DEMO_SET)


def encode_demo_set(encoder: Encoder, demo: PointDataset) -> dict[str, np.ndarray]:
    """``{"image_<bits>" | "points_<bits>": uint8 codes}`` of the demo gallery, as the service makes them
    (batches split over 2 threads; the codes do not depend on the threads). Leaves torch's thread count
    as it found it."""
    threads = torch.get_num_threads()
    encoder.use_cpu_threads(2)
    try:
        return encoder.encode_point_dataset(demo.points, progress=False)
    finally:
        encoder.set_parallel(1)
        torch.set_num_threads(threads)


def _fragile_bits(encoder: Encoder, demo: PointDataset, codes: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """``row * bits + bit`` of every bit whose hash output lies within :data:`FRAGILE` of zero."""
    points = encoder.points_tensor(demo.points)
    with torch.no_grad():
        outputs = {"points": encoder.model.encode_points(points),
                   "image": encoder.model.encode_images(encoder.render_points(points))}
    fragile: dict[str, list[int]] = {}
    for modality, by_bits in outputs.items():
        for bits, h in by_bits.items():
            key = f"{modality}_{bits}"
            if not np.array_equal(pack_codes(h), codes[key]):
                raise RuntimeError(f"{key}: one batch and the encode path's batches disagree; cannot find fragile bits")
            fragile[key] = np.flatnonzero(h.abs().numpy() < FRAGILE).tolist()
    return fragile


def _sha256(codes: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(codes).tobytes()).hexdigest()


def masked_sha256(codes: np.ndarray, fragile: list[int]) -> str:
    """sha256 of the packed codes with the fragile bits cleared."""
    signs = unpack_sign_bits(codes, 8 * codes.shape[1])
    signs.reshape(-1)[np.asarray(fragile, dtype=np.int64)] = -1
    return _sha256(pack_sign_bits(signs))


def make_fingerprint(weights_dir: Path = SHIPPED_WEIGHTS_DIR) -> dict[str, Any]:
    encoder = Encoder.from_weights(weights_dir, device="cpu")
    demo = load_demo_set()
    codes = encode_demo_set(encoder, demo)
    fragile = _fragile_bits(encoder, demo, codes)
    return {
        "about": "tests/model/shipped_weights_fingerprint.py wrote this; run it again after a deliberate change",
        "weights_sha256": weights_id(weights_dir),
        "demo_set": str(DEMO_SET.relative_to(REPO)),
        "shapes": len(demo),
        "fragile_below": FRAGILE,
        "codes": {key: {"sha256": masked_sha256(codes[key], fragile[key]), "sha256_exact": _sha256(codes[key]),
                        "fragile": fragile[key]} for key in sorted(codes)},
    }


def read_fingerprint() -> dict[str, Any]:
    return json.loads(FINGERPRINT_FILE.read_text())


def main() -> None:
    fingerprint = make_fingerprint()
    FINGERPRINT_FILE.write_text(json.dumps(fingerprint, indent=1) + "\n")
    n_fragile = sum(len(entry["fragile"]) for entry in fingerprint["codes"].values())
    print(f"wrote {FINGERPRINT_FILE.relative_to(REPO)}: weights {fingerprint['weights_sha256'][:12]}, "  # noqa: T201
          f"{fingerprint['shapes']} shapes, {len(fingerprint['codes'])} code sets, {n_fragile} fragile bits")


if __name__ == "__main__":
    main()
