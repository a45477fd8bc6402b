"""Which weights made a data directory's codes.

Codes made by different weights cannot be compared: a query coded by new weights searched against a
store coded by old ones returns arbitrary neighbours. So the store records the
:func:`~model.manifest.weights_id` of the weights that made its codes (``meta`` value
:data:`~index.store.CODES_MODEL_KEY`), and whatever adds or searches codes checks it first
(:func:`check_codes_model`): the service at start-up (and :mod:`service.preflight` before it), and
``cmah index``.

On a mismatch the items are re-encoded (:mod:`service.reencode`). The service does this by itself only
when every item comes from the demo gallery (:attr:`CodesCheck.auto_reencode`); otherwise it refuses to
start and names ``cmah index reencode``. A re-encoding marks the store ``reencoding:<id>`` first and
``<id>`` when done, so an interrupted one is detected (state ``interrupted``) and run again.
:class:`ReencodeError` is defined here, beside :class:`CodesModelError`, so that both errors a user can
meet about the codes' weights live in one module.

This module imports no torch (the preflight uses :func:`check_codes_model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from index.store import CODES_MODEL_KEY

#: Prefix of the recorded id while a re-encoding is under way (or was interrupted).
REENCODING_PREFIX = "reencoding:"
#: The ``source`` of the demo gallery's items (see :func:`service.indexing.build_demo_gallery`).
DEMO_SOURCE = "demo"

CodesState = Literal["empty", "same", "unknown", "other", "interrupted"]


class CodesModelError(RuntimeError):
    """The data directory's codes were made by other weights (the message says what to do)."""


class ReencodeError(RuntimeError):
    """Some items cannot be re-encoded: nothing of them is kept in the data directory."""


class _MetaReader(Protocol):  # HashStore and MetadataDB both qualify
    def get_value(self, key: str) -> str | None: ...
    def count(self, modality: str | None = None) -> int: ...
    def source_counts(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class CodesCheck:
    """How a data directory's codes relate to the weights about to use it."""

    state: CodesState
    recorded: str | None
    current: str
    items: int
    demo_only: bool

    @property
    def ok(self) -> bool:
        """The codes can be searched and added to with the current weights."""
        return self.state in ("empty", "same")

    @property
    def auto_reencode(self) -> bool:
        """Not ok, but every item comes from the demo gallery: re-encoding it needs nobody's consent."""
        return not self.ok and self.demo_only

    @property
    def reason(self) -> str:
        """What is wrong, as the end of "the data directory X ..." ."""
        return {
            "unknown": "does not record which weights made its codes (it was built by an older version)",
            "other": f"holds codes made by other weights ({short(self.recorded)}…)",
            "interrupted": "was being re-encoded when that was interrupted",
        }.get(self.state, "is fine")

    def problem(self, data_dir: Path | str, weights_dir: Path | str | None = None) -> str:
        """One line for the operator: what is wrong and what to do (``weights_dir``: the weights given
        explicitly, if they were)."""
        return (f"the data directory {data_dir} {self.reason}; these weights ({short(self.current)}…) cannot search "
                f"its {self.items} items. Re-encode them: cmah index reencode --data-dir {data_dir}"
                + (f" --weights {weights_dir}" if weights_dir else "") + " (or use another --data-dir)")


def short(weights: str | None) -> str:
    """The first 12 hex digits of a weights id (without the re-encoding prefix)."""
    return (weights or "?").removeprefix(REENCODING_PREFIX)[:12]


def check_codes_model(store: _MetaReader, current: str) -> CodesCheck:
    """Compare the weights recorded in ``store`` with ``current`` (a :func:`~model.manifest.weights_id`)."""
    recorded = store.get_value(CODES_MODEL_KEY)
    items = store.count()
    state: CodesState
    if items == 0:
        state = "empty"
    elif recorded == current:
        state = "same"
    elif recorded is None:
        state = "unknown"
    elif recorded.startswith(REENCODING_PREFIX):
        state = "interrupted"
    else:
        state = "other"
    demo_only = items > 0 and set(store.source_counts()) == {DEMO_SOURCE}
    return CodesCheck(state, recorded, current, items, demo_only)
