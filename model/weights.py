"""Inference weights on disk: fp16 safetensors + manifest.json (config, code lengths, provenance,
evaluation, sha256 of every file). The loader verifies the checksums and the config."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .cmah import HashEncoder
from .config import CMAHConfig
from .dataset import file_sha256
from .manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    SHIPPED_WEIGHTS_DIR,
    WEIGHTS_FILE,
    WeightsError,
    read_manifest,
    weights_id,
)

__all__ = ["FORMAT_VERSION", "MANIFEST_FILE", "SHIPPED_WEIGHTS_DIR", "WEIGHTS_FILE", "WeightsError", "load_weights",
           "read_manifest", "save_weights", "update_manifest", "weights_id", "write_manifest"]

def save_weights(encoder: HashEncoder, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the inference model as fp16 safetensors + manifest (atomically per file)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in encoder.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "cmah-encoder", "version": str(FORMAT_VERSION)})
    os.replace(tmp, out / WEIGHTS_FILE)
    manifest = {
        "format_version": FORMAT_VERSION,
        "config": encoder.cfg.to_dict(),
        "bits": list(encoder.cfg.bits),
        "parameters": int(sum(v.numel() for v in state.values())),
        "files": {WEIGHTS_FILE: {"sha256": file_sha256(out / WEIGHTS_FILE),
                                 "bytes": (out / WEIGHTS_FILE).stat().st_size}},
    }
    manifest.update(extra or {})
    write_manifest(out, manifest)
    return out


def update_manifest(out_dir: str | Path, entries: dict[str, Any]) -> dict[str, Any]:
    """Set top-level ``entries`` in the manifest of ``out_dir`` (atomically); returns the new manifest."""
    manifest = read_manifest(out_dir)
    manifest.update(entries)
    write_manifest(Path(out_dir), manifest)
    return manifest


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".manifest-")
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, out_dir / MANIFEST_FILE)


def load_weights(weights_dir: str | Path = SHIPPED_WEIGHTS_DIR, device: str | torch.device = "cpu",
                 expect_config: CMAHConfig | None = None) -> HashEncoder:
    """Load and verify inference weights; returns an fp32 :class:`HashEncoder` in eval mode."""
    d = Path(weights_dir)
    manifest = read_manifest(d)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"{d}: weights format {manifest.get('format_version')} is not supported "
                           f"(expected {FORMAT_VERSION})")
    for name, info in manifest.get("files", {}).items():
        path = d / name
        if not path.is_file():
            raise WeightsError(f"{d}: missing file {name}")
        digest = file_sha256(path)
        if digest != info.get("sha256"):
            raise WeightsError(f"{path}: sha256 mismatch (manifest {info.get('sha256', '')[:12]}…, "
                               f"file {digest[:12]}…): corrupt or replaced weights")
    try:
        cfg = CMAHConfig.from_dict(manifest["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{d}: manifest config is invalid ({exc})") from None
    if expect_config is not None and expect_config.to_dict() != cfg.to_dict():
        raise WeightsError(f"{d}: weights were trained with config {cfg.name!r}, which does not match "
                           f"the expected config {expect_config.name!r}")
    try:
        model = HashEncoder(cfg)
    except ValueError as exc:
        raise WeightsError(f"{d}: manifest config is invalid ({exc})") from None
    state = load_file(str(d / WEIGHTS_FILE))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{d}: weights do not match config {cfg.name!r} "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval()
