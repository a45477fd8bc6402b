"""CUDA-graph replay of a model call for small batches (the bs1 latency path on a GPU).

At batch 1 the GPU waits on the host: the point encoder's farthest point sampling alone is a loop of
``num_groups`` steps of a few small kernels each, and every transformer block adds a dozen more, so a
call is hundreds of kernel launches that each take longer to issue than to run. :class:`GraphedCall`
captures ``fn`` once per input shape as a CUDA graph and then replays it: one launch per call.

It is an optional path, **off unless** ``CMAH_CUDA_GRAPHS=1``: it was written in a session whose GPU
time had run out, so neither its speed-up nor its codes have been checked on a GPU yet
(``bench/cuda_graphs.py`` and ``tests/model/test_cuda_graphs.py`` do both; ``scripts/gpu/device_run.sh
bench`` runs them). Even when it is on, the call is plain ``fn(x)`` on CPU tensors, for batches above
``max_batch``, while autograd records, and after a capture failed (the failure is logged once). A
replay runs the kernels of the eager call it was captured from, on a private copy of the input, and
returns copies of the outputs (so a later replay cannot overwrite them).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: set to "1" to turn CUDA-graph replay on (off by default until it has been measured on a GPU)
ENV_SWITCH = "CMAH_CUDA_GRAPHS"
#: untimed eager calls on a side stream before a capture (cuBLAS / allocator warm-up, as CUDA asks)
WARMUP_CALLS = 2

Output = Any  # a tensor, or a dict / list / tuple of tensors


def graphs_enabled() -> bool:
    """True when ``CMAH_CUDA_GRAPHS`` is ``1`` / ``true`` / ``on`` / ``yes``."""
    return os.environ.get(ENV_SWITCH, "0").strip().lower() in ("1", "true", "on", "yes")


def _clone(out: Output) -> Output:
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, dict):
        return {k: _clone(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_clone(v) for v in out)
    raise TypeError(f"cannot graph a call that returns {type(out).__name__}")


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    static_in: torch.Tensor
    static_out: Output
    done: torch.cuda.Event   # recorded after the last replay's outputs were copied


class GraphedCall:
    """``fn(x)`` for one tensor argument, replayed from a CUDA graph per (device, shape, dtype).

    Args:
        fn: the call; must not synchronise with the host (no ``.item()``, no shape that depends on
            values), which is true of the encoders in inference.
        max_batch: batches up to this size are graphed (larger ones keep the GPU busy without it).
        max_graphs: cached shapes at most; further shapes run eagerly.
        name: for the log.
    """

    def __init__(self, fn: Callable[[torch.Tensor], Output], *, max_batch: int = 8, max_graphs: int = 16,
                 name: str = "call"):
        self.fn = fn
        self.max_batch = max_batch
        self.max_graphs = max_graphs
        self.name = name
        self.failed = False
        self._graphs: dict[tuple, _Captured] = {}
        self._lock = threading.Lock()

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def usable(self, x: torch.Tensor) -> bool:
        """Whether this call would be replayed from a graph."""
        return (x.is_cuda and 0 < x.shape[0] <= self.max_batch and not self.failed and graphs_enabled()
                and not torch.is_grad_enabled() and not torch.cuda.is_current_stream_capturing()
                and not torch.compiler.is_compiling())

    def __call__(self, x: torch.Tensor) -> Output:
        if not self.usable(x):
            return self.fn(x)
        key = (x.device, tuple(x.shape), x.dtype)
        with self._lock:
            entry = self._graphs.get(key)
            if entry is None:
                if len(self._graphs) >= self.max_graphs:
                    return self.fn(x)
                entry = self._capture(x)
                if entry is None:
                    return self.fn(x)
                self._graphs[key] = entry
            stream = torch.cuda.current_stream(x.device)
            stream.wait_event(entry.done)            # the previous replay's outputs are copied out
            entry.static_in.copy_(x)
            entry.graph.replay()
            out = _clone(entry.static_out)
            entry.done.record(stream)
            return out

    def _capture(self, x: torch.Tensor) -> _Captured | None:
        try:
            static_in = x.detach().clone()
            side = torch.cuda.Stream(x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_CALLS):
                    self.fn(static_in)
            torch.cuda.current_stream(x.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.fn(static_in)
            _clone(static_out)                       # refuse unsupported outputs before first use
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(x.device))
        except Exception as exc:  # any capture failure means: run eagerly from now on
            self.failed = True
            logger.warning("CUDA graph capture of %s failed (%s: %s); running it eagerly",
                           self.name, type(exc).__name__, exc)
            return None
        logger.debug("captured a CUDA graph of %s for input %s", self.name, tuple(x.shape))
        return _Captured(graph, static_in, static_out, done)
