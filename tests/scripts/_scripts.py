"""Helpers shared by the tests of scripts/: run a script as a process (its library code is in model/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """scripts/NAME.py run with this interpreter from the repository root; output captured as text."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
