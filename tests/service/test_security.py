"""Security: admin token (constant-time check, never logged, 401 vs 403), CORS off by default, security
headers on the UI and the API, and no stack trace in any answer."""

from __future__ import annotations

import hmac
import logging

import httpx
import pytest
from fastapi.testclient import TestClient
from svc_helpers import ADMIN_TOKEN, admin_headers, png_bytes

import service.auth
from service.app import create_app
from service.security import API_CSP, UI_CSP

JOB = "/api/v1/admin/jobs/no-such-job"
IMG = "/api/v1/search/image-to-points"
ORIGIN = "http://localhost:3000"


def test_admin_token_is_compared_with_compare_digest(client, monkeypatch):
    calls = []
    compare = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(service.auth.hmac, "compare_digest", spy)
    assert client.get(JOB, headers=admin_headers("wrong-token")).status_code == 403
    assert calls == [(b"wrong-token", ADMIN_TOKEN.encode())]
    calls.clear()
    assert client.get(JOB, headers=admin_headers()).status_code == 404
    # the guard middleware and the route's dependency share the check: each comparison is constant-time
    assert calls and set(calls) == {(ADMIN_TOKEN.encode(), ADMIN_TOKEN.encode())}


def test_missing_token_is_401_wrong_token_or_disabled_admin_is_403(client, make_settings, tmp_path):
    r = client.get(JOB)
    assert (r.status_code, r.json()["error"], r.headers["www-authenticate"]) == (401, "unauthorized", "Bearer")
    r = client.get(JOB, headers=admin_headers("wrong-token"))
    assert (r.status_code, r.json()["error"]) == (403, "forbidden") and "www-authenticate" not in r.headers
    app = create_app(make_settings(tmp_path, admin_token=None))
    r = TestClient(app).get(JOB, headers=admin_headers())  # the check runs before the service is needed
    assert (r.status_code, r.json()["error"]) == (403, "admin_disabled")


def test_admin_token_never_appears_in_logs(live_server):
    """DEBUG logs and uvicorn's access log of a real server, with right, wrong and malformed tokens."""
    wrong = "wr0ng-T0ken-zz9"
    with httpx.Client(base_url=live_server.url, timeout=60) as c:
        assert c.get(JOB, headers=admin_headers()).status_code == 404
        assert c.get(JOB, headers=admin_headers(wrong)).status_code == 403
        assert c.get(JOB, headers={"Authorization": f"Basic {ADMIN_TOKEN}"}).status_code == 401
        assert c.get(f"{JOB}?token={wrong}x", headers=admin_headers(wrong)).status_code == 403
    log = live_server.log()
    assert f'"GET {JOB} HTTP/1.1" 404' in log and f'"GET {JOB} HTTP/1.1" 403' in log  # the access log is on
    assert "\nDEBUG " in log  # and DEBUG logging
    assert ADMIN_TOKEN not in log
    assert wrong not in log.replace(f"token={wrong}x", "")  # only the query string the client chose to send


def test_cors_is_off_by_default(client):
    r = client.get("/health", headers={"Origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = client.options(IMG, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_origins_are_configurable(make_settings, tmp_path):
    c = TestClient(create_app(make_settings(tmp_path, cors_origins=[ORIGIN])))
    r = c.get("/health", headers={"Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    r = c.options(IMG, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = c.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def _assert_common_headers(r: httpx.Response) -> None:
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


@pytest.mark.parametrize("path", ["/", "/ui/app.js", "/ui/app.css", "/ui/vendor/three/three.min.js"])
def test_ui_has_security_headers_and_csp(client, path):
    r = client.get(path)
    assert r.status_code == 200
    _assert_common_headers(r)
    csp = r.headers["content-security-policy"]
    assert csp == UI_CSP and "unsafe-inline" not in csp and "unsafe-eval" not in csp


def test_api_answers_have_security_headers(client):
    answers = [client.get("/health"), client.get("/api/v1/items/1"), client.get("/api/v1/items/999999"),
               client.post(IMG, files={"file": ("q.png", png_bytes())}),
               client.post(IMG, content=b"x", headers={"content-length": str(1 << 31)}),
               client.get(JOB), client.get("/metrics"), client.get("/no/such/route")]
    assert [r.status_code for r in answers] == [200, 200, 404, 200, 413, 401, 200, 404]
    for r in answers:
        _assert_common_headers(r)
        assert r.headers["content-security-policy"] == API_CSP


def test_internal_error_is_500_json_without_a_trace(client, monkeypatch, caplog):
    def broken(*_a, **_k):
        raise RuntimeError("secret internals at /srv/cmah/index.py line 42")

    monkeypatch.setattr(client.app.state.cmah.store, "search", broken)
    c = TestClient(client.app, raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="service"):
        r = c.post(IMG, files={"file": ("q.png", png_bytes())})
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json() == {"error": "internal", "detail": "internal server error"}
    assert "Traceback" not in r.text and "secret" not in r.text and "RuntimeError" not in r.text
    assert any(r.exc_info for r in caplog.records)  # the trace goes to the log instead
