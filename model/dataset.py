"""The dataset format and the query / retrieval / training split.

A dataset is an ``.npz`` file with four arrays:

========== ================== ===============================================
key        dtype / shape      meaning
========== ================== ===============================================
points     float [N, P, 3]    point clouds (unit sphere, z up); P >= 1 points
labels     int [N]            class index of each shape, in ``[0, C)``
names      str [N]            a name per shape (unique ids are not required)
classes    str [C]            class names
========== ================== ===============================================

The split follows the CMAH paper's protocol, scaled to the file: a seeded random ``query`` set of
``round(N * 1600 / 9843)`` shapes (1,600 for the 9,843-shape ModelNet40 train file), the rest is the
``retrieval`` set (8,243 shapes), and training pairs are drawn from the retrieval set only (all of it
by default), so no query shape is ever seen in training.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REQUIRED_KEYS = ("points", "labels", "names", "classes")
#: Query fraction of the paper-style split, scaled to the ModelNet40 train file (1,600 of 9,843).
QUERY_FRACTION = 1600 / 9843
SPLIT_SEED = 20240715


class DatasetError(ValueError):
    """A dataset file that is not in the documented format; the message names the problem."""


@dataclass(frozen=True)
class PointDataset:
    """An in-memory dataset: points float32 [N, P, 3], labels int64 [N], names, classes."""

    points: np.ndarray
    labels: np.ndarray
    names: np.ndarray
    classes: np.ndarray
    source: str = ""
    sha256: str = ""

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def subset(self, idx: np.ndarray) -> PointDataset:
        idx = np.asarray(idx, dtype=np.int64)
        return PointDataset(self.points[idx], self.labels[idx], self.names[idx], self.classes,
                            self.source, self.sha256)

    def save(self, path: str | Path, dtype: str = "float16") -> None:
        save_dataset(path, self.points, self.labels, self.names, self.classes, dtype=dtype)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_dataset(path: str | Path) -> PointDataset:
    """Load and validate a dataset file; raises :class:`DatasetError` naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset file")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable .npz archive ({exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path}: a single .npy array, expected an .npz with {list(REQUIRED_KEYS)}")
    with npz:
        missing = [k for k in REQUIRED_KEYS if k not in npz.files]
        if missing:
            raise DatasetError(f"{path}: missing array(s) {missing}; found {sorted(npz.files)}")
        try:
            arrays = {k: npz[k] for k in REQUIRED_KEYS}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise DatasetError(f"{path}: unreadable array ({exc})") from None
    points = arrays["points"]
    if points.ndim != 3 or points.shape[2] != 3 or points.shape[1] < 1:
        raise DatasetError(f"{path}: 'points' must have shape [N, P, 3], got {list(points.shape)}")
    if not np.issubdtype(points.dtype, np.floating):
        raise DatasetError(f"{path}: 'points' must be floating point, got {points.dtype}")
    n = points.shape[0]
    if n == 0:
        raise DatasetError(f"{path}: the dataset is empty (0 shapes)")
    points = points.astype(np.float32)
    if not np.isfinite(points).all():
        raise DatasetError(f"{path}: 'points' contains NaN or Inf")
    labels, names, classes = arrays["labels"], arrays["names"], arrays["classes"]
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: 'labels' must be integers of shape [{n}], got {labels.dtype} "
                           f"{list(labels.shape)}")
    if names.shape != (n,) or names.dtype.kind not in "US":
        raise DatasetError(f"{path}: 'names' must be strings of shape [{n}], got {names.dtype} {list(names.shape)}")
    if classes.ndim != 1 or classes.shape[0] == 0 or classes.dtype.kind not in "US":
        raise DatasetError(f"{path}: 'classes' must be a non-empty 1-D string array")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= classes.shape[0]:
        raise DatasetError(f"{path}: 'labels' must lie in [0, {classes.shape[0]}), "
                           f"got [{labels.min()}, {labels.max()}]")
    return PointDataset(points, labels, names.astype(str), classes.astype(str), str(path), file_sha256(path))


def save_dataset(path: str | Path, points: np.ndarray, labels: np.ndarray, names, classes,
                 dtype: str = "float16") -> None:
    """Write a dataset file in the documented format (compressed), under exactly ``path``.

    Atomic: written to a hidden temporary file beside it, flushed to disk, then renamed, so an
    interrupted write never leaves a half-written dataset (nor replaces a good one). A missing folder
    raises ``DatasetError`` naming it.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise DatasetError(f"{path.parent}: no such directory (to write {path.name} in)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:          # a file object: numpy would append ".npz" to a bare name
            np.savez_compressed(
                f,
                points=np.asarray(points, dtype=dtype),
                labels=np.asarray(labels, dtype=np.uint8 if len(classes) <= 256 else np.int64),
                names=np.asarray(names, dtype=str),
                classes=np.asarray(classes, dtype=str),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Split:
    """Indices into a dataset: ``query`` and ``retrieval`` partition it; ``train`` is within retrieval.

    ``validation`` (empty unless asked for) is the first shapes of the retrieval set, held out of
    ``train``: validation queries for choosing models without the test queries (``cmah eval
    --validation``)."""

    query: np.ndarray
    retrieval: np.ndarray
    train: np.ndarray
    validation: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


def make_split(n: int, seed: int = SPLIT_SEED, n_query: int | None = None,
               n_train: int | None = None, holdout: int = 0) -> Split:
    """The documented split: seeded permutation; first ``n_query`` are queries, the rest retrieval.

    ``n_train`` (default: the whole retrieval set) training indices are the first ones of the
    retrieval set in that permutation, after the ``holdout`` validation shapes (default none), which
    are the retrieval set's first ones and never train. Each part keeps the permutation's (random) order: dataset files
    such as ModelNet40's are sorted by class, and mAP breaks Hamming ties in database order, so a
    class-sorted database would reward codes that merely tie (same-class items would sit together
    inside every tie group).
    """
    if n < 2:
        raise DatasetError(f"a split needs at least 2 shapes, got {n}")
    if n_query is None:
        n_query = int(round(n * QUERY_FRACTION))
    n_query = int(min(max(n_query, 1), n - 1))
    perm = np.random.default_rng(seed).permutation(n)
    query, retrieval = perm[:n_query], perm[n_query:]
    if not 0 <= holdout < len(retrieval):
        raise DatasetError(f"a validation holdout of {holdout} shapes needs 0 <= holdout < "
                           f"{len(retrieval)} (the retrieval set's size)")
    validation, pool = retrieval[:holdout], retrieval[holdout:]
    n_train = len(pool) if n_train is None else int(min(max(n_train, 1), len(pool)))
    return Split(query, retrieval, pool[:n_train], validation)
