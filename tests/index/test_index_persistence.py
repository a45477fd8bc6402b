"""Snapshots (stale / corrupt / foreign -> rebuilt), corrupt SQLite -> StoreCorruptError, atomic writes."""

from __future__ import annotations

import logging
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from index import HashStore, StoreCorruptError
from index.codes import BITS_CHOICES
from index.persistence import atomic_write_bytes, read_snapshot
from index.store import DB_FILENAME


def _items(ref: SimpleNamespace, rng: np.random.Generator, n: int, modality: str = "image") -> list[dict]:
    codes = {bits: ref.clustered_codes(rng, n, bits) for bits in BITS_CHOICES}
    return [{"modality": modality, "name": f"i{j}", "codes": {b: codes[b][j] for b in BITS_CHOICES}} for j in range(n)]


def _snapshot_file(data_dir: Path, modality: str = "image", bits: int = 64) -> Path:
    return data_dir / "snapshots" / f"{modality}-{bits}.snap"


def _expect_consistent(data_dir: Path, ref: SimpleNamespace, rng: np.random.Generator) -> None:
    """Reopen: index counts equal SQLite counts and search equals the reference."""
    with HashStore(data_dir) as store:
        for modality in ("image", "points"):
            recs = [r for r in store.get_many(range(1, 1000)) if r is not None and r.modality == modality]
            for bits in BITS_CHOICES:
                assert store.index_count(modality, bits) == len(recs) == store.count(modality)
                if not recs:
                    continue
                db = np.stack([r.codes[bits] for r in recs])
                ids = np.array([r.id for r in recs])
                q = np.concatenate([db[:3], ref.random_codes(rng, 2, bits)])
                ref.assert_same(store.search(modality, q, bits, 9), ref.search(q, db, ids, 9))


def test_snapshots_written_lazily(tmp_path: Path, ref, rng) -> None:
    with HashStore(tmp_path, snapshot_every=50) as store:
        gen0 = read_snapshot(_snapshot_file(tmp_path))[0].generation
        store.add(_items(ref, rng, 10))
        assert read_snapshot(_snapshot_file(tmp_path))[0].generation == gen0  # not yet
        store.add(_items(ref, rng, 45))  # 55 changes >= 50: snapshot
        header = read_snapshot(_snapshot_file(tmp_path))[0]
        assert (header.generation, header.count) == (gen0 + 2, 55)
        store.add(_items(ref, rng, 1))
        assert store.snapshot() == 3  # image 16/32/64 were dirty
        assert store.snapshot() == 0
    header = read_snapshot(_snapshot_file(tmp_path))[0]
    assert header.count == 56
    assert read_snapshot(_snapshot_file(tmp_path, "points"))[0].count == 0


def test_stale_snapshot_is_rebuilt(tmp_path: Path, ref, rng, caplog: pytest.LogCaptureFixture) -> None:
    with HashStore(tmp_path, snapshot_every=0) as store:
        store.add(_items(ref, rng, 40))
        store.snapshot()
        old = {b: _snapshot_file(tmp_path, "image", b).read_bytes() for b in BITS_CHOICES}
        store.add(_items(ref, rng, 7))
        store.delete([2, 3])
    for bits, data in old.items():  # put the older generation back, as after a crash
        _snapshot_file(tmp_path, "image", bits).write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="index"):
        _expect_consistent(tmp_path, ref, rng)
    assert sum("is stale" in r.getMessage() for r in caplog.records) == 3
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="index"), HashStore(tmp_path):
        pass  # the rebuilt snapshots were rewritten: nothing to rebuild now
    assert not caplog.records


@pytest.mark.parametrize("damage", ["flip_payload", "truncate", "garbage", "header", "empty"])
def test_corrupt_snapshot_is_rebuilt(tmp_path: Path, ref, rng, caplog, damage: str) -> None:
    with HashStore(tmp_path) as store:
        store.add(_items(ref, rng, 30))
        store.add(_items(ref, rng, 20, "points"))
    path = _snapshot_file(tmp_path, "points", 32)
    data = bytearray(path.read_bytes())
    if damage == "flip_payload":
        data[-5] ^= 0xFF
    elif damage == "truncate":
        del data[len(data) // 2 :]
    elif damage == "garbage":
        data = bytearray(b"\x00garbage" * 20)
    elif damage == "header":
        data[20] ^= 0x01
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="index"):
        _expect_consistent(tmp_path, ref, rng)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "points/32-bit" in messages[0], messages
    assert caplog.records[0].levelno == logging.WARNING and str(path) in messages[0]  # names the file


def test_missing_and_foreign_snapshots(tmp_path: Path, ref, rng, caplog) -> None:
    with HashStore(tmp_path / "a") as a:
        a.add(_items(ref, rng, 25))
    with HashStore(tmp_path / "b") as b:
        b.add(_items(ref, rng, 25))
    shutil.copy(_snapshot_file(tmp_path / "b"), _snapshot_file(tmp_path / "a"))  # same shape, other db
    _snapshot_file(tmp_path / "a", "image", 16).unlink()
    (tmp_path / "a" / "snapshots" / ".image-32.snap.123.abcd.tmp").write_bytes(b"partial write")
    with caplog.at_level(logging.WARNING, logger="index"):
        _expect_consistent(tmp_path / "a", ref, rng)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "another database" in text and "missing" in text
    assert f"{_snapshot_file(tmp_path / 'a', 'image', 16)} is missing" in text
    assert not list((tmp_path / "a" / "snapshots").glob("*.tmp"))


def _corrupt_db(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    elif how == "foreign":
        path.unlink()
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE other (x)")
        con.commit()
        con.close()
    elif how == "pages":
        data = bytearray(path.read_bytes())
        page = int.from_bytes(data[16:18], "big")
        data[page * 2 : page * 5] = b"\xa5" * (page * 3)  # smash b-tree pages 3-5
        path.write_bytes(bytes(data))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("how", ["garbage", "foreign", "pages", "truncated"])
def test_corrupt_sqlite_raises(tmp_path: Path, ref, rng, how: str) -> None:
    with HashStore(tmp_path) as store:
        for _ in range(4):
            store.add(_items(ref, rng, 60))
    _corrupt_db(tmp_path / DB_FILENAME, how)
    with pytest.raises(StoreCorruptError) as info:
        HashStore(tmp_path)
    message = str(info.value)
    assert "backup" in message and "delete the data directory" in message
    # the failed open released the directory lock and left the database file alone
    assert (tmp_path / DB_FILENAME).exists()
    with pytest.raises(StoreCorruptError):
        HashStore(tmp_path)


def test_atomic_write_bytes(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new", b"!")
    assert target.read_bytes() == b"new!"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
