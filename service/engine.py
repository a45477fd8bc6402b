"""Inference engine with dynamic batching.

Callers (request handlers on the event loop) :meth:`InferenceEngine.encode` one preprocessed tensor;
a single worker thread collects queued requests of the same kind into a batch of up to ``max_batch``
items, waiting at most ``max_wait_ms`` after the oldest request arrived, runs the model once and
hands every caller its own codes. If a batch fails, its items are retried one by one so that one bad
item fails only its own caller. The queue is bounded: beyond ``max_pending`` waiting requests
:class:`QueueFull` is raised (answered as 503 with ``Retry-After``).

Callers that announce themselves while they prepare their input (:meth:`InferenceEngine.arriving`, the
search routes) let the batcher skip waiting when it would be for nothing: a batch of announced requests
waits only while other announced requests of its kind are still on their way (at most ``max_wait_ms``),
and a request that finds the engine idle (nothing queued or running, nobody else announced) is encoded at
once in its caller's thread (:meth:`InferenceEngine.encode_if_idle`). Requests that do not announce
themselves wait ``max_wait_ms`` for company as before.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from model.encode import Encoder

logger = logging.getLogger(__name__)

KINDS = ("image", "points")
Codes = dict[int, np.ndarray]


class QueueFull(RuntimeError):
    """Too many requests are waiting for the model."""


class EngineStopped(RuntimeError):
    """The engine is not running (not started yet, or shutting down)."""


@dataclass
class _Request:
    kind: str
    tensor: torch.Tensor
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.monotonic)
    #: submitted from inside :meth:`InferenceEngine.arriving`: the batcher knows when no more are coming
    announced: bool = False


class InferenceEngine:
    """Batches encode requests onto one model.

    Args:
        encoder: the model wrapper.
        max_batch: most items per model call.
        max_wait_ms: longest wait for more items after the oldest queued request arrived.
        max_pending: most requests waiting in the queue.
        on_batch: called with ``(kind, size)`` after each model call (metrics).
    """

    def __init__(self, encoder: Encoder, max_batch: int = 32, max_wait_ms: float = 5.0, max_pending: int = 256,
                 on_batch: Callable[[str, int], None] | None = None):
        self.encoder = encoder
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.max_pending = max(1, int(max_pending))
        self.on_batch = on_batch
        #: Held around every model call; bulk indexing takes it too so the model runs one call at a time.
        self.model_lock = threading.Lock()
        self._cv = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._thread: threading.Thread | None = None
        self._stopping = False
        #: requests announced by :meth:`arriving` and not submitted yet, per kind
        self._coming = dict.fromkeys(KINDS, 0)
        #: a model call of :meth:`encode_if_idle` is running in a caller's thread
        self._inline = False
        self.batches = 0
        self.items = 0
        self.largest_batch = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self, warm_up: bool = True) -> None:
        if self._thread is not None:
            return
        if warm_up:
            self.warm_up()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="cmah-inference", daemon=True)
        self._thread.start()

    def warm_up(self) -> None:
        """One model call of each kind (a batch that reaches every parallel worker thread of the encoder),
        so the first request does not pay for lazy initialisation."""
        t0 = time.perf_counter()
        enc = self.encoder
        n = enc.workers
        with self.model_lock:
            enc.encode_image_tensors(torch.zeros(n, 3, enc.image_size, enc.image_size))
            pts = torch.randn(n, enc.num_points, 3, generator=torch.Generator().manual_seed(0))
            enc.encode_point_tensors(pts / pts.norm(dim=-1).max())
        logger.info("inference engine warmed up in %.0f ms", (time.perf_counter() - t0) * 1000)

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._cv:
            while self._queue:
                req = self._queue.popleft()
                if req.future.set_running_or_notify_cancel():
                    req.future.set_exception(EngineStopped("the inference engine is shutting down"))

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopping

    @property
    def pending(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------ requests
    @contextmanager
    def arriving(self, kind: str) -> Iterator[None]:
        """Announce one request of ``kind`` while its input is being prepared: batches of announced requests
        wait for it, and only while some are announced. Inside the block the caller may try
        :meth:`encode_if_idle`; otherwise it calls :meth:`submit` / :meth:`encode` with ``announced=True``
        right after the block (with no ``await`` in between)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        with self._cv:
            self._coming[kind] += 1
        try:
            yield
        finally:
            with self._cv:
                self._coming[kind] -= 1
                self._cv.notify_all()  # a batch may have been waiting for this request

    def encode_if_idle(self, kind: str, tensor: torch.Tensor) -> Codes | None:
        """Encode one announced item (see :meth:`arriving`) in this thread when the engine is idle (nothing
        queued, no model call running, no other request announced): no queue, no wait, no hand-off to the
        worker. ``None`` when it is not idle: :meth:`submit` the item instead. Blocking; raises like a
        failed one-item batch does."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        with self._cv:
            if (not self.running or self._queue or self._inline or sum(self._coming.values()) > 1
                    or self.model_lock.locked()):
                return None
            self._inline = True
        try:
            try:
                codes = self._encode(kind, [tensor])
            except Exception:
                logger.warning("encoding one %s item failed", kind, exc_info=True)
                raise RuntimeError(f"the model could not encode this {kind} input") from None
            self._count(kind, 1)
            return {b: c[0] for b, c in codes.items()}
        finally:
            with self._cv:
                self._inline = False
                self._cv.notify_all()

    def submit(self, kind: str, tensor: torch.Tensor, *, announced: bool = False) -> concurrent.futures.Future:
        """Queue one preprocessed item (image [3, S, S] or points [n, 3]); the future gets ``{bits: code}``.
        ``announced``: the caller is inside :meth:`arriving` (its batch need not wait for others in vain)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        req = _Request(kind, tensor, announced=announced)
        with self._cv:
            if not self.running:
                raise EngineStopped("the inference engine is not running")
            if len(self._queue) >= self.max_pending:
                raise QueueFull(f"{len(self._queue)} requests are already waiting for the model")
            self._queue.append(req)
            self._cv.notify_all()
        return req.future

    def submit_many(self, kind: str, tensors: list[torch.Tensor]) -> list[concurrent.futures.Future]:
        """Queue several items of one kind at once (all or none: :class:`QueueFull` when they do not all fit),
        so that the worker finds them together: up to ``max_batch`` of them go into one model call."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        reqs = [_Request(kind, t) for t in tensors]
        with self._cv:
            if not self.running:
                raise EngineStopped("the inference engine is not running")
            if len(self._queue) + len(reqs) > self.max_pending:
                raise QueueFull(f"{len(self._queue)} requests are already waiting for the model")
            self._queue.extend(reqs)
            self._cv.notify_all()
        return [r.future for r in reqs]

    async def encode(self, kind: str, tensor: torch.Tensor, *, announced: bool = False) -> Codes:
        """Awaitable :meth:`submit`."""
        return await asyncio.wrap_future(self.submit(kind, tensor, announced=announced))

    async def encode_many(self, kind: str, tensors: list[torch.Tensor]) -> list[Codes | BaseException]:
        """Awaitable :meth:`submit_many`: each item's codes, or the exception its model call ended with."""
        futures = [asyncio.wrap_future(f) for f in self.submit_many(kind, tensors)]
        return await asyncio.gather(*futures, return_exceptions=True)

    # ------------------------------------------------------------------ worker
    def _same_kind(self, kind: str) -> int:
        return sum(1 for r in self._queue if r.kind == kind)

    def _more_coming(self, kind: str) -> bool:
        """Worth waiting for company: a queued request of ``kind`` did not announce itself (it waits the
        whole ``max_wait``, as always), or announced ones of that kind are still being prepared."""
        return self._coming[kind] > 0 or any(r.kind == kind and not r.announced for r in self._queue)

    def _take_batch(self) -> list[_Request] | None:
        with self._cv:
            while not self._queue:
                if self._stopping:
                    return None
                self._cv.wait()
            first = self._queue[0]
            deadline = first.enqueued + self.max_wait
            while (not self._stopping and self._same_kind(first.kind) < self.max_batch
                   and self._more_coming(first.kind)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cv.wait(remaining)
            batch: list[_Request] = []
            rest: deque[_Request] = deque()
            for req in self._queue:
                if req.kind == first.kind and len(batch) < self.max_batch:
                    batch.append(req)
                else:
                    rest.append(req)
            self._queue = rest
        return [r for r in batch if r.future.set_running_or_notify_cancel()]

    def _encode(self, kind: str, tensors: list[torch.Tensor]) -> dict[int, np.ndarray]:
        x = torch.stack(tensors)
        with self.model_lock:
            if kind == "image":
                return self.encoder.encode_image_tensors(x)
            return self.encoder.encode_point_tensors(x)

    def _count(self, kind: str, n: int) -> None:
        self.batches += 1
        self.items += n
        self.largest_batch = max(self.largest_batch, n)
        if self.on_batch is not None:
            try:
                self.on_batch(kind, n)
            except Exception:
                logger.debug("on_batch callback failed", exc_info=True)

    def _run_batch(self, batch: list[_Request]) -> None:
        kind = batch[0].kind
        try:
            codes = self._encode(kind, [r.tensor for r in batch])
        except Exception:
            if len(batch) == 1:
                logger.warning("encoding one %s item failed", kind, exc_info=True)
                batch[0].future.set_exception(RuntimeError(f"the model could not encode this {kind} input"))
                return
            logger.warning("a batch of %d %s items failed; retrying them one by one", len(batch), kind)
            for req in batch:
                self._run_batch([req])
            return
        self._count(kind, len(batch))
        for i, req in enumerate(batch):
            req.future.set_result({b: c[i] for b, c in codes.items()})

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if batch:
                try:
                    self._run_batch(batch)
                except Exception as exc:  # never let the worker die
                    logger.exception("inference worker error")
                    for req in batch:
                        if not req.future.done():
                            req.future.set_exception(exc)
