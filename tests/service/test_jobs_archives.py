"""Hostile zip jobs: unsafe member names, links, devices, nested archives, zip bombs (per member and per job).

Every refused member is reported by name in the job's ``errors`` while the good members are indexed.
Refused members hold valid 3D data, so a check that is removed lets them be indexed and the test fails.
"""

from __future__ import annotations

import io
import stat
import struct
import warnings
import zipfile
import zlib

import pytest
from fastapi.testclient import TestClient
from svc_helpers import admin_headers, job_items, ply_bytes, png_bytes, wait_job, wait_ready

from service.app import create_app
from service.archives import BOMB_MIN_BYTES, BOMB_RATIO

JOBS = "/api/v1/admin/jobs"
ZEROS = 200 * 1024 * 1024  # 200 MB of zeros deflate to ~200 KB: a ratio of ~1000:1


def _member(zf: zipfile.ZipFile, name: str, data: bytes, mode: int | None = None) -> None:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    if mode is not None:
        info.create_system = 3  # Unix: the mode is in the high 16 bits of external_attr
        info.external_attr = mode << 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name"
        zf.writestr(info, data)


def _nested_zip(content: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as inner:
        inner.writestr("inner.ply", content)
    return buf.getvalue()


def _zeros_deflated(size: int) -> bytes:
    """A raw deflate stream of ``size`` zero bytes, built from one compressed MiB repeated (full flushes
    make the blocks independent), so that a 200 MB bomb costs no 200 MB of compression here."""
    block = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    return piece * (size // len(block)) + c.flush()


def _zip(members: list[tuple[str, bytes]], bomb: str, claimed: int | None = None) -> bytes:
    """A zip of deflated ``members`` plus ``bomb``: ZEROS zero bytes (its headers claim ``claimed`` bytes)."""
    out = bytearray()
    central = bytearray()
    entries = [(name, zlib.crc32(data), len(data), _deflate(data)) for name, data in members]
    crc = 0
    block = bytes(1 << 20)
    for _ in range(ZEROS // len(block)):
        crc = zlib.crc32(block, crc)
    entries.append((bomb, crc, ZEROS if claimed is None else claimed, _zeros_deflated(ZEROS)))
    for name, crc32, size, packed in entries:
        raw = name.encode()
        central += struct.pack("<4s6H3I5HII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc32, len(packed), size,
                               len(raw), 0, 0, 0, 0, 0, len(out)) + raw
        out += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc32, len(packed), size, len(raw), 0)
        out += raw + packed
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(out), 0)
    return bytes(out + central + end)


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def _post_zip(client: TestClient, data: bytes) -> dict:
    r = client.post(JOBS, files={"file": ("batch.zip", data)}, headers=admin_headers())
    assert r.status_code == 202, r.text
    return wait_job(client, r.json()["job_id"])


@pytest.fixture(scope="module")
def big_client(tmp_path_factory, make_settings):
    """Files up to 64 MiB each, so that only the ratio check can stop a zip bomb early."""
    settings = make_settings(tmp_path_factory.mktemp("bomb"), max_upload_bytes=64 << 20, build_demo_gallery=False)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


HOSTILE_NAMES = ["../evil.ply", "a/../../evil2.ply", "/etc/evil.ply", "C:\\evil.ply", "C:evil.ply",
                 "set\\..\\..\\evil.ply"]


def test_hostile_members_are_refused_and_the_others_indexed(client, shape_points):
    ply = ply_bytes(shape_points[0])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        _member(zf, "set/good.ply", ply)
        _member(zf, "set/good.png", png_bytes())
        for name in HOSTILE_NAMES:
            _member(zf, name, ply)
        _member(zf, "set/link.ply", ply, mode=stat.S_IFLNK | 0o777)  # a symlink member whose "target" is a PLY
        _member(zf, "set/fifo.ply", ply, mode=stat.S_IFIFO | 0o644)
        _member(zf, "set/chr.ply", ply, mode=stat.S_IFCHR | 0o644)
        _member(zf, "set/blk.ply", ply, mode=stat.S_IFBLK | 0o644)
        _member(zf, "set/regular.ply", ply, mode=stat.S_IFREG | 0o644)
        _member(zf, "set/nested.zip", _nested_zip(ply))
        _member(zf, "set/data.npz", _nested_zip(ply))
        _member(zf, "set/shapes.tar.gz", ply)
        _member(zf, "set/shapes.7z", ply)
        _member(zf, "set/good.ply", ply)  # a second member with the same name
        _member(zf, "set/broken.ply", ply_bytes(shape_points[1], binary=True)[:300])
    job = _post_zip(client, buf.getvalue())
    refused = {*HOSTILE_NAMES, "set/link.ply", "set/fifo.ply", "set/chr.ply", "set/blk.ply", "set/nested.zip",
               "set/data.npz", "set/shapes.tar.gz", "set/shapes.7z", "set/good.ply"}
    errors = {(e["name"], e["error"]) for e in job["errors"]}
    assert errors == {(n, "refused_member") for n in refused} | {("set/broken.ply", "truncated")}, job["errors"]
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("succeeded", 19, 3, 16)
    details = {e["name"]: e["detail"] for e in job["errors"]}
    assert "symbolic link" in details["set/link.ply"] and "nested archive" in details["set/nested.zip"]
    assert "duplicate" in details["set/good.ply"]
    names = sorted((r.modality, r.name) for r in job_items(client, job["id"]))
    assert names == [("image", "set/good.ply"), ("image", "set/good.png"), ("image", "set/regular.ply"),
                     ("points", "set/good.ply"), ("points", "set/regular.ply")]


def test_zip_bomb_member_is_stopped_while_inflating(big_client, shape_points):
    data = _zip([("good.ply", ply_bytes(shape_points[0]))], "bomb.ply")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.getinfo("bomb.ply").file_size == ZEROS  # a valid archive (its CRC is right)
    assert len(data) < 1 << 20  # ~200 KB on the wire, 200 MB inflated
    job = _post_zip(big_client, data)
    assert job["state"] == "succeeded" and job["done"] == 1, job
    [err] = job["errors"]
    assert (err["name"], err["error"]) == ("bomb.ply", "zip_bomb"), err
    assert f"{BOMB_RATIO}:1" in err["detail"]
    inflated = int(err["detail"].rsplit(" ", 1)[1].rstrip(")"))
    assert inflated <= BOMB_MIN_BYTES + (64 << 10)  # stopped within one chunk after the threshold


def test_member_whose_header_lies_about_its_size(client, shape_points):
    """A 200 MB member claiming 1 KiB: it is reported (never inflated to 200 MB), the others are indexed."""
    data = _zip([("good.ply", ply_bytes(shape_points[0]))], "liar.ply", claimed=1024)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.getinfo("liar.ply").file_size == 1024
    job = _post_zip(client, data)
    assert job["state"] == "succeeded" and job["done"] == 1, job
    [err] = job["errors"]
    assert err["name"] == "liar.ply" and err["error"] in ("unreadable", "zip_bomb", "too_large"), err


def test_job_stops_when_members_inflate_past_the_job_limit(make_settings, tmp_path, synth_npz):
    from model.dataset import load_dataset

    clouds = load_dataset(synth_npz).points[:8]
    plys = [ply_bytes(p) for p in clouds]
    limit = sum(len(p) for p in plys[:3]) + 1000  # room for three members, not eight
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, p in enumerate(plys):
            zf.writestr(f"s{i}.ply", p)
    settings = make_settings(tmp_path, max_job_uncompressed_bytes=limit, build_demo_gallery=False, job_batch_size=2)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        job = _post_zip(c, buf.getvalue())
        assert job["state"] == "failed" and "CMAH_MAX_JOB_UNCOMPRESSED_BYTES" in job["error"], job
        assert job["done"] == 2  # the batches indexed before the limit stay indexed
        assert len(job_items(c, job["id"])) == 2 * job["done"]
    # the same archive under the default limit succeeds
    settings = make_settings(tmp_path / "2", build_demo_gallery=False)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        assert _post_zip(c, buf.getvalue())["done"] == len(plys)
