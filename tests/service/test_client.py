"""``service.client`` and the commands over it (``cmah search``, ``cmah index add --url``), against the live
app: a uvicorn server on a free port in this process (tiny weights, the 12-shape demo gallery)."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from svc_helpers import ADMIN_TOKEN, brute_force, free_port, ply_bytes, png_bytes

from model.dataset import load_dataset, save_dataset
from model.io import load_points, read_image, write_ply
from service.app import create_app
from service.cli import main
from service.client import CMAHClient, CMAHError

GALLERY = 12


class Live:
    def __init__(self, url: str, app) -> None:
        self.url = url
        self.app = app

    @property
    def state(self):
        return self.app.state.cmah

    def source_items(self, source: str) -> list:
        store = self.state.store
        return [r for r in store.get_many(range(1, 10 * store.count() + 10)) if r is not None and r.source == source]


@pytest.fixture(scope="module")
def live(tmp_path_factory, make_settings) -> Iterator[Live]:
    app = create_app(make_settings(tmp_path_factory.mktemp("client-svc")))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and thread.is_alive(), "the live app did not get ready"
            time.sleep(0.1)
        yield Live(url, app)
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.fixture
def files(tmp_path: Path, shape_points) -> dict[str, Path]:
    out = {"red.png": png_bytes(color=(220, 20, 20)), "blue.png": png_bytes(size=56, color=(20, 40, 220)),
           "chair.ply": ply_bytes(shape_points[0]), "cloud.bin": ply_bytes(shape_points[1], binary=True),
           "broken.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "notes.txt": b"just words, no numbers\n"}
    for name, data in out.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in out}


def unused_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# ---------------------------------------------------------------------------------------------- the client
def test_client_search_sniffs_the_modality_and_equals_brute_force(live, files):
    st = live.state
    with CMAHClient(live.url) as c:
        assert c.ready().ready and c.ready().items == 2 * GALLERY
        got = c.search(files["red.png"], k=5, bits=32)
        code = st.encoder.encode_image(read_image(files["red.png"]))[32]
        assert [(h.id, h.distance) for h in got.results] == brute_force(st.store, "points", code, 32, 5)
        got = c.search(files["cloud.bin"], k=4)  # a binary PLY under a name that says nothing: points -> images
        code = st.encoder.encode_points(load_points(files["cloud.bin"]))[64]
        assert [(h.id, h.distance) for h in got.results] == brute_force(st.store, "image", code, 64, 4)
        got = c.search(("x.ply", files["chair.ply"].read_bytes()), target="points", k=3)
        assert all(st.store.get(h.id).modality == "points" for h in got.results) and len(got.results) == 3


def test_client_errors_carry_the_service_code_and_detail(live, files):
    with CMAHClient(live.url) as c:
        with pytest.raises(CMAHError) as e:
            c.search(files["broken.png"])
        assert e.value.status == 400 and e.value.code in ("truncated", "garbage") and e.value.detail
        with pytest.raises(CMAHError) as e:
            c.search(files["red.png"], k=0)
        assert (e.value.status, e.value.code) == (422, "invalid_request")
        with pytest.raises(CMAHError) as e:
            c.search(files["notes.txt"])
        assert (e.value.status, e.value.code) == (None, "unsupported_format") and "notes.txt" in e.value.detail
        with pytest.raises(CMAHError) as e:
            c.search(files["red.png"].parent / "missing.png")
        assert (e.value.status, e.value.code) == (None, "no_such_file")
        with pytest.raises(CMAHError) as e:
            c.add_job(files["chair.ply"])  # no token
        assert (e.value.status, e.value.code) == (401, "unauthorized")
    with CMAHClient(unused_url(), timeout=5) as c, pytest.raises(CMAHError) as e:
        c.search(files["red.png"])
    assert (e.value.status, e.value.code) == (None, "unreachable")


def test_client_batch_and_many_keep_order(live, files):
    with CMAHClient(live.url) as c:
        batch = c.search_batch([files["red.png"], files["broken.png"], files["blue.png"]], k=3)
        assert [q.filename for q in batch.queries] == ["red.png", "broken.png", "blue.png"]
        assert batch.queries[0].results == c.search(files["red.png"], k=3).results
        assert batch.queries[1].error in ("truncated", "garbage")
        with pytest.raises(CMAHError, match="one modality"):
            c.search_batch([files["red.png"], files["chair.ply"]])
        order = [files[n] for n in ("chair.ply", "red.png", "cloud.bin", "blue.png")] * 9  # 36: two image batches
        many = c.search_many(order, k=2)
        assert len(many) == 36
        assert [path for path, _ in many[:4]] == ["points-to-images", "image-to-points"] * 2
        for f, (_, entry) in zip(order[:4], many[:4], strict=True):
            assert entry.filename == f.name and entry.results == c.search(f, k=2).results


def test_client_jobs_with_progress(live, synth_npz, tmp_path):
    ds = load_dataset(synth_npz)
    idx = np.arange(5, len(ds), 13)[:6]
    npz = tmp_path / "six.npz"
    save_dataset(npz, ds.points[idx], ds.labels[idx], np.array([f"c{i}" for i in idx]), ds.classes)
    seen = []
    with CMAHClient(live.url, token=ADMIN_TOKEN) as c:
        created = c.add_job(npz)
        status = c.wait_job(created.job_id, poll_s=0.05, on_progress=seen.append)
        assert (status.state, status.total, status.done, status.failed) == ("succeeded", 6, 6, 0)
        assert seen[-1] == status and c.job(created.job_id) == status
        assert len(live.source_items(f"job:{created.job_id}")) == 12
        with pytest.raises(CMAHError) as e:
            c.job("no-such-job")
        assert (e.value.status, e.value.code) == (404, "not_found")
        with pytest.raises(CMAHError) as e:
            c.add_path_job("x.npz")
        assert (e.value.status, e.value.code) == (403, "imports_disabled")


# ---------------------------------------------------------------------------------------------- cmah search
def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cmah_search_table(live, files, capsys):
    rc, out, err = _run(capsys, "search", str(files["red.png"]), str(files["chair.ply"]), "--url", live.url, "-k",
                        "3", "--bits", "16")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{files['red.png']}: image -> points, 16 bits, 3 result(s)"
    assert lines[1].split() == ["rank", "dist", "id", "label", "source", "name"]
    with CMAHClient(live.url) as c:
        want = c.search(files["red.png"], k=3, bits=16).results
    for line, hit in zip(lines[2:5], want, strict=True):
        assert line.split() == [str(hit.rank), str(hit.distance), str(hit.id), hit.label or "-", hit.source, hit.name]
    assert lines[5] == "" and lines[6].startswith(f"{files['chair.ply']}: points -> images")


def test_cmah_search_json_and_target(live, files, capsys):
    rc, out, _ = _run(capsys, "search", str(files["blue.png"]), str(files["cloud.bin"]), "--url", live.url,
                      "--target", "points", "-k", "4", "--json")
    assert rc == 0
    body = json.loads(out)
    assert body["k"] == 4 and [q["target"] for q in body["queries"]] == ["points", "points"]
    assert [q["query"] for q in body["queries"]] == ["image", "points"]
    with CMAHClient(live.url) as c:
        want = c.search(files["cloud.bin"], target="points", k=4).results
    assert body["queries"][1]["results"] == [h.model_dump() for h in want]


def test_cmah_search_bad_input_exits_2_with_one_line(live, files, capsys):
    rc, out, err = _run(capsys, "search", str(files["red.png"]), str(files["broken.png"]), "--url", live.url)
    assert rc == 2 and out.startswith(str(files["red.png"]))  # the good file still answers
    assert err.count("\n") == 1 and str(files["broken.png"]) in err and "Traceback" not in err
    for argv in ([str(files["red.png"].parent / "missing.png"), "--url", live.url],
                 [str(files["notes.txt"]), "--url", live.url],
                 [str(files["red.png"]), "--url", unused_url(), "--timeout", "5"]):
        rc, out, err = _run(capsys, "search", *argv)
        assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith("cmah search: error:"), argv


# ---------------------------------------------------------------------------------------------- cmah index add --url
def test_cmah_index_add_url_uploads_and_follows_the_job(live, synth_npz, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CMAH_ADMIN_TOKEN", ADMIN_TOKEN)
    ds = load_dataset(synth_npz)
    idx = np.arange(7, len(ds), 11)[:7]
    npz = tmp_path / "seven.npz"
    save_dataset(npz, ds.points[idx], ds.labels[idx], np.array([f"s{i}" for i in idx]), ds.classes)
    rc, out, err = _run(capsys, "index", "add", str(npz), "--url", live.url, "--poll", "0.05")
    assert rc == 0, err
    job_id = out.split()[1]
    assert out.strip() == f"job {job_id} ({npz}) succeeded: 7 indexed, 0 failed"
    assert "7/7" in err and "100%" in err  # the progress bar reached the end
    assert len(live.source_items(f"job:{job_id}")) == 14


def test_cmah_index_add_url_packs_files_and_folders(live, shape_points, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CMAH_ADMIN_TOKEN", ADMIN_TOKEN)
    folder = tmp_path / "shots"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(png_bytes(color=(10, 200, 10)))
    write_ply(folder / "sub" / "b.ply", shape_points[2])
    (folder / "readme.md").write_text("skipped")
    single = tmp_path / "c.ply"
    write_ply(single, shape_points[3])
    rc, out, err = _run(capsys, "index", "add", str(folder), str(single), "--url", live.url, "--label", "mine",
                        "--quiet")
    assert rc == 0, err
    assert "1 file(s) of other types in the folders skipped" in out
    job_id = out.splitlines()[-1].split()[1]
    items = live.source_items(f"job:{job_id}")
    assert sorted((r.modality, r.name, r.label) for r in items) == [
        ("image", "a.png", "mine"), ("image", "c.ply", "mine"), ("image", "sub/b.ply", "mine"),
        ("points", "c.ply", "mine"), ("points", "sub/b.ply", "mine")]


def test_cmah_index_add_url_exit_codes(live, files, tmp_path, capsys, monkeypatch):
    bad = io.BytesIO()
    np.savez(bad, points=np.zeros((2, 3)))  # a dataset by its content, without its other arrays: the job fails
    (tmp_path / "bad.npz").write_bytes(bad.getvalue())
    (tmp_path / "notes.md").write_text("neither a picture nor a 3D file")
    monkeypatch.delenv("CMAH_ADMIN_TOKEN", raising=False)
    rc, _, err = _run(capsys, "index", "add", str(tmp_path / "bad.npz"), "--url", live.url)
    assert rc == 2 and "CMAH_ADMIN_TOKEN" in err and err.count("\n") == 1
    monkeypatch.setenv("CMAH_ADMIN_TOKEN", ADMIN_TOKEN)
    rc, out, err = _run(capsys, "index", "add", str(tmp_path / "bad.npz"), "--url", live.url, "--quiet")
    assert rc == 1 and out == "" and "failed" in err and "missing array" in err
    for argv in ([str(tmp_path / "missing.npz"), "--url", live.url],
                 [str(tmp_path / "notes.md"), "--url", live.url],
                 [str(tmp_path / "bad.npz"), "--url", unused_url(), "--timeout", "5"],
                 [str(tmp_path / "bad.npz"), "--url", live.url, "--source", "x"],
                 [str(tmp_path / "bad.npz"), "--server-path"]):
        rc, out, err = _run(capsys, "index", "add", *argv)
        assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith("cmah index: error:"), (argv, err)
    # files the service cannot read: the job succeeds, the command says which and exits 2 (as the local add)
    rc, out, err = _run(capsys, "index", "add", str(files["broken.png"]), str(files["red.png"]), "--url", live.url,
                        "--quiet")
    assert rc == 2 and "succeeded: 1 indexed, 1 failed" in out and "broken.png" in err


def test_help_names_the_remote_commands():
    from service.cli import build_parser

    assert "search" in build_parser([]).format_help()
    p = build_parser(["index"])
    sub = next(a for a in p._actions if a.dest == "command").choices["index"]
    add = next(a for a in sub._actions if a.dest == "index_command").choices["add"].format_help()
    assert "--url" in add and "--server-path" in add and "CMAH_ADMIN_TOKEN" in add


def test_filters_from_the_client_and_cmah_search(live, files, capsys):
    store = live.state.store
    label = sorted({r.label for r in store.get_many(range(1, 3 * GALLERY)) if r is not None and r.label})[0]
    with CMAHClient(live.url) as c:
        one = c.search(files["chair.ply"], k=4, label=label, source="demo").results
        assert one and all(h.label == label and h.source == "demo" for h in one)
        batch = c.search_batch([files["chair.ply"], files["cloud.bin"]], k=4, label=[label], source=["demo"],
                               max_distance=64)
        assert batch.queries[0].results == one
        assert c.search(files["red.png"], label=["no-such-label"]).results == []
        near = c.search(files["red.png"], k=12, distinct="name").results
        assert len({h.name for h in near}) == len(near)
    rc, out, _ = _run(capsys, "search", str(files["chair.ply"]), "--url", live.url, "-k", "4", "--label", label,
                      "--source", "demo", "--json")
    assert rc == 0 and json.loads(out)["queries"][0]["results"] == [h.model_dump() for h in one]
    rc, out, _ = _run(capsys, "search", str(files["chair.ply"]), "--url", live.url, "--label", "no-such-label")
    assert rc == 0 and out.splitlines()[1] == "  (no results)"
