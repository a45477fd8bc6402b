"""Prometheus metrics: the label sets stay bounded whatever clients send."""

from __future__ import annotations

import re

from svc_helpers import png_bytes


def _series(text: str, name: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if line.startswith(name)}


def test_made_up_http_methods_share_one_label(client):
    """Invented method names (no token needed) must not each add a series: they are counted as ``other``."""
    client.get("/metrics")
    before = _series(client.get("/metrics").text, "cmah_request_duration_seconds_count")
    for i in range(20):
        client.request(f"FOO{i}", "/api/v1/admin/jobs")
        client.request(f"BAR{i}", "/health")
    text = client.get("/metrics").text
    after = _series(text, "cmah_request_duration_seconds_count")
    methods = set(re.findall(r'method="([^"]*)"', text))
    assert not {m for m in methods if m.startswith(("FOO", "BAR"))}, methods
    assert 'method="other"' in text
    assert len(after - before) <= 3, after - before  # 'other' on two paths (and /metrics itself)
    client.post("/api/v1/search/image-to-points", files={"file": ("q.png", png_bytes())})
    assert 'method="POST",route="/api/v1/search/image-to-points"' in client.get("/metrics").text
