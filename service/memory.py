"""Giving freed heap memory back to the operating system (glibc ``malloc_trim``).

Model calls, renders, PNG encoding and decoded uploads allocate and free tens of MiB per batch from many
threads (the inference worker, the job runner, the request thread pool). glibc keeps what they free in its
arenas (up to 8 per core) instead of returning it to the system, so the service's RSS grows well beyond
what it holds. Measured during bulk imports with searches beside them (docs/reliability.md, "Load"): no
Python object and nothing in the store grows per item, ~110-170 MiB of RSS is free memory held by the
allocator, and one ``malloc_trim(0)`` gives it back.

:class:`MemoryTrimmer` calls ``malloc_trim(0)`` from a daemon thread every ``interval_s`` seconds. Where the
C library is not glibc (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where the C library is not glibc."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_MALLOC_TRIM = _load_malloc_trim()
#: True where :func:`trim` really gives memory back (glibc).
AVAILABLE = _MALLOC_TRIM is not None


def rss_bytes() -> int | None:
    """The resident set size of this process (Linux), or ``None``."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import resource

    return pages * resource.getpagesize()


def trim() -> bool:
    """Return the free memory of every malloc arena to the system; ``False`` (and nothing done) without glibc."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class MemoryTrimmer:
    """Calls :func:`trim` every ``interval_s`` seconds on a daemon thread (nothing without glibc or when
    ``interval_s`` is 0)."""

    def __init__(self, interval_s: float):
        self.interval_s = float(interval_s)
        self.trims = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return AVAILABLE and self.interval_s > 0

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cmah-malloc-trim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            before = rss_bytes()
            t0 = time.perf_counter()
            trim()
            self.trims += 1
            after = rss_bytes()
            if before is not None and after is not None and logger.isEnabledFor(logging.DEBUG):
                logger.debug("malloc_trim: RSS %.0f -> %.0f MiB in %.1f ms", before / 2**20, after / 2**20,
                             (time.perf_counter() - t0) * 1000)


__all__ = ["AVAILABLE", "MemoryTrimmer", "rss_bytes", "trim"]
