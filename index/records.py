"""The item record stored by :class:`index.store.HashStore`, and validation of user input."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from os import PathLike
from typing import Any

import numpy as np

from index.codes import BITS_CHOICES, as_codes, check_bits

MODALITIES: tuple[str, ...] = ("image", "points")

_TEXT_FIELDS = ("name", "label", "source", "preview", "item_key")


def check_modality(modality: str) -> str:
    """Return ``modality`` if it is one of :data:`MODALITIES`, else raise ``ValueError``."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return modality


def utc_now_iso() -> str:
    """Current UTC time as ISO 8601 with microseconds and a ``+00:00`` offset."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(eq=False)
class ItemRecord:
    """One indexed item (an image or a point cloud) and its hash codes.

    Attributes:
        modality: ``"image"`` or ``"points"``.
        name: display name (non-empty).
        codes: ``{bits: uint8 [bits // 8]}`` for the code lengths the item has (at least one).
        label: class label, if known.
        source: where the item came from (upload, dataset name, ...).
        preview: path of a preview image, if any.
        item_key: ties related items together, e.g. a point cloud and the image rendered from it
            share one ``item_key``.
        id: the stable id, assigned by the store.
        created: UTC ISO 8601 timestamp, assigned by the store.
    """

    modality: str
    name: str
    codes: dict[int, np.ndarray] = field(default_factory=dict)
    label: str | None = None
    source: str = ""
    preview: str | None = None
    item_key: str | None = None
    id: int | None = None
    created: str | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ItemRecord):
            return NotImplemented
        same_fields = all(
            getattr(self, f.name) == getattr(other, f.name) for f in dataclasses.fields(self) if f.name != "codes"
        )
        return same_fields and {b: c.tobytes() for b, c in self.codes.items()} == {
            b: c.tobytes() for b, c in other.codes.items()
        }

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (codes as ``{bits: uint8 array}``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _opt_text(value: object, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, PathLike):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string or None, got {type(value).__name__}")
    return value


def normalize_codes(codes: object) -> dict[int, np.ndarray]:
    """Validate ``{bits: code}`` and return ``{bits: read-only uint8 [bits // 8]}`` sorted by bits."""
    if not isinstance(codes, Mapping) or not codes:
        raise ValueError(f"codes must be a non-empty mapping {{bits: uint8 code}} with bits in {BITS_CHOICES}")
    out: dict[int, np.ndarray] = {}
    for bits, code in codes.items():
        b = check_bits(bits)
        arr = as_codes(code, b, name=f"codes[{b}]")
        if arr.shape[0] != 1:
            raise ValueError(f"codes[{b}] must be a single code of shape [{b // 8}], got shape {arr.shape}")
        row = arr[0].copy()
        row.flags.writeable = False
        out[b] = row
    return dict(sorted(out.items()))


def normalize_item(item: ItemRecord | Mapping[str, Any]) -> ItemRecord:
    """Validate an :class:`ItemRecord` or a dict with the same keys; returns a new, clean record.

    ``id`` and ``created`` of the input are ignored (the store assigns them).

    Raises:
        ValueError: unknown keys, unknown modality, empty name, bad codes.
    """
    if isinstance(item, ItemRecord):
        data = item.to_dict()
    elif isinstance(item, Mapping):
        data = dict(item)
        known = {f.name for f in dataclasses.fields(ItemRecord)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown item fields {unknown}; known fields are {sorted(known)}")
    else:
        raise ValueError(f"an item must be an ItemRecord or a dict, got {type(item).__name__}")
    for required in ("modality", "name", "codes"):
        if required not in data:
            raise ValueError(f"item is missing the required field {required!r}")
    text = {name: _opt_text(data.get(name), name) for name in _TEXT_FIELDS}
    if not text["name"]:
        raise ValueError("item name must be a non-empty string")
    return ItemRecord(
        modality=check_modality(data["modality"]),
        name=text["name"],
        codes=normalize_codes(data["codes"]),
        label=text["label"],
        source=text["source"] or "",
        preview=text["preview"],
        item_key=text["item_key"],
    )
