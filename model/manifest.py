"""Weights directories without torch: names, the manifest reader and the weights id (for light
start-up checks such as :mod:`service.preflight`); loading and saving are in :mod:`model.weights`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEIGHTS_FILE = "cmah_encoder.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
#: The weights shipped in the repository.
SHIPPED_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


class WeightsError(RuntimeError):
    """Weights that cannot be used: missing files, checksum mismatch, incompatible config."""


def read_manifest(weights_dir: str | Path) -> dict[str, Any]:
    path = Path(weights_dir) / MANIFEST_FILE
    if not path.is_file():
        raise WeightsError(f"{weights_dir}: no {MANIFEST_FILE} (not a CMAH weights directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: invalid JSON ({exc})") from None


def weights_id(weights_dir: str | Path | None = None) -> str:
    """The id of a weights directory: the sha256 of its weights file, as its manifest records it (the
    loader verifies it). Codes made by weights of different ids cannot be compared."""
    d = Path(weights_dir or SHIPPED_WEIGHTS_DIR)
    manifest = read_manifest(d)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    entry = files.get(WEIGHTS_FILE) if isinstance(files, dict) else None
    digest = entry.get("sha256") if isinstance(entry, dict) else None
    if not isinstance(digest, str) or len(digest) != 64:
        raise WeightsError(f"{d}: the manifest records no sha256 of {WEIGHTS_FILE}")
    return digest
