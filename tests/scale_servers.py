"""Real servers for the scale-out tests: a Milvus standalone server and an S3 server, on this machine.

* Milvus: the PyPI package ``milvus`` (the embedded Milvus standalone server, 2.3.5: the ``milvus`` binary
  with its embedded etcd and local storage, no Docker), spoken to over gRPC by the project's pymilvus 2.5
  (see the ``dev`` extra of pyproject.toml for why these versions);
* S3: moto's server (``ThreadedMotoServer``), in this process, on a free port of 127.0.0.1.

Without the packages (outside CI) the tests that need them skip; in CI (``CI`` set) they fail instead.
Import the fixtures into a test module with ``from scale_servers import milvus_uri, s3_server  # noqa: F401``.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


def _need(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        msg = f"the Python package {module!r} is not installed (the {extra} extra of pyproject.toml)"
        if os.environ.get("CI"):
            pytest.fail(f"{msg}; CI installs it (scripts/setup.sh)")
        pytest.skip(msg)


#: the servers of this test process, started once whichever test modules import the fixtures (each import is
#: a fixture of its own to pytest) and stopped when the session ends
_STARTED: dict[str, object] = {}


@pytest.fixture(scope="session")
def milvus_uri(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URI of a real Milvus standalone server, started once per test session (~10-60 s)."""
    _need("milvus", "dev")
    _need("pymilvus", "milvus")
    if "milvus" in _STARTED:
        return str(_STARTED["milvus"])
    from milvus import MilvusServer

    server = MilvusServer(wait_for_started=False)
    base: Path = tmp_path_factory.mktemp("milvus-server")
    server.set_base_dir(str(base))
    t0 = time.monotonic()
    try:
        server.start()
        server.wait_started(600_000)  # a loaded 2-core machine can take minutes
    except Exception as exc:  # noqa: BLE001 - report the server's own log
        log = base / "logs" / "milvus-stderr.log"
        tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
        server.stop()
        pytest.fail(f"the Milvus server did not start: {exc}\n{tail}")
    print(f"Milvus {server.listen_port} started in {time.monotonic() - t0:.1f} s")  # noqa: T201
    request.config.add_cleanup(server.stop)
    _STARTED["milvus"] = f"http://127.0.0.1:{server.listen_port}"
    return str(_STARTED["milvus"])


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str = "test-access"
    secret_key: str = "test-secret"

    def env(self, bucket: str) -> dict[str, str]:
        """The ``CMAH_S3_*`` settings of a service using ``bucket`` on this server."""
        return {"CMAH_S3_ENDPOINT": self.endpoint, "CMAH_S3_BUCKET": bucket, "CMAH_S3_ACCESS_KEY": self.access_key,
                "CMAH_S3_SECRET_KEY": self.secret_key}


@pytest.fixture(scope="session")
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """An S3-compatible server (moto) on a free local port."""
    _need("moto", "dev")
    _need("boto3", "milvus")
    if "s3" not in _STARTED:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        request.config.add_cleanup(server.stop)
        host, port = server.get_host_and_port()
        _STARTED["s3"] = S3Server(f"http://{host}:{port}")
    return _STARTED["s3"]  # type: ignore[return-value]
