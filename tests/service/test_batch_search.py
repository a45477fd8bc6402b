"""``POST /api/v1/search/{query}-to-{target}/batch``: per-file answers equal the single search's, bad files
answer alone, order is kept, the limit is enforced, and the good files share one model call."""

from __future__ import annotations

import pytest
import torch
from svc_helpers import ply_bytes, png_bytes

from service.routes.batch import MAX_BATCH_FILES

GALLERY = 12  # shapes in the demo gallery (conftest.demo_npz)
SINGLE = "/api/v1/search/{}"
BATCH = "/api/v1/search/{}/batch"


def _single(client, path: str, name: str, data: bytes, **params) -> dict:
    r = client.post(SINGLE.format(path), files={"file": (name, data)}, params=params)
    return r.json() | {"status": r.status_code}


def test_good_and_bad_files_mixed_keep_order_and_equal_single_search(client, shape_points):
    files = [("red.png", png_bytes(color=(200, 30, 30))),
             ("garbage.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40),      # a PNG header, then nothing usable
             ("blue.png", png_bytes(size=64, color=(20, 40, 220))),
             ("cloud.png", ply_bytes(shape_points[0])),                 # a PLY under a picture's name
             ("empty.png", b""),
             ("green.png", png_bytes(size=48, color=(10, 200, 10)))]
    r = client.post(BATCH.format("image-to-points"), files=[("file", f) for f in files],
                    params={"k": 4, "bits": 32})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["bits"] == 32 and body["k"] == 4
    queries = body["queries"]
    assert [q["filename"] for q in queries] == [name for name, _ in files]
    for (name, data), q in zip(files, queries, strict=True):
        want = _single(client, "image-to-points", name, data, k=4, bits=32)
        if want["status"] == 200:
            assert "error" not in q and q["results"] == want["results"], name
            assert len(q["results"]) == 4
        else:
            assert "results" not in q, name
            assert (q["error"], q["detail"]) == (want["error"], want["detail"]), name
    assert [("error" in q) for q in queries] == [False, True, False, True, True, False]
    assert queries[3]["error"] == "not_an_image" and queries[4]["error"] == "empty"


@pytest.mark.parametrize(("path", "kind"), [("points-to-images", "points"), ("points-to-points", "points"),
                                            ("image-to-images", "image")])
def test_other_directions_equal_single_search(client, shape_points, path, kind):
    if kind == "points":
        files = [(f"s{i}.ply", ply_bytes(p, binary=bool(i % 2))) for i, p in enumerate(shape_points)]
    else:
        files = [(f"p{i}.png", png_bytes(size=32 + 8 * i, color=(40 * i, 90, 200 - 40 * i))) for i in range(4)]
    r = client.post(BATCH.format(path), files=[("file", f) for f in files], params={"k": 5})
    assert r.status_code == 200, r.text
    for (name, data), q in zip(files, r.json()["queries"], strict=True):
        assert q["filename"] == name
        assert q["results"] == _single(client, path, name, data, k=5)["results"]


def test_one_model_call_for_the_whole_batch(client):
    engine = client.app.state.cmah.engine
    n = 12
    files = [("file", (f"q{i}.png", png_bytes(size=24 + 4 * i, color=(10 * i, 100, 50)))) for i in range(n)]
    client.post(BATCH.format("image-to-images"), files=files[:1])  # warm
    before_batches, before_items = engine.batches, engine.items
    r = client.post(BATCH.format("image-to-images"), files=files, params={"k": 3})
    assert r.status_code == 200 and len(r.json()["queries"]) == n
    assert engine.items - before_items == n
    assert engine.batches - before_batches == 1, "the batch took more than one model call"


def test_the_limit_of_files(client):
    png = png_bytes(size=16)
    r = client.post(BATCH.format("image-to-points"), params={"k": 1},
                    files=[("file", (f"q{i}.png", png)) for i in range(MAX_BATCH_FILES)])
    assert r.status_code == 200 and len(r.json()["queries"]) == MAX_BATCH_FILES
    r = client.post(BATCH.format("image-to-points"),
                    files=[("file", (f"q{i}.png", png)) for i in range(MAX_BATCH_FILES + 1)])
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "too_many_parts" and str(MAX_BATCH_FILES) in r.json()["detail"]


def test_refusals_of_the_whole_request(client):
    url = BATCH.format("image-to-points")
    r = client.post(url, data={"k": "3"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    r = client.post(url, files=[("file", ("a.png", png_bytes())), ("file", (None, "text"))])
    assert r.status_code == 422 and "number 2" in r.json()["detail"]
    for params in ({"k": 0}, {"k": 1001}, {"bits": 48}):
        r = client.post(url, files=[("file", ("a.png", png_bytes()))], params=params)
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", params


def test_openapi_documents_the_batch_routes(client):
    spec = client.get("/openapi.json").json()
    for path in ("image-to-points", "points-to-images", "image-to-images", "points-to-points"):
        op = spec["paths"][f"/api/v1/search/{path}/batch"]["post"]
        assert {"200", "400", "413", "415", "422", "503"} <= set(op["responses"])
        assert str(MAX_BATCH_FILES) in op["description"]
        ref = op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
        field = spec["components"]["schemas"][ref]["properties"]["file"]
        assert field["maxItems"] == MAX_BATCH_FILES and field["minItems"] == 1


def test_submit_many_is_all_or_none(client):
    from service.engine import InferenceEngine, QueueFull

    enc = client.app.state.cmah.encoder
    engine = InferenceEngine(enc, max_batch=8, max_pending=3, max_wait_ms=5000)
    engine.start(warm_up=False)
    try:
        img = [torch.zeros(3, enc.image_size, enc.image_size) for _ in range(4)]
        with pytest.raises(QueueFull):
            engine.submit_many("image", img)
        assert engine.pending == 0
        futures = engine.submit_many("image", img[:3])
        assert engine.pending == 3
    finally:
        engine.stop()
    assert all(f.done() for f in futures)


def test_filters_pass_through_as_on_the_single_search(client, shape_points):
    store = client.app.state.cmah.store
    labels = sorted({r.label for r in store.get_many(range(1, 3 * GALLERY)) if r is not None and r.label})
    chosen = labels[:2]
    files = [("a.ply", ply_bytes(shape_points[0])), ("b.ply", ply_bytes(shape_points[2]))]
    for params in ({"label": chosen}, {"source": ["demo"], "max_distance": 30}, {"distinct": "name"},
                   {"label": ["no-such-label"]}):
        params = {"k": 5, **params}
        r = client.post(BATCH.format("points-to-images"), files=[("file", f) for f in files], params=params)
        assert r.status_code == 200, r.text
        for (name, data), q in zip(files, r.json()["queries"], strict=True):
            want = _single(client, "points-to-images", name, data, **params)
            assert want["status"] == 200 and q["results"] == want["results"], params
            if "label" in params:
                assert all(h["label"] in params["label"] for h in q["results"])
            if "max_distance" in params:
                assert all(h["distance"] <= 30 and h["source"] == "demo" for h in q["results"])
    r = client.post(BATCH.format("points-to-images"), files=[("file", files[0])], params={"max_distance": -1})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
