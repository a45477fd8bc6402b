"""Schemathesis fuzzing of the whole HTTP API against its own OpenAPI document.

Every operation of the spec (``create_app().openapi()``, the document ``/openapi.json`` serves) is called
with requests derived from the spec: schemathesis' coverage phase (boundary and out-of-range values,
missing and wrongly typed parameters, unexpected HTTP methods) and then its fuzzing phase (``EXAMPLES``
generated requests per operation, schema-valid and schema-invalid ones), three times: without
credentials, with the admin token and with a wrong token. The server is a real uvicorn on a free loopback
port serving the app of conftest.py (tiny weights, the 12-shape demo gallery).

Checks on every response (schemathesis' own): no 5xx; the status code is documented for the operation;
the content type and the body match what the spec documents for that status; schema-invalid requests
are refused with a 4xx; schema-valid ones are not refused, except for the uploads (a schema cannot say
that the file must be a decodable image or 3D file, so random bytes rightly get 400/415/422; the batch
searches answer such files with an error entry in a 200, so schema-invalid file parts are not refused
there either: their own tests check their refusals). Checks of
this module on top: every error body is ``{"error", "detail"}`` JSON; the admin routes answer 401 without
a token and 403 with a wrong one whatever else is wrong with the request; the other routes never do.
The last test checks that the server is still up and searching.

Generation is deterministic (derandomized, no example database), so a run is the same locally and in CI;
``CMAH_SCHEMATHESIS_EXAMPLES`` sets the examples per operation and auth mode (default 20).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import schemathesis
import uvicorn
from svc_helpers import ADMIN_TOKEN, ply_bytes, png_bytes

from service.app import create_app
from service.settings import Settings

EXAMPLES = int(os.environ.get("CMAH_SCHEMATHESIS_EXAMPLES", "20"))
#: Headers of each auth mode.
AUTH: dict[str, dict[str, str]] = {
    "anonymous": {},
    "admin": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
    "wrong-token": {"Authorization": "Bearer not-the-admin-token"},
}
ADMIN_PREFIX = "/api/v1/admin/"
#: The upload operations: schema-valid requests carry random bytes, which are rightly refused.
UPLOADS = r"^/api/v1/(search/[a-z]+-to-[a-z]+|admin/jobs)$"
#: The batch searches: a bad file is an entry of a 200 answer (the others still answer), so a schema-invalid
#: file part (a "boolean" is the bytes ``true`` on the wire) is rightly accepted too.
BATCH_UPLOADS = r"^/api/v1/search/[a-z]+-to-[a-z]+/batch$"

SPEC = create_app(Settings(_env_file=None)).openapi()  # type: ignore[call-arg]
CONFIG = schemathesis.Config.from_dict({
    "seed": 20241,
    "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
    "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none", "mode": "all",
                   # the auth modes below set the Authorization header; schemathesis must not generate its own
                   "with-security-parameters": False},
    "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
    "operations": [{"include-path-regex": UPLOADS, "include-method": "POST",
                    "checks": {"positive_data_acceptance": {"enabled": False}}},
                   {"include-path-regex": BATCH_UPLOADS, "include-method": "POST",
                    "checks": {"positive_data_acceptance": {"enabled": False},
                               "negative_data_rejection": {"enabled": False}}}],
})
SCHEMA = schemathesis.openapi.from_dict(SPEC, config=CONFIG)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """The service under uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, settings: Settings):
        self.app = create_app(settings)
        self.url = f"http://127.0.0.1:{_free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-schemathesis", daemon=True)

    def start(self, timeout: float = 120.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                raise AssertionError("uvicorn exited during start-up")
            try:
                r = httpx.get(self.url + "/ready", timeout=5)
                if r.status_code == 200:
                    return
                last = r.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise AssertionError(f"service not ready after {timeout:g} s: {last}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, make_settings: Callable[..., Settings]) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("schemathesis")
    (root / "imports").mkdir()  # server-side imports enabled (an empty root: fuzzed paths are 403/404/415/422)
    server = LiveServer(make_settings(root / "data", import_root=root / "imports"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert not server.thread.is_alive(), "uvicorn did not stop"


@pytest.mark.parametrize("auth", list(AUTH))
@SCHEMA.parametrize()
def test_api_conforms_to_its_spec(case: schemathesis.Case, auth: str, live: LiveServer) -> None:
    response = case.call_and_validate(base_url=live.url, headers=AUTH[auth], timeout=60)
    status = response.status_code
    if status >= 400:
        body = response.json()
        assert set(body) == {"error", "detail"} and body["error"] and body["detail"], body
        assert "Traceback" not in body["detail"], body
    if status == 405:  # an unexpected method: refused by the router, before any route runs
        return
    if case.path.startswith(ADMIN_PREFIX) and auth != "admin":
        expected = 401 if auth == "anonymous" else 403
        assert status == expected, (auth, case.method, case.formatted_path, status, response.text)
        if status == 401:
            assert response.headers.get("www-authenticate") == ["Bearer"]
    elif status == 403 and case.path.endswith("/from-path"):  # a path outside the import root: refused
        assert response.json()["error"] in ("outside_import_root", "forbidden"), response.text
    else:
        assert status not in (401, 403), (auth, case.method, case.formatted_path, status, response.text)


def test_server_survives_fuzzing(live: LiveServer, shape_points) -> None:
    """Runs after the fuzzing above (same module-scoped server): alive, ready, serving its spec, searching."""
    assert live.thread.is_alive() and live.server.started
    with httpx.Client(base_url=live.url, timeout=60) as c:
        assert c.get("/health").json() == {"status": "ok"}
        ready = c.get("/ready")
        assert ready.status_code == 200 and ready.json()["items"] > 0, ready.text
        assert c.get("/openapi.json").json() == SPEC
        state = live.app.state.cmah
        assert state.engine is not None and state.engine.running
        for route, name, data in (("image-to-points", "q.png", png_bytes()),
                                  ("points-to-images", "q.ply", ply_bytes(shape_points[0])),
                                  ("points-to-points", "q.ply", ply_bytes(shape_points[1], binary=True)),
                                  ("image-to-images", "q.png", png_bytes(64, (20, 20, 200)))):
            r = c.post(f"/api/v1/search/{route}", files={"file": (name, data)}, params={"k": 3, "bits": 32})
            assert r.status_code == 200, (route, r.text)
            hits = r.json()["results"]
            assert 1 <= len(hits) <= 3 and [h["rank"] for h in hits] == list(range(1, len(hits) + 1)), hits
