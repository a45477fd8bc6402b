"""The web UI (``service/static``, served at ``/``) in a real browser against a real server.

A ``cmah serve``-style server (``service.app.run_server``) runs in a subprocess on 127.0.0.1 with tiny
random weights and the 12-shape synthetic gallery; Playwright drives Debian's ``/usr/bin/chromium``
(no browser download; ``CMAH_CHROMIUM`` names another executable). The service serves the page with its
strict Content-Security-Policy (``service.security.UI_CSP``) and any JavaScript error or CSP violation
fails the test. Screenshots of each
state go to ``test-artifacts/ui/``.

Skipped when chromium or the ``playwright`` package is missing, except in CI (``CI`` set), where that
is a failure: ``scripts/setup.sh`` installs both (chromium with apt, as root).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from svc_helpers import ADMIN_TOKEN, ply_bytes, png_bytes

CHROMIUM = Path(os.environ.get("CMAH_CHROMIUM", "/usr/bin/chromium"))
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
READY_TIMEOUT_S = 180.0
TIMEOUT_MS = 30_000
#: Every result thumbnail has loaded (a function, not an expression: those would need eval, which the CSP forbids).
IMAGES_LOADED = "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"


def _missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (apt-get install chromium; scripts/setup.sh does it when run as root)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing (pip install -e '.[dev]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path, demo_npz: Path) -> Iterator[str]:
    """Base URL of a real server process (tiny weights, 12-shape gallery, admin token set)."""
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("ui-server")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMAH_")}
    env.update(CMAH_DATA_DIR=str(root / "data"), CMAH_WEIGHTS_DIR=str(tiny_weights), CMAH_DEMO_DATA=str(demo_npz),
               CMAH_DEVICE="cpu", CMAH_TORCH_THREADS="1", CMAH_ADMIN_TOKEN=ADMIN_TOKEN, CMAH_JOB_BATCH_SIZE="8",
               CMAH_MAX_UPLOAD_BYTES=str(1024 * 1024), CMAH_LOG_LEVEL="WARNING")
    code = f"from service.app import run_server; raise SystemExit(run_server('127.0.0.1', {port}))"
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while _get(f"{url}/ready") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server not ready (exit code {proc.poll()}):\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


#: The strict policy the page must work under: nothing inline, no eval.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    """A fresh page (own context: empty sessionStorage) on the UI, which the service serves with :data:`CSP`;
    fails the test on any JavaScript error or CSP violation."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script("window.__csp = []; document.addEventListener('securitypolicyviolation', "
                            "(e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));")
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    response = pg.goto(f"{server}/")
    assert response is not None and response.headers.get("content-security-policy") == CSP
    pg.wait_for_selector("body[data-ready='true']", state="attached")
    yield pg
    violations = pg.evaluate("window.__csp")
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not violations, f"Content-Security-Policy violations: {violations}"


def _shot(pg: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _upload(pg: Any, name: str, data: bytes, mime: str) -> None:
    pg.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])


def test_image_query_lists_k_point_clouds_and_opens_one_in_3d(page: Any) -> None:
    from playwright.sync_api import expect

    page.fill("#k", "5")
    _upload(page, "red-square.png", png_bytes(64), "image/png")
    expect(page.locator("#query-image")).to_be_visible()
    expect(page.locator("#results")).to_have_attribute("data-endpoint", "image-to-points")
    results = page.locator("#results > li.result")
    expect(results).to_have_count(5)
    assert results.evaluate_all("els => els.map(e => e.dataset.rank)") == ["1", "2", "3", "4", "5"]
    assert set(results.evaluate_all("els => els.map(e => e.dataset.modality)")) == {"points"}
    expect(page.locator("#search-status-text")).to_contain_text("5 results in")
    expect(page.locator("#search-status-text")).to_contain_text(" ms")
    expect(page.locator("#search-error")).to_be_hidden()
    expect(page.locator("#spinner")).to_be_hidden()
    page.wait_for_function(IMAGES_LOADED)
    _shot(page, "image-query-results")

    page.locator("#results > li.result button").first.click()
    dialog = page.locator("#viewer-dialog")
    expect(dialog).to_be_visible()
    viewer = page.locator("#dialog-viewer")
    expect(viewer).to_have_attribute("data-state", "shown")
    expect(viewer).to_have_attribute("data-points", "1024")
    expect(viewer.locator("canvas")).to_be_focused()
    page.keyboard.press("ArrowLeft")  # keyboard orbit; must not raise
    _shot(page, "point-cloud-viewer")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()


