"""Adding items to the store: codes, preview PNGs and stored point clouds.

A point cloud becomes two items sharing one ``item_key``: a ``points`` item and an ``image`` item (its
canonical render). Both get the render as preview (``previews/<key>.png``); the cloud itself is kept
as ``clouds/<key>.npy`` for ``GET /api/v1/items/{id}/points.ply``. An uploaded picture becomes one
``image`` item whose preview is a thumbnail.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from index.store import HashStore
from model.dataset import load_dataset
from model.encode import Encoder
from model.renderer import to_uint8

logger = logging.getLogger(__name__)

PREVIEW_DIR = "previews"
CLOUD_DIR = "clouds"
THUMBNAIL_SIZE = 256


class ItemWriter:
    """Encodes and stores items (thread-safe; model calls hold ``model_lock``)."""

    def __init__(self, data_dir: Path, store: HashStore, encoder: Encoder, model_lock: threading.Lock):
        self.data_dir = Path(data_dir)
        self.store = store
        self.encoder = encoder
        self.model_lock = model_lock
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

    def _save_png(self, key: str, img: Image.Image) -> str:
        rel = f"{PREVIEW_DIR}/{key}.png"
        tmp = self.data_dir / f"{rel}.tmp"
        img.save(tmp, format="PNG")
        tmp.replace(self.data_dir / rel)
        return rel

    # ------------------------------------------------------------------ items
    def add_clouds(self, points: np.ndarray, names: Sequence[str], labels: Sequence[str | None],
                   source: str) -> list[int]:
        """Index normalised clouds ``[B, P, 3]`` as points and as rendered images; returns the new ids."""
        if len(points) == 0:
            return []
        enc = self.encoder
        with self.model_lock:
            pts = enc.points_tensor(points)
            imgs = enc.render_points(pts)
            point_codes = enc.encode_point_tensors(pts)
            image_codes = enc.encode_image_tensors(imgs)
        pixels = to_uint8(imgs.cpu()).numpy()
        items = []
        for i in range(len(points)):
            key = uuid.uuid4().hex
            np.save(self.data_dir / CLOUD_DIR / f"{key}.npy", np.asarray(points[i], dtype=np.float32))
            preview = self._save_png(key, Image.fromarray(pixels[i]))
            common = {"name": str(names[i]), "label": labels[i], "source": source, "preview": preview,
                      "item_key": key}
            items.append({"modality": "points", "codes": {b: c[i] for b, c in point_codes.items()}, **common})
            items.append({"modality": "image", "codes": {b: c[i] for b, c in image_codes.items()}, **common})
        return self.store.add(items)

    def add_images(self, images: Sequence[Image.Image], names: Sequence[str], labels: Sequence[str | None],
                   source: str) -> list[int]:
        """Index validated RGB pictures as image items; returns the new ids."""
        if not images:
            return []
        import torch

        enc = self.encoder
        x = torch.stack([enc.image_tensor(im) for im in images])
        with self.model_lock:
            codes = enc.encode_image_tensors(x)
        items = []
        for i, im in enumerate(images):
            key = uuid.uuid4().hex
            thumb = im.copy()
            thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            items.append({"modality": "image", "name": str(names[i]), "label": labels[i], "source": source,
                          "preview": self._save_png(key, thumb), "item_key": key,
                          "codes": {b: c[i] for b, c in codes.items()}})
        return self.store.add(items)

    def add_dataset(self, path: Path, source: str, batch_size: int = 32,
                    progress: Callable[[int, int], None] | None = None) -> int:
        """Index every shape of a dataset ``.npz``; ``progress(n_done, n_total)`` after each batch."""
        ds = load_dataset(path)
        classes = [str(c) for c in ds.classes]
        n = len(ds)
        for s in range(0, n, batch_size):
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
