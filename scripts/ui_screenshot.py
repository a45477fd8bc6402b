#!/usr/bin/env python3
"""Screenshot of the web UI after a search: start the server, upload a file through the page, save a PNG.

Starts ``service.app.run_server`` in a subprocess on a free port (or uses ``--url``), waits for
``/ready``, opens ``/`` in Debian's chromium through Playwright, uploads QUERY (a picture or a 3D
file) with the page's file picker, waits for the result grid and saves a full-page screenshot.

    .venv/bin/python scripts/ui_screenshot.py chair.ply                      # shipped weights, demo gallery
    .venv/bin/python scripts/ui_screenshot.py photo.jpg --open-first --out docs/ui-viewer.png
    .venv/bin/python scripts/ui_screenshot.py q.ply --weights /tmp/tiny --demo-data /tmp/demo.npz --out /tmp/ui.png

Without ``--data-dir`` the index lives in a temporary directory, so the demo gallery is built at every
run (with the shipped weights: a minute or two on CPU); pass ``--data-dir`` to keep and reuse it.
Needs ``playwright`` (dev extra) and ``/usr/bin/chromium`` (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]
IMAGES_LOADED = "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("query", type=Path, help="picture or 3D file to search with")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "ui.png", help="PNG to write (default docs/ui.png)")
    p.add_argument("--weights", type=Path, default=None, help="weights directory (default: the shipped weights/)")
    p.add_argument("--data-dir", type=Path, default=None, help="index directory (default: a temporary one)")
    p.add_argument("--demo-data", type=Path, default=None,
                   help="dataset indexed into an empty index (default: the shipped demo gallery)")
    p.add_argument("--url", default=None, help="use this running server instead of starting one")
    p.add_argument("--target", choices=("points", "images"), default=None,
                   help="what to search for (default: the other modality, as the page does)")
    p.add_argument("--k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--bits", type=int, choices=(16, 32, 64), default=64, help="code length (default 64)")
    p.add_argument("--open-first", action="store_true",
                   help="open the first point-cloud result in the 3D viewer before the screenshot")
    p.add_argument("--width", type=int, default=1280, help="viewport width (default 1280)")
    p.add_argument("--height", type=int, default=900, help="viewport height (default 900)")
    p.add_argument("--chromium", type=Path, default=Path("/usr/bin/chromium"), help="chromium executable")
    p.add_argument("--ready-timeout", type=float, default=1800.0, help="seconds to wait for /ready (default 1800)")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ready_state(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def start_server(args: argparse.Namespace, data_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, CMAH_DATA_DIR=str(data_dir.resolve()))
    if args.weights is not None:
        env["CMAH_WEIGHTS_DIR"] = str(args.weights.resolve())
    if args.demo_data is not None:
        env["CMAH_DEMO_DATA"] = str(args.demo_data.resolve())
    code = f"from service.app import run_server; raise SystemExit(run_server('127.0.0.1', {port}))"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float, log_path: Path | None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        status, body = ready_state(url)
        if status == 200:
            return
        if body != last:
            print(f"[ui_screenshot] waiting for {url}/ready: {body.strip()[:200]}")
            last = body
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            raise SystemExit(f"[ui_screenshot] the server exited with code {proc.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            raise SystemExit(f"[ui_screenshot] {url} not ready after {timeout:.0f} s")
        time.sleep(0.5)


def screenshot(args: argparse.Namespace, url: str) -> str:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(args.chromium), args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.set_default_timeout(120_000)
            page.goto(f"{url}/")
            page.wait_for_selector("body[data-ready='true']", state="attached")
            page.fill("#k", str(args.k))
            page.select_option("#bits", str(args.bits))
            page.evaluate("() => document.activeElement?.blur()")  # no focus ring in the picture
            page.set_input_files("#file", str(args.query))
            page.wait_for_selector("#results[data-endpoint], #search-error:not([hidden])", state="attached")
            if args.target is not None:
                page.locator(f"input[name=target][value={args.target}]").check()
                page.wait_for_selector(f"#results[data-endpoint$='-to-{args.target}'], "
                                       "#search-error:not([hidden])", state="attached")
            page.wait_for_selector("#spinner", state="hidden")
            if page.locator("#search-error").is_visible():
                status = f"search failed: {page.locator('#search-error').inner_text()}"
            else:
                page.wait_for_function(IMAGES_LOADED)
                page.wait_for_selector("#query-viewer[data-state='shown'], #query-viewer[data-state='error'], "
                                       "#query-viewer[hidden]", state="attached")
                status = page.locator("#search-status-text").inner_text()
                if args.open_first:
                    button = page.locator("#results > li.result button").first
                    if button.count() == 0:
                        raise SystemExit("[ui_screenshot] --open-first needs point-cloud results (--target points)")
                    button.click()
                    page.wait_for_selector("#dialog-viewer[data-state='shown'], #dialog-viewer[data-state='error']",
                                           state="attached")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=not args.open_first)
            return status
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.query.is_file():
        raise SystemExit(f"[ui_screenshot] {args.query}: no such file")
    if not args.chromium.is_file():
        raise SystemExit(f"[ui_screenshot] {args.chromium} is missing (apt-get install chromium)")
    if args.url:
        wait_ready(args.url.rstrip("/"), None, args.ready_timeout, None)
        print(f"[ui_screenshot] {screenshot(args, args.url.rstrip('/'))}")
        print(f"[ui_screenshot] wrote {args.out}")
        return 0
    with tempfile.TemporaryDirectory(prefix="cmah-ui-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        log_path = Path(tmp) / "server.log"
        proc, url = start_server(args, data_dir, log_path)
        try:
            wait_ready(url, proc, args.ready_timeout, log_path)
            print(f"[ui_screenshot] {screenshot(args, url)}")
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print(f"[ui_screenshot] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
