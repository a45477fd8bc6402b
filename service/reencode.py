"""Re-encoding a data directory's items with other weights (after :mod:`service.codes_model` found that
other weights made its codes).

The items are re-encoded from what the data directory keeps of them (:func:`reencode_items`): a point
cloud's two items from its stored cloud (``clouds/<key>.npy``; the image item from a fresh canonical
render), an uploaded picture from its preview (a thumbnail of at most 256 px, larger than the model's
input). The store is marked ``reencoding:<id>`` first and ``<id>`` when done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from index.store import CODES_MODEL_KEY

from .codes_model import REENCODING_PREFIX, ReencodeError, short

if TYPE_CHECKING:
    import numpy as np

    from index.records import ItemRecord

    from .indexing import ItemWriter

logger = logging.getLogger(__name__)

#: Items read from SQLite per page while re-encoding.
PAGE_ITEMS = 256


@dataclass
class _Plan:
    clouds: dict[str, list[ItemRecord]]      # item_key -> the items coded from that stored cloud
    pictures: list[ItemRecord]               # image items coded from their preview
    missing: list[ItemRecord]                # nothing to code them from


def _plan(writer: ItemWriter, records: Sequence[ItemRecord]) -> _Plan:
    plan = _Plan({}, [], [])
    for rec in records:
        if writer.cloud_path(rec.item_key) is not None:
            plan.clouds.setdefault(str(rec.item_key), []).append(rec)
        elif rec.modality == "image" and writer.preview_path(rec.preview) is not None:
            plan.pictures.append(rec)
        else:
            plan.missing.append(rec)
    return plan


def _pages(writer: ItemWriter) -> Callable[[], list[ItemRecord]]:
    """A reader of successive pages of items (empty list at the end)."""
    last = 0

    def next_page() -> list[ItemRecord]:
        nonlocal last
        ids = writer.store.item_ids(last, PAGE_ITEMS)
        if not ids:
            return []
        last = ids[-1]
        return [r for r in writer.store.get_many(ids) if r is not None]

    return next_page


def find_unencodable(writer: ItemWriter) -> list[ItemRecord]:
    """The items the data directory keeps nothing to re-encode from (a points item without its cloud, an
    image without cloud or preview)."""
    missing: list[ItemRecord] = []
    next_page = _pages(writer)
    while page := next_page():
        missing.extend(_plan(writer, page).missing)
    return missing


def _code_sets(codes: dict[int, np.ndarray], rows: Sequence[int]) -> list[dict[int, np.ndarray]]:
    return [{b: c[r] for b, c in codes.items()} for r in rows]


def reencode_items(writer: ItemWriter, weights: str, *, drop_missing: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Re-encode every item of ``writer.store`` with ``writer.encoder`` (whose id is ``weights``) and
    record ``weights`` as the store's codes model; returns counts ``{"reencoded", "dropped"}``.

    ``progress(done, total)`` after each page. Items that cannot be re-encoded (see
    :func:`find_unencodable`) raise :class:`ReencodeError` before anything changes, unless
    ``drop_missing`` (then they are deleted).
    """
    from PIL import Image

    store = writer.store
    missing = find_unencodable(writer)
    if missing and not drop_missing:
        ids = ", ".join(str(r.id) for r in missing[:5])
        raise ReencodeError(f"{len(missing)} item(s) cannot be re-encoded: the data directory keeps no cloud "
                            f"or picture of them (ids {ids}{' …' if len(missing) > 5 else ''}); pass "
                            "--drop-missing to delete them")
    store.set_value(CODES_MODEL_KEY, REENCODING_PREFIX + weights)
    dropped = len(store.delete([int(r.id) for r in missing])) if missing else 0  # type: ignore[arg-type]
    total, done = store.count(), 0
    next_page = _pages(writer)
    while page := next_page():
        plan = _plan(writer, page)
        if plan.missing:  # its file vanished since the check: the store stays marked as re-encoding
            raise ReencodeError(f"item {plan.missing[0].id}: its stored cloud or picture vanished during the "
                                "re-encoding; run it again (with --drop-missing to delete such items)")
        ids: list[int] = []
        codes: list[dict[int, np.ndarray]] = []
        if plan.clouds:
            import numpy as np

            keys = list(plan.clouds)
            clouds = np.concatenate([writer.encoder.points_tensor(np.load(writer.cloud_path(k), allow_pickle=False))
                                     .numpy() for k in keys])  # type: ignore[arg-type]
            point_codes, image_codes, _ = writer.encode_clouds(clouds)
            for row, key in enumerate(keys):
                for rec in plan.clouds[key]:
                    ids.append(int(rec.id))  # type: ignore[arg-type]
                    codes.extend(_code_sets(point_codes if rec.modality == "points" else image_codes, [row]))
        if plan.pictures:
            pictures = []
            for rec in plan.pictures:
                with Image.open(writer.preview_path(rec.preview)) as im:  # type: ignore[arg-type]
                    pictures.append(im.convert("RGB"))
            picture_codes = writer.encode_pictures(pictures)
            ids.extend(int(r.id) for r in plan.pictures)  # type: ignore[arg-type]
            codes.extend(_code_sets(picture_codes, range(len(plan.pictures))))
        store.replace_codes(ids, codes)
        done += len(ids)
        if progress is not None:
            progress(done, total)
    store.set_value(CODES_MODEL_KEY, weights)
    logger.info("re-encoded %d items with weights %s… (%d without a source deleted)", done, short(weights), dropped)
    return {"reencoded": done, "dropped": dropped}
