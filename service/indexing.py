"""Adding items to the store: codes, preview PNGs and stored point clouds.

A point cloud becomes two items sharing one ``item_key``: a ``points`` item and an ``image`` item (its
canonical render). Both get the render as preview (``previews/<key>.png``); the cloud itself is kept
as ``clouds/<key>.npy`` for ``GET /api/v1/items/{id}/points.ply``. An uploaded picture becomes one
``image`` item whose preview is a thumbnail.

The files of a batch are written before its items are committed, so a crash in between (SIGKILL) leaves
files no item refers to; so do deleted items. :meth:`ItemWriter.sweep_orphans`, run at start-up, removes
them once they are older than a grace period.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image

from index.store import CODES_MODEL_KEY, HashStore
from model.dataset import load_dataset
from model.encode import Codes, Encoder
from model.renderer import to_uint8

from .codes_model import CodesModelError, check_codes_model

if TYPE_CHECKING:
    import torch

    from .scale import SharedPublisher

logger = logging.getLogger(__name__)

PREVIEW_DIR = "previews"
CLOUD_DIR = "clouds"
THUMBNAIL_SIZE = 256
#: The files the writer creates (``<key>.png`` in previews, ``<key>.npy`` in clouds) and their ``.tmp``
#: files while they are written; nothing else in these folders is ever swept.
_OWN_FILE = re.compile(r"^(?P<key>[0-9a-f]{32})\.(?P<ext>png|npy)(?P<tmp>\.tmp)?$")


class ItemWriter:
    """Encodes and stores items (thread-safe; model calls hold ``model_lock``)."""

    def __init__(self, data_dir: Path, store: HashStore, encoder: Encoder, model_lock: threading.Lock,
                 shared: SharedPublisher | None = None):
        self.data_dir = Path(data_dir)
        self.store = store
        self.encoder = encoder
        self.model_lock = model_lock
        #: the indexer of a scale-out deployment: files are copied to the bucket before their items are
        #: committed, and the committed items are published for the search replicas (service/scale.py)
        self.shared = shared
        (self.data_dir / PREVIEW_DIR).mkdir(parents=True, exist_ok=True)
        (self.data_dir / CLOUD_DIR).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ files
    def preview_path(self, rel: str | None) -> Path | None:
        """The file of a stored ``preview`` value, if it is inside the previews folder and exists."""
        if not rel:
            return None
        root = (self.data_dir / PREVIEW_DIR).resolve()
        path = (self.data_dir / rel).resolve()
        return path if path.parent == root and path.is_file() else None

    def cloud_path(self, item_key: str | None) -> Path | None:
        if not item_key or not item_key.isalnum():
            return None
        path = self.data_dir / CLOUD_DIR / f"{item_key}.npy"
        return path if path.is_file() else None

    def _write_file(self, rel: str, write: Callable[[BinaryIO], None]) -> None:
        """Write ``data_dir/rel`` through a ``.tmp`` file renamed into place; on any error (a full disk)
        the ``.tmp`` file is removed and the error raised."""
        final = self.data_dir / rel
        tmp = final.with_name(final.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                write(f)
            tmp.replace(final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.shared is not None:
            self.shared.objects.put(rel, final.read_bytes())

    def _save_png(self, key: str, img: Image.Image) -> str:
        rel = f"{PREVIEW_DIR}/{key}.png"
        self._write_file(rel, lambda f: img.save(f, format="PNG"))
        return rel

    def _save_cloud(self, key: str, points: np.ndarray) -> None:
        self._write_file(f"{CLOUD_DIR}/{key}.npy", lambda f: np.save(f, np.asarray(points, dtype=np.float32)))

    def _remove_files(self, keys: Sequence[str]) -> None:
        """Delete the preview and cloud files of items that were not stored (a failed batch)."""
        rels = [rel for key in keys for rel in (f"{PREVIEW_DIR}/{key}.png", f"{CLOUD_DIR}/{key}.npy")]
        for rel in rels:
            (self.data_dir / rel).unlink(missing_ok=True)
        if self.shared is not None:
            try:
                self.shared.objects.delete(rels)
            except Exception as exc:  # noqa: BLE001 - the batch's own error matters more
                logger.warning("could not delete the objects of a failed batch: %s", exc)

    def _store(self, keys: list[str], build: Callable[[int, str], list[dict]]) -> list[int]:
        """Write the files of each shape (``build(i, key)`` writes them and returns its items), then add
        every item in one transaction; on failure the files written for the batch are removed."""
        self._check_codes_model()
        items: list[dict] = []
        try:
            for i, key in enumerate(keys):
                items.extend(build(i, key))
            ids = self.store.add(items)
        except BaseException:
            self._remove_files(keys)
            raise
        if self.shared is not None:  # committed: a failure here is repaired by the next sync, not undone
            self.shared.publish(self.store, ids)
        return ids

    def delete_items(self, ids: Sequence[int]) -> list[int]:
        """Delete items (unknown ids are ignored); returns the ids deleted. In a scale-out deployment their
        records and the objects no remaining item refers to are removed from the shared state too."""
        records = [r for r in self.store.get_many(ids) if r is not None]
        deleted = self.store.delete([int(r.id) for r in records])  # type: ignore[arg-type]
        if self.shared is not None and deleted:
            previews, keys = self.store.file_references()
            gone = {int(i) for i in deleted}
            dropped = [r for r in records if int(r.id) in gone]  # type: ignore[arg-type]
            unreferenced = sorted({r.preview for r in dropped if r.preview and r.preview not in previews}
                                  | {f"{CLOUD_DIR}/{r.item_key}.npy" for r in dropped
                                     if r.item_key and r.item_key not in keys and r.item_key.isalnum()})
            self.shared.unpublish(dropped, unreferenced)
        return deleted

    def _check_codes_model(self) -> None:
        """Codes are added only to a store whose codes these weights made; an empty store records them
        (see :mod:`service.codes_model`)."""
        current = self.encoder.weights_id
        if current is None or self.store.get_value(CODES_MODEL_KEY) == current:
            return
        check = check_codes_model(self.store, current)
        if check.state != "empty":
            raise CodesModelError(check.problem(self.data_dir))
        self.store.set_value(CODES_MODEL_KEY, current)

    def sweep_orphans(self, grace_s: float) -> int:
        """Delete the preview and cloud files that no item refers to and that were last modified more than
        ``grace_s`` seconds ago; returns how many were deleted (one log line gives the count).

        A preview file is referred to by an item whose ``preview`` names it, a cloud file by an item with its
        ``item_key``; ``.tmp`` files never are. Items are read before the folders are listed, and a writer
        writes a batch's files just before it commits its items, so with a grace period longer than one
        batch a file whose items are being committed concurrently is never deleted. Files of other names
        are left alone.
        """
        cutoff = time.time() - grace_s
        previews, keys = self.store.file_references()
        removed = kept_fresh = 0
        for folder, ext in ((PREVIEW_DIR, "png"), (CLOUD_DIR, "npy")):
            with os.scandir(self.data_dir / folder) as entries:
                for entry in entries:
                    m = _OWN_FILE.match(entry.name)
                    if m is None or m["ext"] != ext or not entry.is_file(follow_symlinks=False):
                        continue
                    if m["tmp"] is None and (f"{folder}/{entry.name}" in previews if folder == PREVIEW_DIR
                                             else m["key"] in keys):
                        continue
                    try:
                        if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                            kept_fresh += 1
                            continue
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        continue
                    removed += 1
        logger.info("orphan sweep: deleted %d preview/cloud file(s) no item refers to (older than %g s; %d newer "
                    "ones kept)", removed, grace_s, kept_fresh)
        if self.shared is not None:  # and their copies in the bucket of a scale-out deployment
            removed += self.shared.sweep_objects(previews, keys, cutoff)
        return removed

    # ------------------------------------------------------------------ items
    def encode_clouds(self, points: np.ndarray) -> tuple[Codes, Codes, torch.Tensor]:
        """Normalised clouds ``[B, P, 3]`` -> (their point codes, the codes of their canonical renders,
        the renders ``[B, 3, S, S]``): what a cloud's two items hold."""
        enc = self.encoder
        with self.model_lock:
            pts = enc.points_tensor(points)
            imgs = enc.render_points(pts)
            return enc.encode_point_tensors(pts), enc.encode_image_tensors(imgs), imgs

    def encode_pictures(self, images: Sequence[Image.Image]) -> Codes:
        """Validated RGB pictures -> their codes (what an uploaded picture's item holds)."""
        import torch

        enc = self.encoder
        x = torch.stack([enc.image_tensor(im) for im in images])
        with self.model_lock:
            return enc.encode_image_tensors(x)

    def add_clouds(self, points: np.ndarray, names: Sequence[str], labels: Sequence[str | None],
                   source: str) -> list[int]:
        """Index normalised clouds ``[B, P, 3]`` as points and as rendered images; returns the new ids."""
        if len(points) == 0:
            return []
        point_codes, image_codes, imgs = self.encode_clouds(points)
        pixels = to_uint8(imgs.cpu()).numpy()
        keys = [uuid.uuid4().hex for _ in range(len(points))]

        def build(i: int, key: str) -> list[dict]:
            self._save_cloud(key, points[i])
            preview = self._save_png(key, Image.fromarray(pixels[i]))
            common = {"name": str(names[i]), "label": labels[i], "source": source, "preview": preview,
                      "item_key": key}
            return [{"modality": "points", "codes": {b: c[i] for b, c in point_codes.items()}, **common},
                    {"modality": "image", "codes": {b: c[i] for b, c in image_codes.items()}, **common}]

        return self._store(keys, build)

    def add_images(self, images: Sequence[Image.Image], names: Sequence[str], labels: Sequence[str | None],
                   source: str) -> list[int]:
        """Index validated RGB pictures as image items; returns the new ids."""
        if not images:
            return []
        codes = self.encode_pictures(images)
        keys = [uuid.uuid4().hex for _ in images]

        def build(i: int, key: str) -> list[dict]:
            thumb = images[i].copy()
            thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            return [{"modality": "image", "name": str(names[i]), "label": labels[i], "source": source,
                     "preview": self._save_png(key, thumb), "item_key": key,
                     "codes": {b: c[i] for b, c in codes.items()}}]

        return self._store(keys, build)

    def add_dataset(self, path: Path, source: str, batch_size: int = 32,
                    progress: Callable[[int, int], None] | None = None, start: int = 0) -> int:
        """Index the shapes of a dataset ``.npz`` from index ``start`` on (the ones before are already
        indexed: a resumed job); ``progress(n_done, n_total)`` after each batch."""
        ds = load_dataset(path)
        classes = [str(c) for c in ds.classes]
        n = len(ds)
        for s in range(min(start, n), n, batch_size):
            e = min(n, s + batch_size)
            self.add_clouds(ds.points[s:e], list(ds.names[s:e]), [classes[int(v)] for v in ds.labels[s:e]], source)
            if progress is not None:
                progress(e, n)
        return n


def build_demo_gallery(writer: ItemWriter, demo_data: Path, batch_size: int = 32,
                       progress: Callable[[int, int], None] | None = None) -> int:
    """Index the demo set into an empty store (source ``"demo"``); returns the number of shapes."""
    logger.info("building the demo gallery from %s", demo_data)
    n = writer.add_dataset(demo_data, source="demo", batch_size=batch_size, progress=progress)
    logger.info("demo gallery: %d shapes indexed as points and images", n)
    return n
