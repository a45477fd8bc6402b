"""What the CPU image runs, exercised without a Docker engine.

The test runs scripts/install.sh with the arguments of docker/Dockerfile's last install step in a
fresh virtual environment, then starts the Dockerfile's CMD (`cmah serve ...`, host, port and data
directory swapped for local ones) and polls /ready with docker/healthcheck.py, the image's
HEALTHCHECK, until the service is ready; SIGTERM (what `docker stop` sends) must then shut it down
cleanly.

The one difference from the image, to keep it cheap: the fresh venv sees this environment's
site-packages through a .pth file, so torch and the other dependencies (several GB) count as already
installed and pip reuses them instead of downloading; the torch index flag (--cpu, the PyTorch CPU
index, not reachable from CI) is dropped. The project itself is built and installed for real, not
editable, as in the image: that checks the console script and the package data (the demo set) that the
image relies on.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import site
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"


def dockerfile_install_args() -> list[str]:
    """Arguments of the Dockerfile's last `scripts/install.sh` call (the project install)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text()).replace('"${CMAH_EXTRAS}"', "''")
    calls = [shlex.split(part) for line in text.splitlines() if line.startswith("RUN ")
             for part in line[4:].split("&&") if "scripts/install.sh" in part]
    words = calls[-1]
    return words[words.index("scripts/install.sh") + 1:]


def copy_build_context(dest: Path) -> Path:
    """Lay out what the Dockerfile's build stage COPYs into its WORKDIR, under `dest` (Docker's rules: a
    directory's contents go into the target; a file into a target ending in /). Returns `dest`.

    Installing from there also shows that those COPYs are enough, and keeps pip's in-tree build
    (build/) out of the work tree.
    """
    build_stage = DOCKERFILE.read_text().split("\nFROM ")[1]
    for line in re.sub(r"\\\n", " ", build_stage).splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            *sources, target = line.split()[1:]
            for src in sources:
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, dest / target, ignore=shutil.ignore_patterns("__pycache__"),
                                    dirs_exist_ok=True)
                else:
                    out = dest / target / Path(src).name if target.endswith("/") else dest / target
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / src, out)
    return dest


def dockerfile_cmd() -> list[str]:
    return json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.M).group(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_image_install_script_and_entrypoint(tmp_path: Path, tiny_weights: Path, synth_npz: Path) -> None:
    args = dockerfile_install_args()
    assert args[-1] == "/opt/venv" and "--cpu" in args, args

    # A fresh venv on the base interpreter, overlaid on this environment's packages (see the docstring).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    venv_site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    (venv_site / "_cmah_test_overlay.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    src = copy_build_context(tmp_path / "src")
    install = ["bash", str(src / "scripts" / "install.sh"), *[a for a in args[:-1] if a != "--cpu"], str(venv)]
    proc = subprocess.run(install, capture_output=True, text=True, timeout=900, cwd=src)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[install] ok: torch" in proc.stdout

    # Installed into the venv, not editable; the demo set is there as package data.
    where = subprocess.run([str(py), "-c", "import service.settings as s; print(s.__file__); print(s.DEMO_DATA)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where
    assert Path(where[1]).is_file()
    assert (venv / "bin" / "cmah").is_file()

    # The image's CMD, on a local port and data directory, with tiny weights and a small demo gallery.
    cmd = dockerfile_cmd()
    port = free_port()
    data_dir = tmp_path / "data"
    swap = {"cmah": str(venv / "bin" / "cmah"), "0.0.0.0": "127.0.0.1", "8000": str(port), "/data": str(data_dir)}
    cmd = [swap.get(w, w) for w in cmd]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMAH_")}
    env.update(CMAH_WEIGHTS_DIR=str(tiny_weights), CMAH_DEMO_DATA=str(synth_npz), CMAH_DEVICE="cpu",
               CMAH_TORCH_THREADS="1", CMAH_JOB_BATCH_SIZE="16", CMAH_LOG_LEVEL="INFO")
    log_path = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}/ready"
    with log_path.open("w") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
        try:
            deadline = time.monotonic() + 300
            check = None
            while time.monotonic() < deadline:
                assert server.poll() is None, f"server exited {server.returncode}:\n{log_path.read_text()}"
                check = subprocess.run([str(py), str(HEALTHCHECK), url], capture_output=True, text=True, timeout=30)
                if check.returncode == 0:
                    break
                time.sleep(1)
            assert check is not None and check.returncode == 0, f"{check}\n{log_path.read_text()}"
            with urllib.request.urlopen(url, timeout=10) as resp:
                ready = json.load(resp)
            assert ready["ready"] is True and ready["items"] > 0, ready
        finally:
            server.send_signal(signal.SIGTERM)  # what `docker stop` sends
            try:
                rc = server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
                raise
    # A clean shutdown; uvicorn then re-raises the SIGTERM it caught, so the exit is by that signal (143
    # in `docker ps`), or 0 with uvicorn releases that do not.
    log_text = log_path.read_text()
    assert rc in (0, -signal.SIGTERM), log_text
    assert "Application shutdown complete" in log_text and "Traceback" not in log_text, log_text
    assert data_dir.is_dir() and any(data_dir.iterdir())
    # Stopped: the health check now fails.
    assert subprocess.run([str(py), str(HEALTHCHECK), url], capture_output=True, timeout=30).returncode == 1
