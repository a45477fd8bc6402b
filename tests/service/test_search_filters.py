"""Filters, more-like-this and where hits come from, through the HTTP API: label / source / max_distance /
distinct on the search endpoints and GET /api/v1/items/{id}/similar, against a brute force over the store."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from svc_helpers import png_bytes

SEARCH_PATHS = ("image-to-points", "points-to-images", "image-to-images", "points-to-points")
JOB = "job:copies"


@pytest.fixture(scope="module")
def gallery(client: TestClient) -> list:
    """The demo gallery plus a job's copies of its point items (same names, codes and labels, larger ids):
    every point shape answers twice, as it does when a job indexes shapes the demo gallery holds."""
    store = client.app.state.cmah.store
    demo = [r for r in store.get_many(range(1, 200)) if r is not None]
    copies = [{"modality": r.modality, "name": r.name, "label": r.label, "source": JOB, "codes": r.codes}
              for r in demo if r.modality == "points"]
    store.add(copies)
    return [r for r in store.get_many(range(1, 200)) if r is not None]


def reference(records: list, modality: str, code: np.ndarray, bits: int, k: int, labels=None, sources=None,
              max_distance=None, distinct=False) -> list[tuple[int, int]]:
    """(id, distance) of the answer, by brute force: unpacked bits, sort by (distance, id), filter, collapse."""
    q = np.unpackbits(code)
    rows = []
    for r in records:
        if r.modality != modality or bits not in r.codes:
            continue
        if (labels and r.label not in labels) or (sources and r.source not in sources):
            continue
        d = int((np.unpackbits(r.codes[bits]) != q).sum())
        if max_distance is None or d <= max_distance:
            rows.append((d, r.id, r.name))
    rows.sort()
    out, seen = [], set()
    for d, i, name in rows:
        if distinct and name in seen:
            continue
        seen.add(name)
        out.append((i, d))
    return out[:k]


def pairs(body: dict) -> list[tuple[int, int]]:
    return [(h["id"], h["distance"]) for h in body["results"]]


def test_hits_say_where_they_come_from(client, gallery) -> None:
    by_id = {r.id: r for r in gallery}
    for path, modality in (("image-to-points", "points"), ("image-to-images", "image")):
        r = client.post(f"/api/v1/search/{path}", files={"file": ("q.png", png_bytes())}, params={"k": 30})
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert hits and all(h["modality"] == modality for h in hits)
        assert all(h["source"] == by_id[h["id"]].source for h in hits)
        if modality == "points":
            assert {h["source"] for h in hits} == {"demo", JOB}


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_similar_matches_brute_force_under_every_filter(client, gallery, bits: int) -> None:
    points = [r for r in gallery if r.modality == "points"]
    labels = sorted({r.label for r in points if r.label})
    for item in (points[0], points[-1]):
        for target, modality in (("points", "points"), ("images", "image")):
            for flt in ({}, {"label": labels[:1]}, {"label": labels[:2]}, {"source": [JOB]},
                        {"source": ["demo", JOB], "label": labels[1:2]}, {"max_distance": bits // 4},
                        {"label": ["no such label"]}, {"distinct": "name"},
                        {"distinct": "name", "source": ["demo", JOB], "max_distance": bits // 2}):
                for k in (1, 3, 50):
                    r = client.get(f"/api/v1/items/{item.id}/similar",
                                   params={"target": target, "k": k, "bits": bits, **flt})
                    assert r.status_code == 200, r.text
                    want = reference(gallery, modality, item.codes[bits], bits, k, flt.get("label"),
                                     flt.get("source"), flt.get("max_distance"), "distinct" in flt)
                    assert pairs(r.json()) == want, (target, flt, k)


def test_more_like_this_finds_the_item_itself_first(client, gallery) -> None:
    for item in gallery[:6]:
        body = client.get(f"/api/v1/items/{item.id}/similar", params={"k": 50}).json()
        zeros = [h["id"] for h in body["results"] if h["distance"] == 0]
        assert item.id in zeros and zeros == sorted(zeros)
        assert all(h["modality"] == item.modality for h in body["results"])
        assert body["results"][0]["distance"] == 0 and body["results"][0]["id"] == min(zeros)


def test_distinct_keeps_the_nearest_copy_and_k_names(client, gallery) -> None:
    points = [r for r in gallery if r.modality == "points"]
    names = {r.name for r in points}
    demo_ids = {r.id for r in points if r.source == "demo"}
    item = points[0]
    plain = client.get(f"/api/v1/items/{item.id}/similar", params={"k": len(names)}).json()["results"]
    assert len({h["name"] for h in plain}) < len(plain)  # repeats without distinct
    body = client.get(f"/api/v1/items/{item.id}/similar", params={"k": len(names), "distinct": "name"}).json()
    hits = body["results"]
    assert len(hits) == len(names) and {h["name"] for h in hits} == names  # k distinct names, inside the search
    assert all(h["id"] in demo_ids for h in hits)  # same code: the copy with the smaller id (the demo's) wins


def test_search_upload_with_filters(client, gallery) -> None:
    labels = sorted({r.label for r in gallery if r.label and r.modality == "points"})
    for params in ({"label": labels[:2], "k": 4}, {"source": JOB, "k": 50}, {"max_distance": 20, "k": 50},
                   {"label": labels[0], "source": "demo", "distinct": "name", "k": 50}):
        r = client.post("/api/v1/search/image-to-points", files={"file": ("q.png", png_bytes())}, params=params)
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        wanted_labels = params.get("label")
        if isinstance(wanted_labels, str):
            wanted_labels = [wanted_labels]
        matching = [x for x in gallery if x.modality == "points" and (not wanted_labels or x.label in wanted_labels)
                    and x.source == params.get("source", x.source)]
        assert all(h["label"] in (wanted_labels or [h["label"]]) for h in hits)
        assert all(h["source"] == params.get("source", h["source"]) for h in hits)
        assert all(h["distance"] <= params.get("max_distance", 64) for h in hits)
        if "max_distance" not in params and "distinct" not in params:
            assert len(hits) == min(params["k"], len(matching))
        if "distinct" in params:
            assert len(hits) == len({x.name for x in matching}) == len({h["name"] for h in hits})


@pytest.mark.parametrize(("query", "param"), [
    ("max_distance=-1", "max_distance"), ("max_distance=65", "max_distance"), ("max_distance=x", "max_distance"),
    ("label=", "label"), ("source=", "source"), ("distinct=label", "distinct"), ("k=0", "k"), ("k=1001", "k"),
    ("bits=8", "bits"), ("target=cats", "target"), ("label=" + "x" * 257, "label"),
    ("&".join(["label=a"] * 257), "label"),
])
def test_bad_values_are_422_naming_the_parameter(client, gallery, query: str, param: str) -> None:
    r = client.get(f"/api/v1/items/1/similar?{query}")
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request" and param in r.json()["detail"]
    if param != "target":
        r = client.post(f"/api/v1/search/image-to-points?{query}", files={"file": ("q.png", png_bytes())})
        assert r.status_code == 422 and param in r.json()["detail"], r.text


def test_similar_unknown_item_is_404(client, gallery) -> None:
    for item_id in (10_000, 2**63):
        r = client.get(f"/api/v1/items/{item_id}/similar")
        assert r.status_code == 404 and r.json() == {"error": "not_found", "detail": f"no item with id {item_id}"}
    r = client.get("/api/v1/items/0/similar")
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"


def test_openapi_documents_the_filters(client) -> None:
    spec = client.get("/openapi.json").json()
    paths = [f"/api/v1/search/{p}" for p in SEARCH_PATHS] + ["/api/v1/items/{item_id}/similar"]
    for path in paths:
        op = next(iter(spec["paths"][path].values()))
        params = {p["name"]: p["schema"] for p in op["parameters"]}
        label = next(s for s in params["label"]["anyOf"] if s["type"] == "array")
        assert label["maxItems"] == 256 and label["items"]["minLength"] == 1 and label["items"]["maxLength"] == 256
        assert next(s for s in params["source"]["anyOf"] if s["type"] == "array")["maxItems"] == 256
        dist = next(s for s in params["max_distance"]["anyOf"] if s["type"] == "integer")
        assert (dist["minimum"], dist["maximum"]) == (0, 64)
        assert {"const": "name", "type": "string"} in params["distinct"]["anyOf"]
        assert (params["k"]["minimum"], params["k"]["maximum"]) == (1, 1000)
        assert params["bits"]["enum"] == [16, 32, 64]
        hit = spec["components"]["schemas"]["SearchHit"]
        assert {"source", "modality"} <= set(hit["required"])
    similar = spec["paths"]["/api/v1/items/{item_id}/similar"]["get"]
    assert "404" in similar["responses"] and "422" in similar["responses"]
