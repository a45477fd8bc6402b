"""Device selection and CPU thread settings."""

from __future__ import annotations

import os

import torch


def pick_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return dev


def set_cpu_threads(n: int | None = None) -> int:
    """Use ``n`` intra-op threads (default: CMAH_THREADS or all cores available to this process)."""
    if n is None:
        env = os.environ.get("CMAH_THREADS")
        if env:
            n = int(env)
        elif hasattr(os, "sched_getaffinity"):
            n = len(os.sched_getaffinity(0))
        else:
            n = os.cpu_count() or 1
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


def cpu_name() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo (falls back to ``platform``), for benchmark reports."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