def test_3d_query_lists_images_and_same_modality_is_selectable(page: Any, shape_points: np.ndarray) -> None:
    from playwright.sync_api import expect

    _upload(page, "shape.ply", ply_bytes(shape_points[0]), "application/octet-stream")
    query_viewer = page.locator("#query-viewer")
    expect(query_viewer).to_have_attribute("data-state", "shown")
    expect(query_viewer).to_have_attribute("data-points", "1024")
    expect(page.locator("#results")).to_have_attribute("data-endpoint", "points-to-images")
    results = page.locator("#results > li.result")
    expect(results).to_have_count(10)
    assert set(results.evaluate_all("els => els.map(e => e.dataset.modality)")) == {"image"}
    srcs = page.locator("#results img").evaluate_all("els => els.map(e => e.getAttribute('src'))")
    assert len(srcs) == 10 and all(s.endswith("/preview.png") for s in srcs)
    page.wait_for_function(IMAGES_LOADED)
    expect(page.locator("input[name=target][value=images]")).to_be_checked()
    _shot(page, "3d-query-results")

    page.locator("input[name=target][value=points]").check()  # same modality: points -> points
    expect(page.locator("#results")).to_have_attribute("data-endpoint", "points-to-points")
    expect(results).to_have_count(10)


def test_query_viewer_leaves_out_non_finite_rows(page: Any, shape_points: np.ndarray) -> None:
    """NaN rows are shown as absent, not handed to three.js (which logs "Computed radius is NaN")."""
    from playwright.sync_api import expect

    console: list[str] = []
    page.on("console", lambda msg: console.append(msg.text))
    pts = shape_points[0][:200].astype(np.float32).copy()
    pts[[3, 50]] = np.nan
    pts[7, 1] = np.inf
    _upload(page, "shape.ply", ply_bytes(pts, binary=True), "application/octet-stream")
    query_viewer = page.locator("#query-viewer")
    expect(query_viewer).to_have_attribute("data-state", "shown")
    expect(query_viewer).to_have_attribute("data-points", "197")
    expect(page.locator("#search-error")).to_be_visible()    # the service refuses non-finite values
    assert not [m for m in console if "NaN" in m], console


def test_bad_3d_file_shows_the_api_error(page: Any, server: str) -> None:
    from playwright.sync_api import expect

    garbage = bytes(range(256)) * 8
    answer = httpx.post(f"{server}/api/v1/search/points-to-images", files={"file": ("x.ply", garbage)}, timeout=30)
    assert answer.status_code in (400, 415, 422)
    body = answer.json()

    _upload(page, "x.ply", garbage, "application/octet-stream")
    error = page.locator("#search-error")
    expect(error).to_be_visible()
    expect(error).to_have_attribute("role", "alert")
    expect(error).to_contain_text(body["detail"])
    expect(error).to_contain_text(f"{body['error']} (HTTP {answer.status_code})")
    expect(page.locator("#results > li")).to_have_count(0)
    expect(page.locator("#spinner")).to_be_hidden()
    expect(page.locator("#query-viewer")).to_have_attribute("data-state", "error")  # the browser cannot show it
    _shot(page, "bad-file-error")


