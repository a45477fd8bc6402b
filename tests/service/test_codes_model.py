"""Which weights made a data directory's codes: recorded, checked at start-up and by ``cmah index``, and
re-encoding with other weights gives exactly the codes a fresh index built with them would hold."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from svc_helpers import brute_force, png_bytes, wait_ready

from index.store import CODES_MODEL_KEY, HashStore
from model.encode import Encoder
from model.weights import weights_id
from service.app import create_app
from service.codes_model import (
    REENCODING_PREFIX,
    CodesModelError,
    ReencodeError,
    check_codes_model,
)
from service.indexing import ItemWriter
from service.preflight import check_store
from service.reencode import reencode_items


def _pictures() -> list[Image.Image]:
    # smaller than the stored thumbnail (256 px): the preview holds the picture itself
    return [Image.open(io.BytesIO(png_bytes(size, color))).convert("RGB")
            for size, color in ((40, (200, 30, 30)), (64, (20, 160, 40)), (48, (10, 10, 220)))]


def _writer(data_dir: Path, weights: Path) -> ItemWriter:
    store = HashStore(data_dir)
    return ItemWriter(data_dir, store, Encoder.from_weights(weights, device="cpu"), threading.Lock())


def _fill(writer: ItemWriter, clouds: np.ndarray, source: str = "test") -> None:
    writer.add_clouds(clouds, [f"shape{i}" for i in range(len(clouds))], ["a"] * len(clouds), source)
    writer.add_images(_pictures(), ["p0", "p1", "p2"], [None] * 3, source)


def _codes_by_name(store: HashStore) -> dict[tuple[str, str], dict[int, bytes]]:
    recs = [r for r in store.get_many(store.item_ids(0, 10_000)) if r is not None]
    return {(r.modality, r.name): {b: c.tobytes() for b, c in r.codes.items()} for r in recs}


def test_check_states(tmp_path, tiny_weights, other_weights, shape_points):
    a, b = weights_id(tiny_weights), weights_id(other_weights)
    w = _writer(tmp_path, tiny_weights)
    with w.store:
        assert check_codes_model(w.store, a).state == "empty"
        w.add_clouds(shape_points[:2], ["x", "y"], [None, None], "demo")
        assert w.store.get_value(CODES_MODEL_KEY) == a                # the first items record their weights
        assert check_codes_model(w.store, a).state == "same"
        w.store.set_value(CODES_MODEL_KEY, None)
        chk = check_codes_model(w.store, a)
        assert (chk.state, chk.demo_only, chk.items, chk.ok) == ("unknown", True, 4, False)  # older store
        w.store.set_value(CODES_MODEL_KEY, a)
        assert check_codes_model(w.store, a).ok
        chk = check_codes_model(w.store, b)
        assert (chk.state, chk.auto_reencode) == ("other", True)
        assert "cmah index reencode --data-dir" in chk.problem(tmp_path) and a[:12] in chk.problem(tmp_path)
        w.store.set_value(CODES_MODEL_KEY, REENCODING_PREFIX + b)
        assert check_codes_model(w.store, b).state == "interrupted"
        w.store.set_value(CODES_MODEL_KEY, a)
        w.add_images(_pictures()[:1], ["p"], [None], "upload")
        assert not check_codes_model(w.store, b).demo_only
    other = _writer(tmp_path, other_weights)                          # a writer never mixes codes
    with other.store, pytest.raises(CodesModelError, match="cmah index reencode"):
        other.add_clouds(shape_points[:1], ["z"], [None], "demo")
    with pytest.raises(ValueError, match="managed by the store"), HashStore(tmp_path) as s:
        s.set_value("generation:image", "0")


def test_reencode_equals_a_fresh_index_with_the_new_weights(tmp_path, tiny_weights, other_weights, shape_points):
    old = _writer(tmp_path / "old", tiny_weights)
    _fill(old, shape_points)
    fresh = _writer(tmp_path / "fresh", other_weights)
    _fill(fresh, shape_points)
    want = _codes_by_name(fresh.store)
    fresh.store.close()
    before = _codes_by_name(old.store)
    assert before.keys() == want.keys() and before != want           # the weights do code differently
    old.store.close()

    writer = _writer(tmp_path / "old", other_weights)                 # reopened: snapshots from disk
    seen: list[tuple[int, int]] = []
    counts = reencode_items(writer, weights_id(other_weights), progress=lambda d, t: seen.append((d, t)))
    store = writer.store
    assert counts == {"reencoded": len(want), "dropped": 0} and seen[-1] == (len(want), len(want))
    assert _codes_by_name(store) == want
    assert store.get_value(CODES_MODEL_KEY) == weights_id(other_weights)
    # the search indexes follow SQLite: every query equals a brute-force scan of the stored codes
    for modality in ("image", "points"):
        for bits in (16, 32, 64):
            for rec in store.get_many(store.item_ids(0, 100)):
                if rec is None or rec.modality == modality:
                    continue
                dist, ids = store.search(modality, rec.codes[bits], bits, 5)
                hits = [(i, d) for i, d in zip(ids[0].tolist(), dist[0].tolist(), strict=True) if i != -1]
                assert hits == brute_force(store, modality, rec.codes[bits], bits, 5)
    store.close()
    with HashStore(tmp_path / "old") as s:                            # and so does the snapshot on disk
        rec = s.get(1)
        assert s.search(rec.modality, rec.codes[64], 64, 1)[0][0, 0] == 0


def test_items_without_a_source_are_refused_or_dropped(tmp_path, tiny_weights, other_weights, shape_points):
    w = _writer(tmp_path, tiny_weights)
    _fill(w, shape_points[:2])
    w.store.set_value(CODES_MODEL_KEY, weights_id(tiny_weights))
    lost = [r for r in w.store.get_many(w.store.item_ids()) if r.modality == "points"][0]
    (tmp_path / "clouds" / f"{lost.item_key}.npy").unlink()          # its image item keeps the preview
    before = _codes_by_name(w.store)
    w.store.close()
    w = _writer(tmp_path, other_weights)
    with w.store, pytest.raises(ReencodeError, match="1 item.*--drop-missing"):
        reencode_items(w, weights_id(other_weights))
    with HashStore(tmp_path) as s:                                    # nothing changed
        assert _codes_by_name(s) == before and s.get_value(CODES_MODEL_KEY) == weights_id(tiny_weights)
    w = _writer(tmp_path, other_weights)
    with w.store:
        assert reencode_items(w, weights_id(other_weights), drop_missing=True) == {
            "reencoded": len(before) - 1, "dropped": 1}
        assert w.store.get(int(lost.id)) is None
        assert check_codes_model(w.store, weights_id(other_weights)).ok


def test_interrupted_reencode_is_detected_and_finished_by_a_rerun(tmp_path, tiny_weights, other_weights,
                                                                  shape_points, monkeypatch):
    import service.reencode as cm

    w = _writer(tmp_path, tiny_weights)
    _fill(w, shape_points)
    w.store.close()
    monkeypatch.setattr(cm, "PAGE_ITEMS", 4)
    w = _writer(tmp_path, other_weights)

    def crash(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with w.store, pytest.raises(KeyboardInterrupt):
        reencode_items(w, weights_id(other_weights), progress=crash)
    w = _writer(tmp_path, other_weights)
    with w.store:
        assert check_codes_model(w.store, weights_id(other_weights)).state == "interrupted"
        reencode_items(w, weights_id(other_weights))
        assert check_codes_model(w.store, weights_id(other_weights)).ok
        got = _codes_by_name(w.store)
    fresh = _writer(tmp_path / "fresh", other_weights)
    with fresh.store:
        _fill(fresh, shape_points)
        assert got == _codes_by_name(fresh.store)


def test_service_reencodes_a_demo_only_store_and_refuses_any_other(make_settings, tmp_path, other_weights,
                                                                   tiny_weights):
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as c:                        # demo gallery coded by tiny_weights
        wait_ready(c)
        n = c.app.state.cmah.store.count()
    assert n > 0
    check_store(settings)
    other = settings.model_copy(update={"weights_dir": other_weights})
    check_store(other)                                                # demo only: the app will re-encode it
    with TestClient(create_app(other)) as c:
        wait_ready(c)
        st = c.app.state.cmah
        assert st.store.count() == n and check_codes_model(st.store, weights_id(other_weights)).ok
        st.writer.add_images(_pictures()[:1], ["mine"], [None], "upload")  # now more than the demo
    back = settings                                                     # the first weights again
    with pytest.raises(CodesModelError, match="other weights.*cmah index reencode"):
        check_store(back)
    app = create_app(back)
    with pytest.raises(CodesModelError), TestClient(app):
        pass
    assert app.state.cmah.status.startswith("start-up failed") and "cmah index reencode" in app.state.cmah.status
    with HashStore(tmp_path) as s:                                    # refused, untouched
        assert s.get_value(CODES_MODEL_KEY) == weights_id(other_weights)
