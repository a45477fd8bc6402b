"""Search, item, health and metrics endpoints of the service (tiny weights, a 12-shape gallery)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from svc_helpers import brute_force, ply_bytes, png_bytes

from model.io import load_points, read_image
from service.app import create_app

GALLERY = 12  # shapes in the demo gallery (conftest.demo_npz)


def state(client: TestClient):
    return client.app.state.cmah


def test_demo_gallery_has_points_and_render_items(client):
    store = state(client).store
    assert store.count("points") == GALLERY and store.count("image") == GALLERY
    rec = store.get(1)
    assert rec.source == "demo" and rec.label and rec.preview.startswith("previews/")
    twin = store.get(2)
    assert {rec.modality, twin.modality} == {"points", "image"} and rec.item_key == twin.item_key


@pytest.mark.parametrize("bits", [16, 64])
def test_image_to_points_matches_brute_force(client, bits):
    img = png_bytes()
    r = client.post("/api/v1/search/image-to-points", files={"file": ("q.png", img, "image/png")},
                    params={"k": 7, "bits": bits})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["bits"] == bits and body["k"] == 7 and body["took_ms"] >= 0
    hits = body["results"]
    assert [h["rank"] for h in hits] == list(range(1, 8))
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
    st = state(client)
    code = st.encoder.encode_image(read_image(img))[bits]
    assert [(h["id"], h["distance"]) for h in hits] == brute_force(st.store, "points", code, bits, 7)
    for h in hits:
        rec = st.store.get(h["id"])
        assert rec.modality == "points" and h["name"] == rec.name and h["label"] == rec.label
        assert h["preview_url"] == f"/api/v1/items/{h['id']}/preview.png"


def test_points_to_images_matches_brute_force(client, shape_points):
    data = ply_bytes(shape_points[0])
    r = client.post("/api/v1/search/points-to-images", files={"file": ("q.ply", data)}, params={"k": 5})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    st = state(client)
    code = st.encoder.encode_points(load_points(data, name="q.ply"))[64]
    assert [(h["id"], h["distance"]) for h in hits] == brute_force(st.store, "image", code, 64, 5)
    assert all(st.store.get(h["id"]).modality == "image" for h in hits)


@pytest.mark.parametrize(("path", "kind", "target"), [("image-to-images", "image", "image"),
                                                      ("points-to-points", "points", "points")])
def test_same_modality_search(client, shape_points, path, kind, target):
    data, name = (png_bytes(), "q.png") if kind == "image" else (ply_bytes(shape_points[1]), "q.ply")
    r = client.post(f"/api/v1/search/{path}", files={"file": (name, data)}, params={"k": 3, "bits": 32})
    assert r.status_code == 200, r.text
    st = state(client)
    code = (st.encoder.encode_image(read_image(data)) if kind == "image"
            else st.encoder.encode_points(load_points(data, name=name)))[32]
    hits = r.json()["results"]
    assert [(h["id"], h["distance"]) for h in hits] == brute_force(st.store, target, code, 32, 3)


def test_k_larger_than_gallery_returns_all(client):
    r = client.post("/api/v1/search/image-to-points", files={"file": ("q.png", png_bytes())}, params={"k": 1000})
    assert r.status_code == 200 and len(r.json()["results"]) == GALLERY


@pytest.mark.parametrize("params", [{"k": 0}, {"k": 1001}, {"k": "x"}, {"bits": 48}])
def test_bad_query_parameters_are_422(client, params):
    r = client.post("/api/v1/search/image-to-points", files={"file": ("q.png", png_bytes())}, params=params)
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"


def test_missing_file_is_422(client):
    r = client.post("/api/v1/search/image-to-points")
    assert r.status_code == 422 and "file" in r.json()["detail"]


def test_item_preview_and_ply(client):
    st = state(client)
    pid = next(i for i in range(1, 5) if st.store.get(i).modality == "points")
    iid = pid + 1 if st.store.get(pid + 1).modality == "image" else pid - 1
    r = client.get(f"/api/v1/items/{pid}")
    assert r.status_code == 200
    item = r.json()
    assert item["modality"] == "points" and item["bits"] == [16, 32, 64]
    assert item["points_url"] == f"/api/v1/items/{pid}/points.ply"
    png = client.get(item["preview_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (st.encoder.image_size,) * 2
    ply = client.get(item["points_url"])
    assert ply.status_code == 200 and ply.content.startswith(b"ply\n")
    pts = load_points(ply.content, name="x.ply")
    assert pts.shape == (1024, 3) and np.isfinite(pts).all()
    assert client.get(f"/api/v1/items/{iid}").json()["points_url"] is None
    r = client.get(f"/api/v1/items/{iid}/points.ply")
    assert r.status_code == 404 and r.json()["error"] == "not_a_point_item"


@pytest.mark.parametrize("suffix", ["", "/preview.png", "/points.ply"])
def test_unknown_item_is_404(client, suffix):
    r = client.get(f"/api/v1/items/987654{suffix}")
    assert r.status_code == 404 and r.json() == {"error": "not_found", "detail": "no item with id 987654"}


def test_health_ready_metrics(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["items"] == 2 * GALLERY
    client.post("/api/v1/search/image-to-points", files={"file": ("q.png", png_bytes())})
    text = client.get("/metrics").text
    assert 'cmah_request_duration_seconds_count{method="POST",route="/api/v1/search/image-to-points"' in text
    assert 'cmah_inference_batch_size_count{kind="image"}' in text
    assert f'cmah_index_items{{bits="64",modality="points"}} {float(GALLERY)}' in text


def test_not_ready_before_startup(make_settings, tmp_path):
    app = create_app(make_settings(tmp_path))
    c = TestClient(app)  # no context manager: the lifespan does not run
    assert c.get("/health").status_code == 200
    r = c.get("/ready")
    assert r.status_code == 503 and r.json()["ready"] is False
    r = c.post("/api/v1/search/image-to-points", files={"file": ("q.png", png_bytes())})
    assert r.status_code == 503 and r.json()["error"] == "not_ready"


def test_openapi_and_unknown_route(client):
    spec = client.get("/openapi.json").json()
    for path in ("/api/v1/search/image-to-points", "/api/v1/search/points-to-images",
                 "/api/v1/items/{item_id}/points.ply", "/api/v1/admin/jobs"):
        assert path in spec["paths"]
    r = client.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
