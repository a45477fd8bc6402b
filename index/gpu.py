"""Optional GPU scans (never used unless asked for; the CPU path never imports torch).

Two accelerators plug into :class:`index.flat.FaissFlatIndex`:

* :class:`FaissGpuAccelerator` -- ``faiss.GpuIndexBinaryFlat`` when the installed FAISS has GPU
  support (``faiss.StandardGpuResources``) and a GPU is visible. Its tie order is arbitrary, so the
  flat index post-processes it like the CPU scan (band overflows fall back to a CPU range search).
* :class:`TorchAccelerator` -- a popcount scan in torch (:func:`torch_hamming_topk`) when torch with
  CUDA is importable. It sorts by a composite ``(distance, row)`` key over rows kept in id order, so
  its result is already exact. :func:`torch_hamming_topk` also runs on CPU tensors (tested there).

FAISS is imported only by the FAISS accelerator, so the torch scan also runs where FAISS is not
installed (``bench/search_gpu.py`` on the GPU machine).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from index.exact import empty_result

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

DEVICES = ("cpu", "auto", "cuda")
#: largest k of FAISS GPU k-selection.
FAISS_GPU_MAX_K = 2048
_ROW_BITS = 40  # composite key = distance << 40 | row (rows < 2**40)


def faiss_gpu_available() -> bool:
    """True when FAISS is installed, was built with GPU support and sees at least one GPU."""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0


def torch_cuda_available() -> bool:
    """True when torch is installed and sees a CUDA device (imports torch only if it is installed)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def make_accelerator(device: str) -> Any | None:
    """Factory for :meth:`index.store.HashStore`'s ``device`` setting.

    ``"cpu"`` -> ``None`` (CPU FAISS, torch not imported); ``"auto"`` -> a GPU accelerator if one is
    available, else ``None``; ``"cuda"`` -> a GPU accelerator or ``RuntimeError``. Returns a
    zero-argument factory so that every (modality, bits) index gets its own accelerator.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return None
    if faiss_gpu_available():
        logger.info("search runs on the GPU through faiss.GpuIndexBinaryFlat")
        return FaissGpuAccelerator
    if torch_cuda_available():
        logger.info("search runs on the GPU through a torch popcount scan")
        return TorchAccelerator
    if device == "cuda":
        raise RuntimeError("device='cuda' but neither faiss GPU support nor torch with CUDA is available")
    logger.info("no GPU available: search runs on the CPU")
    return None


class FaissGpuAccelerator:
    """``faiss.GpuIndexBinaryFlat`` copy of a flat index (labels are rows, mapped back to ids)."""

    exact = False
    max_k = FAISS_GPU_MAX_K

    def __init__(self) -> None:
        import faiss

        self._faiss = faiss
        self._res = faiss.StandardGpuResources()
        self._index: Any = None
        self._ids = np.empty(0, dtype=np.int64)

    def rebuild(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Upload ``codes uint8 [N, B]`` (rows aligned with ``ids``)."""
        index = self._faiss.GpuIndexBinaryFlat(self._res, codes.shape[1] * 8)
        if len(codes):
            index.add(np.ascontiguousarray(codes))
        self._index, self._ids = index, np.asarray(ids, dtype=np.int64)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidates ``[Q, k]`` (ids, arbitrary tie order; -1 where missing)."""
        d, rows = self._index.search(np.ascontiguousarray(queries), k)
        ids = np.where(rows >= 0, self._ids[np.clip(rows, 0, None)], -1)
        return d, ids


def _popcount32(x: torch.Tensor) -> torch.Tensor:
    """SWAR popcount of non-negative int64 values below 2**32."""
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) & 0xFFFFFFFF) >> 24


def codes_to_words(codes: torch.Tensor) -> torch.Tensor:
    """``uint8 [N, B]`` codes -> ``int64 [N, ceil(B/4)]`` 32-bit words (zero-padded), for popcounts."""
    import torch

    n, nbytes = codes.shape
    nwords = (nbytes + 3) // 4
    padded = torch.zeros((n, nwords * 4), dtype=torch.int64, device=codes.device)
    padded[:, :nbytes] = codes.to(torch.int64)
    b = padded.view(n, nwords, 4)
    return (b[..., 0] << 24) | (b[..., 1] << 16) | (b[..., 2] << 8) | b[..., 3]


def torch_hamming_topk(
    query_codes: torch.Tensor, db_codes: torch.Tensor, k: int, *, chunk_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` Hamming search in torch, ties broken by ascending row index.

    Args:
        query_codes: ``uint8 [Q, B]`` on any device.
        db_codes: ``uint8 [N, B]`` on the same device.
        k: number of results (>= 1).
        chunk_rows: database rows scanned per step (bounds the ``[Q, chunk]`` temporaries); by
            default about 16M query-row pairs per step.

    Returns:
        ``(distances int32 [Q, min(k, N)], rows int64 [Q, min(k, N)])`` sorted by ``(distance, row)``.
    """
    import torch

    if db_codes.shape[0] >= 1 << _ROW_BITS:
        raise ValueError("torch_hamming_topk supports fewer than 2**40 rows")
    qw = codes_to_words(query_codes)
    if chunk_rows is None:
        chunk_rows = max(1024, (1 << 24) // max(1, query_codes.shape[0]))
    best: torch.Tensor | None = None
    for start in range(0, db_codes.shape[0], chunk_rows):
        dbw = codes_to_words(db_codes[start : start + chunk_rows])
        dist = _popcount32(qw[:, None, :] ^ dbw[None, :, :]).sum(-1)
        rows = torch.arange(start, start + dbw.shape[0], device=dist.device, dtype=torch.int64)
        keys = (dist << _ROW_BITS) | rows[None, :]
        if best is not None:
            keys = torch.cat([best, keys], dim=1)
        best = torch.topk(keys, min(k, keys.shape[1]), dim=1, largest=False, sorted=True).values
    if best is None:
        empty = torch.empty((query_codes.shape[0], 0), dtype=torch.int64, device=query_codes.device)
        return empty.to(torch.int32), empty
    return (best >> _ROW_BITS).to(torch.int32), best & ((1 << _ROW_BITS) - 1)


class TorchAccelerator:
    """Torch popcount scan on a CUDA device over rows kept in ascending id order (exact)."""

    exact = True
    max_k = 1 << 30

    def __init__(self, device: str = "cuda") -> None:
        import torch

        self._torch = torch
        self._device = torch.device(device)
        self._codes: Any = None
        self._ids = np.empty(0, dtype=np.int64)

    def rebuild(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Upload the codes sorted by id (so row order is id order)."""
        order = np.argsort(ids, kind="stable")
        self._ids = np.asarray(ids, dtype=np.int64)[order]
        self._codes = self._torch.from_numpy(np.ascontiguousarray(codes[order])).to(self._device)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Final exact result ``[Q, k]``, padded with -1."""
        out_d, out_i = empty_result(queries.shape[0], k)
        if self._codes is None or len(self._ids) == 0:
            return out_d, out_i
        q = self._torch.from_numpy(np.ascontiguousarray(queries)).to(self._device)
        d, rows = torch_hamming_topk(q, self._codes, k)
        d, rows = d.cpu().numpy(), rows.cpu().numpy()
        w = d.shape[1]
        out_d[:, :w] = d
        out_i[:, :w] = self._ids[rows]
        return out_d, out_i