def test_admin_tab_uploads_a_dataset_and_follows_the_job(page: Any, demo_npz: Path) -> None:
    from playwright.sync_api import expect

    page.focus("#tab-search")
    page.keyboard.press("ArrowRight")  # tabs are keyboard operable
    expect(page.locator("#tab-admin")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#panel-admin")).to_be_visible()
    expect(page.locator("#panel-search")).to_be_hidden()

    page.fill("#token", "wrong-token")
    page.click("#token-form button[type=submit]")
    page.set_input_files("#job-file", str(demo_npz))
    page.click("#job-button")
    expect(page.locator("#admin-error")).to_contain_text("forbidden (HTTP 403)")

    page.fill("#token", ADMIN_TOKEN)
    page.click("#token-form button[type=submit]")
    # Save asks the service before it keeps the token: wait for that answer, then look
    expect(page.locator("#token-status")).to_have_text("A token is saved for this tab.")
    assert page.evaluate("sessionStorage.getItem('cmah.adminToken')") == ADMIN_TOKEN
    page.click("#job-button")
    job = page.locator("#job")
    expect(job).to_have_attribute("data-state", "succeeded")
    expect(page.locator("#admin-error")).to_be_hidden()
    expect(page.locator("#job-status")).to_contain_text("12 indexed, 0 failed, of 12")
    assert page.evaluate("document.getElementById('job-progress').value") == 12
    _shot(page, "admin-job")


def _format_samples(cloud: np.ndarray) -> dict[str, tuple[bytes, int]]:
    """One small file per 3D format the page displays, with the point count the viewer must show
    (meshes: their vertices plus 8192 points sampled on the faces)."""
    n = len(cloud)
    rows = "\n".join(f"{x:.5f} {y:.5f} {z:.5f}" for x, y, z in cloud)
    npy32, npy64 = io.BytesIO(), io.BytesIO()
    np.save(npy32, cloud.astype(np.float32))
    np.save(npy64, np.concatenate([cloud, cloud], axis=1).astype(np.float64))
    tetra = "0 0 0\n1 0 0\n0 1 0\n0 0 1"
    pcd_head = (f"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z i\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
                f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\n")
    with_i = np.concatenate([cloud, np.ones((n, 1))], axis=1).astype("<f4")
    return {
        "a.ply": (ply_bytes(cloud), n),
        "b.ply": (ply_bytes(cloud, binary=True), n),
        "c.xyz": (rows.encode(), n),
        "d.txt": (rows.replace(" ", ", ").encode(), n),
        "e.csv": (("x,y,z\n" + rows.replace(" ", ",")).encode(), n),
        "f.npy": (npy32.getvalue(), n),
        "g.npy": (npy64.getvalue(), n),
        "h.off": (f"OFF\n4 4 0\n{tetra}\n3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n".encode(), 4 + 8192),
        "i.obj": (("# tetra\n" + "\n".join(f"v {v}" for v in tetra.split("\n"))
                   + "\nvn 0 0 1\nf 1 2 3\nf 1//1 2//1 4//1\nf -4/1 -2/1 -1/1\n").encode(), 4 + 8192),
        "j.pcd": ((pcd_head + "DATA ascii\n" + "\n".join(" ".join(map(str, r)) for r in with_i)).encode(), n),
        "k.pcd": ((pcd_head + "DATA binary\n").encode() + with_i.tobytes(), n),
    }


def test_query_viewer_reads_every_3d_format(page: Any, shape_points: np.ndarray) -> None:
    """The page's own readers (service/static/formats.js) of the formats the 3D viewer shows."""
    from playwright.sync_api import expect

    cloud = shape_points[2][:200].astype(np.float64)
    for name, (data, count) in _format_samples(cloud).items():
        got = page.evaluate("""async ([name, b64]) => {
            const { parsePoints } = await import('./ui/formats.js');
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            return parsePoints(bytes.buffer, name).length / 3;
        }""", [name, base64.b64encode(data).decode()])
        assert got == count, name
    _upload(page, "shape.npy", _format_samples(cloud)["f.npy"][0], "application/octet-stream")
    expect(page.locator("#query-viewer")).to_have_attribute("data-points", "200")
    expect(page.locator("#results > li.result")).to_have_count(10)


def test_phone_width_layout(page: Any) -> None:
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 390, "height": 844})
    _upload(page, "red-square.png", png_bytes(64, (30, 30, 200)), "image/png")
    expect(page.locator("#results > li.result")).to_have_count(10)
    page.wait_for_function(IMAGES_LOADED)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "horizontal overflow"
    _shot(page, "phone")


@pytest.mark.parametrize(("name", "mime", "binary"), [("cloud.png", "image/png", False), ("cloud.bin", "", True)],
                         ids=["ply-named-png", "binary-ply-named-bin"])
