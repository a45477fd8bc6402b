"""Preview and cloud files that no item refers to (written by a batch whose items never committed, or left by
deleted items) are deleted at start once they are older than ``CMAH_ORPHAN_GRACE_S``; nothing else is."""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from svc_helpers import admin_headers, wait_ready

from service.app import create_app
from service.indexing import CLOUD_DIR, PREVIEW_DIR

HOUR = 3600.0


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def _orphan(data_dir: Path, folder: str, ext: str, *, age: float, tmp: bool = False) -> Path:
    path = data_dir / folder / f"{uuid.uuid4().hex}.{ext}{'.tmp' if tmp else ''}"
    path.write_bytes(b"written by a batch that never committed")
    _age(path, age)
    return path


def _files(data_dir: Path) -> set[Path]:
    return {p for folder in (PREVIEW_DIR, CLOUD_DIR) for p in (data_dir / folder).iterdir()}


def test_old_unreferenced_files_are_swept_at_start(make_settings, tmp_path, caplog):
    settings = make_settings(tmp_path, orphan_grace_s=HOUR)
    with TestClient(create_app(settings)) as c:  # the 12-shape demo gallery: 24 items, 12 previews, 12 clouds
        wait_ready(c)
        store = c.app.state.cmah.store
        records = [r for r in store.get_many(range(1, store.count() + 1)) if r is not None]
        key = records[0].item_key
        shared = [r.id for r in records if r.item_key == key]  # a shape's points item and its render item
        assert len(shared) == 2
        for item_id in shared:  # its preview and cloud are now referred to by nothing
            assert c.delete(f"/api/v1/admin/items/{item_id}", headers=admin_headers()).status_code == 200
        kept_items = [r for r in records if r.item_key != key]
    referenced = _files(tmp_path) - {tmp_path / PREVIEW_DIR / f"{key}.png", tmp_path / CLOUD_DIR / f"{key}.npy"}
    assert len(referenced) == 22
    deleted_items = {tmp_path / PREVIEW_DIR / f"{key}.png", tmp_path / CLOUD_DIR / f"{key}.npy"}
    for path in referenced | deleted_items:  # old enough, but only the deleted items' files are orphans
        _age(path, 2 * HOUR)
    old = {_orphan(tmp_path, PREVIEW_DIR, "png", age=2 * HOUR), _orphan(tmp_path, CLOUD_DIR, "npy", age=2 * HOUR),
           _orphan(tmp_path, PREVIEW_DIR, "png", age=2 * HOUR, tmp=True),
           _orphan(tmp_path, CLOUD_DIR, "npy", age=2 * HOUR, tmp=True)} | deleted_items
    fresh = {_orphan(tmp_path, PREVIEW_DIR, "png", age=60), _orphan(tmp_path, CLOUD_DIR, "npy", age=60),
             _orphan(tmp_path, CLOUD_DIR, "npy", age=60, tmp=True)}  # could belong to a batch being committed
    foreign = {tmp_path / PREVIEW_DIR / "notes.txt", tmp_path / CLOUD_DIR / "README"}  # not the writer's names
    for path in foreign:
        path.write_text("not ours")
        _age(path, 2 * HOUR)
    assert old | fresh | foreign <= _files(tmp_path)

    with caplog.at_level(logging.INFO, logger="service"), TestClient(create_app(settings)) as c:
        wait_ready(c)
        lines = [r.getMessage() for r in caplog.records if "orphan sweep" in r.getMessage()]
        assert _files(tmp_path) == referenced | fresh | foreign  # exactly the old orphans are gone
        assert len(lines) == 1 and "deleted 6 " in lines[0] and "3 newer" in lines[0], lines
        for rec in kept_items:  # every remaining item still has its files
            assert c.get(f"/api/v1/items/{rec.id}/preview.png").status_code == 200
            if rec.modality == "points":
                assert c.get(f"/api/v1/items/{rec.id}/points.ply").status_code == 200


def test_sweep_with_nothing_to_delete_says_so(make_settings, tmp_path, caplog):
    settings = make_settings(tmp_path, build_demo_gallery=False)
    with caplog.at_level(logging.INFO, logger="service"), TestClient(create_app(settings)) as c:
        wait_ready(c)
    lines = [r.getMessage() for r in caplog.records if "orphan sweep" in r.getMessage()]
    assert len(lines) == 1 and "deleted 0 " in lines[0], lines
