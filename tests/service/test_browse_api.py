"""GET /api/v1/items (browse: filters, pages) and GET /api/v1/stats against direct counts over the stored
items; bad parameters are 422 naming the parameter; the OpenAPI document states the limits."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.routes.browse import MAX_LIMIT, MAX_OFFSET, MAX_VALUES

ITEMS = "/api/v1/items"
LABELS = ["chair", "table", "lamp", None]
SOURCES = ["demo", "job:x", "import"]


@pytest.fixture(scope="module")
def filled(client: TestClient) -> TestClient:
    """The module's service with 120 more items (random labels, sources, modalities; some deleted)."""
    store = client.app.state.cmah.store
    rng = np.random.default_rng(40)
    items = [{"modality": ("image", "points")[int(rng.integers(2))], "name": f"extra-{j}",
              "label": LABELS[int(rng.integers(4))], "source": SOURCES[int(rng.integers(3))],
              "codes": {b: rng.integers(0, 256, b // 8, dtype=np.uint8) for b in (16, 32, 64)}} for j in range(120)]
    ids = store.add(items)
    store.delete(ids[::11])
    return client


def _records(client: TestClient) -> list:
    store = client.app.state.cmah.store
    return [r for r in store.get_many(range(1, 2 * store.count() + 50)) if r is not None]


def _params(labels=(), sources=(), modality=None, **extra) -> list[tuple[str, str]]:
    params = [("label", v) for v in labels] + [("source", v) for v in sources]
    if modality:
        params.append(("modality", modality))
    return params + [(k, str(v)) for k, v in extra.items()]


@pytest.mark.parametrize(("labels", "sources", "modality"), [
    ((), (), None), (("chair",), (), None), (("chair", "lamp"), (), "points"), ((), ("demo",), None),
    ((), ("job:x", "import"), "image"), (("table",), ("import", "demo"), "points"), (("no-such",), (), None),
    ((), ("job:none",), None), ((), (), "image"),
])
def test_browse_matches_a_direct_count(filled, labels, sources, modality):
    want = [r for r in _records(filled) if (not labels or r.label in labels) and (not sources or r.source in sources)
            and (modality is None or r.modality == modality)]
    body = filled.get(ITEMS, params=_params(labels, sources, modality, limit=MAX_LIMIT)).json()
    assert body["total"] == len(want) and (body["offset"], body["limit"]) == (0, MAX_LIMIT)
    assert [i["id"] for i in body["items"]] == [r.id for r in want]
    # the same fields as GET /api/v1/items/{id}
    for item in body["items"][:5]:
        assert item == filled.get(f"{ITEMS}/{item['id']}").json()


def test_pages_add_up(filled):
    want = [r.id for r in _records(filled) if r.label in ("chair", "table")]
    got, offset = [], 0
    while True:
        body = filled.get(ITEMS, params=_params(("chair", "table"), offset=offset, limit=7)).json()
        assert body["total"] == len(want)
        if not body["items"]:
            break
        assert len(body["items"]) <= 7
        got += [i["id"] for i in body["items"]]
        offset += 7
    assert got == want
    body = filled.get(ITEMS, params={"offset": MAX_OFFSET, "limit": 1}).json()
    assert body["items"] == [] and body["total"] == len(_records(filled))


def test_items_show_previews_and_clouds(filled):
    demo = filled.get(ITEMS, params=_params(sources=("demo",), modality="points", limit=1)).json()["items"][0]
    assert demo["preview_url"] == f"/api/v1/items/{demo['id']}/preview.png"
    assert demo["points_url"] == f"/api/v1/items/{demo['id']}/points.ply"
    assert filled.get(demo["preview_url"]).status_code == 200
    extra = filled.get(ITEMS, params=_params(sources=("import",), limit=1)).json()["items"][0]
    assert extra["preview_url"] is None and extra["points_url"] is None


def test_stats_are_direct_counts(filled):
    records = _records(filled)
    body = filled.get("/api/v1/stats").json()
    assert body["total"] == len(records) == filled.get("/ready").json()["items"]
    assert body["modalities"] == {"image": sum(r.modality == "image" for r in records),
                                  "points": sum(r.modality == "points" for r in records)}
    labels = Counter(r.label for r in records)
    assert body["unlabeled"] == labels.pop(None) > 0
    assert body["labels"] == dict(labels) and list(body["labels"]) == sorted(labels)
    assert body["sources"] == dict(Counter(r.source for r in records))
    # each count is what browsing with that one filter totals
    for label, n in body["labels"].items():
        assert filled.get(ITEMS, params={"label": label, "limit": 1}).json()["total"] == n
    for source, n in body["sources"].items():
        assert filled.get(ITEMS, params={"source": source, "limit": 1}).json()["total"] == n


@pytest.mark.parametrize(("params", "name"), [
    ({"limit": 0}, "limit"), ({"limit": MAX_LIMIT + 1}, "limit"), ({"limit": "ten"}, "limit"),
    ({"offset": -1}, "offset"), ({"offset": MAX_OFFSET + 1}, "offset"), ({"offset": 2**70}, "offset"),
    ({"modality": "text"}, "modality"), ({"label": "x" * 257}, "label"),
    ([("source", str(i)) for i in range(MAX_VALUES + 1)], "source"),
])
def test_bad_parameters_are_422_naming_them(client, params, name):
    r = client.get(ITEMS, params=params)
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), r.text
    assert f"query.{name}" in r.json()["detail"]


def test_openapi_documents_the_limits(client):
    spec = client.get("/openapi.json").json()
    params = {p["name"]: p for p in spec["paths"][ITEMS]["get"]["parameters"]}
    assert set(params) == {"label", "source", "modality", "offset", "limit"}
    assert (params["limit"]["schema"]["minimum"], params["limit"]["schema"]["maximum"]) == (1, MAX_LIMIT)
    assert (params["offset"]["schema"]["minimum"], params["offset"]["schema"]["maximum"]) == (0, MAX_OFFSET)
    label = next(s for s in params["label"]["schema"]["anyOf"] if s.get("type") == "array")
    assert label["maxItems"] == MAX_VALUES and label["items"]["maxLength"] == 256
    assert all(p.get("description") for p in params.values())
    assert "200" in spec["paths"]["/api/v1/stats"]["get"]["responses"]