def test_content_decides_over_the_file_name(page: Any, shape_points: np.ndarray, name: str, mime: str,
                                            binary: bool) -> None:
    """A PLY named ``.png`` (the browser says image/png) is searched and shown as a 3D file, and a binary PLY
    named ``.bin`` is shown in the query viewer: the page sniffs the content, the name only breaks ties."""
    from playwright.sync_api import expect

    _upload(page, name, ply_bytes(shape_points[0], binary=binary), mime or "application/octet-stream")
    expect(page.locator("#results")).to_have_attribute("data-endpoint", "points-to-images")
    expect(page.locator("#results > li.result")).to_have_count(10)
    expect(page.locator("#search-error")).to_be_hidden()
    expect(page.locator("#query-image")).to_be_hidden()
    viewer = page.locator("#query-viewer")
    expect(viewer).to_have_attribute("data-state", "shown")
    expect(viewer).to_have_attribute("data-points", "1024")


def _admin_tab(page: Any) -> None:
    from playwright.sync_api import expect

    page.click("#tab-admin")
    page.fill("#token", ADMIN_TOKEN)
    page.click("#token-form button[type=submit]")
    expect(page.locator("#token-status")).to_have_text("A token is saved for this tab.")  # checked, kept


def test_save_checks_the_token(page: Any) -> None:
    from playwright.sync_api import expect

    page.click("#tab-admin")
    page.fill("#token", "wrong-token")
    page.click("#token-form button[type=submit]")
    expect(page.locator("#admin-error")).to_contain_text("forbidden (HTTP 403)")
    expect(page.locator("#token-status")).to_contain_text("not saved")
    assert page.evaluate("sessionStorage.getItem('cmah.adminToken')") is None
    page.fill("#token", ADMIN_TOKEN)
    page.click("#token-form button[type=submit]")
    expect(page.locator("#token-status")).to_have_text("A token is saved for this tab.")
    expect(page.locator("#admin-error")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('cmah.adminToken')") == ADMIN_TOKEN


def test_forget_stops_following_the_job(page: Any, demo_npz: Path) -> None:
    """Forget while a job is polled: polling stops and the job no longer shows as running."""
    from playwright.sync_api import expect

    polls: list[str] = []
    status_url = f"/api/v1/admin/jobs/{'f' * 32}"
    running = {"id": "f" * 32, "kind": "npz", "filename": "demo.npz", "state": "running", "total": 12, "done": 3,
               "failed": 0, "errors": [], "error": None, "created": "", "updated": ""}

    def job_route(route: Any) -> None:
        if route.request.method == "POST":
            route.fulfill(status=202, json={"job_id": running["id"], "status_url": status_url})
        else:
            polls.append(route.request.headers.get("authorization", ""))
            route.fulfill(json=running)

    _admin_tab(page)
    expect(page.locator("#token-status")).to_have_text("A token is saved for this tab.")
    page.route("**/api/v1/admin/jobs**", job_route)
    page.set_input_files("#job-file", str(demo_npz))
    page.click("#job-button")
    expect(page.locator("#job")).to_have_attribute("data-state", "running")
    page.wait_for_function("() => document.getElementById('job-status').textContent.includes('3 indexed')")
    page.click("#token-forget")
    expect(page.locator("#job")).not_to_have_attribute("data-state", "running")
    expect(page.locator("#job-status")).to_contain_text("no longer followed")
    expect(page.locator("#job-button")).to_be_enabled()
    seen = len(polls)
    page.wait_for_timeout(2000)  # several poll periods (700 ms)
    assert len(polls) == seen, "the page still polls after Forget"
    assert all(p == f"Bearer {ADMIN_TOKEN}" for p in polls)


def _job_row(page: Any, job_id: str) -> Any:
    return page.locator(f"#jobs-list .job-row[data-id='{job_id}']")


def _post_job(server: str, name: str, data: bytes) -> str:
    r = httpx.post(f"{server}/api/v1/admin/jobs", files={"file": (name, data)},
                   headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=120)
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def test_job_list_progress_bar_reaches_100_percent(page: Any, server: str, demo_npz: Path) -> None:
    """The Admin tab lists the jobs (GET /api/v1/admin/jobs, polled): a job's bar fills up to 100 %, with its
    counts and speed, and an ended job has no Cancel button."""
    from playwright.sync_api import expect

    _admin_tab(page)
    job_id = _post_job(server, "listed.npz", demo_npz.read_bytes())
    row = _job_row(page, job_id)
    expect(row).to_have_attribute("data-state", "succeeded", timeout=120_000)
    expect(row).to_have_attribute("data-percent", "100")
    assert row.locator("progress").evaluate("b => [b.value, b.max]") == [12, 12]
    expect(row).to_contain_text("listed.npz")
    expect(row).to_contain_text("12 indexed, 0 failed, of 12 (100 %)")
    expect(row).to_contain_text("items/s")
    expect(row.locator(".job-cancel")).to_have_count(0)
    expect(page.locator("#jobs-error")).to_be_hidden()
    _shot(page, "admin-job-list")


@pytest.fixture(scope="module")
def big_npz(tmp_path_factory: pytest.TempPathFactory, demo_npz: Path) -> Path:
    """2,400 shapes (the gallery's 12, 200 times): 300 batches, far more than the test lets the job index."""
    from model.dataset import load_dataset, save_dataset

    ds = load_dataset(demo_npz)
    reps = 200
    path = tmp_path_factory.mktemp("big") / "big.npz"
    save_dataset(path, np.tile(ds.points, (reps, 1, 1)), np.tile(ds.labels, reps),
                 np.array([f"big_{i}" for i in range(reps * len(ds))]), ds.classes)
    return path


def test_cancel_a_running_job_from_the_list(page: Any, server: str, big_npz: Path) -> None:
    """Cancel in the job list stops a running job: it turns 'cancelled' and keeps what it indexed."""
    from playwright.sync_api import expect

    _admin_tab(page)
    job_id = _post_job(server, "big.npz", big_npz.read_bytes())
    row = _job_row(page, job_id)
    page.wait_for_function("(id) => { const r = document.querySelector(`.job-row[data-id='${id}']`); "
                           "return r !== null && r.dataset.state === 'running' && Number(r.dataset.done) > 0; }",
                           arg=job_id, timeout=300_000)
    expect(row).to_contain_text("items/s")
    _shot(page, "admin-job-running")
    row.locator(".job-cancel").click()
    expect(row).to_have_attribute("data-state", "cancelled")
    expect(row.locator(".job-cancel")).to_have_count(0)
    expect(page.locator("#jobs-error")).to_be_hidden()
    _shot(page, "admin-job-cancelled")

    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    deadline, job = time.monotonic() + 60, {}
    while time.monotonic() < deadline:  # the runner stops after the batch it was storing
        job = httpx.get(f"{server}/api/v1/admin/jobs/{job_id}", headers=headers, timeout=10).json()
        time.sleep(1.0)
        if httpx.get(f"{server}/api/v1/admin/jobs/{job_id}", headers=headers, timeout=10).json()["done"] == job["done"]:
            break
    assert job["state"] == "cancelled" and 0 < job["done"] < job["total"] == 2400, job
    kept = httpx.get(f"{server}/api/v1/items", params={"source": f"job:{job_id}", "limit": 1}, timeout=10).json()
    assert kept["total"] == 2 * job["done"]  # each shape: a points item and an image item
    r = httpx.post(f"{server}/api/v1/admin/jobs/{job_id}/cancel", headers=headers, timeout=10)
    assert (r.status_code, r.json()["error"]) == (409, "job_ended")


# --- Filters, More like this, distinct names (issue 40, item 8) ---------------------------------------------------

def _shown(page: Any) -> list[dict[str, Any]]:
    """The result cards as the page shows them (rank order)."""
    return page.locator("#results > li.result").evaluate_all(
        "els => els.map(e => ({id: Number(e.dataset.id), distance: Number(e.dataset.distance), name: e.dataset.name, "
        "label: e.dataset.label, source: e.dataset.source, "
        "sourceText: e.querySelector('.source') ? e.querySelector('.source').textContent : null}))")


def _pairs(hits: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(int(h["id"]), int(h["distance"])) for h in hits]


def _api_search(server: str, endpoint: str, name: str, data: bytes, params: list[tuple[str, Any]]) -> list[dict]:
    r = httpx.post(f"{server}/api/v1/search/{endpoint}", params=params, files={"file": (name, data)}, timeout=60)
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def _api_similar(server: str, item_id: int, params: list[tuple[str, Any]]) -> list[dict]:
    r = httpx.get(f"{server}/api/v1/items/{item_id}/similar", params=params, timeout=60)
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def _wait_params(page: Any, *parts: str) -> None:
    """Wait until the results shown are those of a search whose query string holds every one of ``parts``."""
    page.wait_for_function("(parts) => { const p = document.getElementById('results').dataset.params; "
                           "return p !== undefined && parts.every((x) => p.split('&').includes(x)); }", arg=list(parts))


def _wait_no_param(page: Any, key: str) -> None:
    page.wait_for_function("(key) => { const p = document.getElementById('results').dataset.params; "
                           "return p !== undefined && !new URLSearchParams(p).has(key); }", arg=key)


def test_label_filter_and_max_distance_match_the_api(page: Any, server: str) -> None:
    """The label picker is filled from /stats; checked labels (any of them) and the max distance apply to the
    current search at once, and the page lists exactly what the API answers for the same query."""
    from playwright.sync_api import expect

    stats = httpx.get(f"{server}/api/v1/stats", timeout=10).json()
    options = page.locator("#label-options input[type=checkbox]")
    expect(page.locator("#label-options")).to_have_attribute("data-loaded", "true")
    assert sorted(options.evaluate_all("els => els.map(e => e.value)")) == sorted(stats["labels"])
    wanted = sorted(stats["labels"], key=lambda name: (-stats["labels"][name], name))[:2]

    png = png_bytes(64, (200, 120, 30))
    _upload(page, "query.png", png, "image/png")
    _wait_params(page, "k=10", "bits=64")
    unfiltered = _shown(page)
    assert len(unfiltered) == 10
    assert {h["label"] for h in unfiltered} - set(wanted), "the unfiltered answer must hold other labels"
    assert all(h["sourceText"] == h["source"] and h["source"] for h in unfiltered)  # each card says its source
    expect(page.locator("#results > li.result .source").first).to_be_visible()

    for label in wanted:
        page.locator(f"#label-options input[value='{label}']").check()
    _wait_params(page, *(f"label={label}" for label in wanted))
    shown = _shown(page)
    expected = _api_search(server, "image-to-points", "query.png", png,
                           [("k", 10), ("bits", 64), *(("label", label) for label in wanted)])
    assert shown and {h["label"] for h in shown} <= set(wanted)
    assert _pairs(shown) == _pairs(expected)
    expect(page.locator("#search-status-text")).to_contain_text(f"label {' or '.join(sorted(wanted))}")
    expect(page.locator("#label-status")).to_contain_text("2 of")
    _shot(page, "filter-labels")

    cut = shown[len(shown) // 2]["distance"]
    page.fill("#max-distance", str(cut))
    page.press("#max-distance", "Enter")
    _wait_params(page, f"max_distance={cut}", *(f"label={label}" for label in wanted))
    shown = _shown(page)
    expected = _api_search(server, "image-to-points", "query.png", png,
                           [("k", 10), ("bits", 64), ("max_distance", cut), *(("label", label) for label in wanted)])
    assert shown and all(h["distance"] <= cut for h in shown) and {h["label"] for h in shown} <= set(wanted)
    assert _pairs(shown) == _pairs(expected)

    page.click("#label-clear")  # back to every label, keyboard focus stays in the picker
    _wait_no_param(page, "label")
    assert options.evaluate_all("els => els.filter(e => e.checked).length") == 0
    expect(options.first).to_be_focused()
    expected = _api_search(server, "image-to-points", "query.png", png,
                           [("k", 10), ("bits", 64), ("max_distance", cut)])
    assert _pairs(_shown(page)) == _pairs(expected)


def test_more_like_this_searches_from_the_stored_item(page: Any, server: str, shape_points: np.ndarray) -> None:
    """More like this on a card: GET /items/{id}/similar with the form's target, k, bits and filters; the item
    itself comes first at distance 0 in its own modality, and the page shows exactly the API's answer."""
    from playwright.sync_api import expect

    page.fill("#k", "8")
    ply = ply_bytes(shape_points[1])
    _upload(page, "shape.ply", ply, "application/octet-stream")
    expect(page.locator("#results")).to_have_attribute("data-endpoint", "points-to-images")
    page.locator("input[name=target][value=points]").check()  # same modality: point clouds
    expect(page.locator("#results")).to_have_attribute("data-endpoint", "points-to-points")
    cards = _shown(page)
    assert len(cards) == 8
    # an item whose code no item with a smaller id shares (tiny random weights give equal codes to some shapes; ties
    # at distance 0 are ordered by id), so that it must come first in its own modality
    own = {"target": "points", "k": 1, "bits": 64}
    pick = next(h for h in cards if _api_similar(server, h["id"], list(own.items()))[0]["id"] == h["id"])

    more = page.locator(f"#results > li.result[data-id='{pick['id']}'] button.more-like")
    expect(more).to_have_accessible_name(f"More like this: search from {pick['name']} (item {pick['id']})")
    more.focus()
    page.keyboard.press("Enter")  # keyboard operable
    expect(page.locator("#results")).to_have_attribute("data-item", str(pick["id"]))
    expect(page.locator("#results")).to_have_attribute("data-endpoint", "similar")
    _wait_params(page, "k=8", "bits=64", "target=points")
    expect(page.locator("#results-heading")).to_be_focused()
    expect(page.locator("#query-caption")).to_contain_text(f"More like: {pick['name']} (#{pick['id']})")
    expect(page.locator("#query-viewer")).to_have_attribute("data-state", "shown")  # its cloud, from points.ply
    expect(page.locator("#search-status-text")).to_contain_text(f"more like {pick['name']} (#{pick['id']})")
    shown = _shown(page)
    assert (shown[0]["id"], shown[0]["distance"]) == (pick["id"], 0)
    assert _pairs(shown) == _pairs(_api_similar(server, pick["id"], [("target", "points"), ("k", 8), ("bits", 64)]))
    _shot(page, "more-like-this")

    page.locator("input[name=target][value=images]").check()  # the same item, cross-modal, other bits, a filter
    page.select_option("#bits", "16")
    page.check("#distinct")
    _wait_params(page, "target=images", "bits=16", "distinct=name")
    expect(page.locator("#results")).to_have_attribute("data-modality", "image")
    expected = _api_similar(server, pick["id"], [("target", "images"), ("k", 8), ("bits", 16), ("distinct", "name")])
    assert _pairs(_shown(page)) == _pairs(expected)

    gone = {"error": "not_found", "detail": f"no item with id {pick['id']}"}  # as if deleted meanwhile
    page.route(f"**/api/v1/items/{pick['id']}/similar**", lambda route: route.fulfill(status=404, json=gone))
    page.uncheck("#distinct")  # re-runs the search: the API's error is shown
    expect(page.locator("#search-error")).to_contain_text(f"no item with id {pick['id']}")
    expect(page.locator("#search-error")).to_contain_text("not_found (HTTP 404)")


def test_distinct_names_toggle(page: Any, server: str, demo_npz: Path) -> None:
    """With the gallery indexed twice (demo and a job), names repeat; 'Distinct names' keeps one hit per name,
    as the API's distinct=name does."""
    from playwright.sync_api import expect

    job_id = _post_job(server, "copy.npz", demo_npz.read_bytes())
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    deadline = time.monotonic() + 180
    while httpx.get(f"{server}/api/v1/admin/jobs/{job_id}", headers=headers, timeout=10).json()["state"] != "succeeded":
        assert time.monotonic() < deadline, "the copy of the gallery was not indexed in time"
        time.sleep(0.5)

    page.fill("#k", "20")
    png = png_bytes(64, (40, 160, 90))
    _upload(page, "query.png", png, "image/png")
    _wait_params(page, "k=20")
    names = [h["name"] for h in _shown(page)]
    assert len(names) == 20 and len(set(names)) < len(names), "the copies must answer too"
    sources = {h["source"] for h in _shown(page)}
    assert "demo" in sources and any(s.startswith("job:") for s in sources), sources

    page.check("#distinct")
    _wait_params(page, "k=20", "distinct=name")
    shown = _shown(page)
    assert len({h["name"] for h in shown}) == len(shown)
    expected = _api_search(server, "image-to-points", "query.png", png, [("k", 20), ("bits", 64), ("distinct", "name")])
    assert _pairs(shown) == _pairs(expected)
    expect(page.locator("#search-status-text")).to_contain_text("distinct names")
    _shot(page, "distinct-names")

    page.uncheck("#distinct")
    _wait_no_param(page, "distinct")
    assert len(_shown(page)) == 20
