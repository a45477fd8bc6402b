"""HTTP load test of the retrieval service: concurrent clients doing mixed searches against a real server.

    .venv/bin/python bench/load.py [--weights DIR] [--data-dir DIR] [--clients 32] [--seconds 60]
    .venv/bin/python bench/load.py --url http://127.0.0.1:8000 [--pid PID] ...

Without ``--url`` it starts ``cmah serve`` (``python -m service.cli serve``) on 127.0.0.1 and a free
port, with ``CMAH_WEIGHTS_DIR=--weights`` and ``--data-dir`` (default: a fresh temporary directory,
so the demo gallery of 319 shapes is indexed at start-up; removed afterwards), waits for ``/ready``,
runs the load, and stops the server with SIGTERM (uvicorn's graceful shutdown; SIGKILL only if it
has not exited after ``--stop-timeout`` seconds). With ``--url`` it uses a running server (server RSS
only when ``--pid`` names its process).

Load: ``--clients`` threads, each with its own keep-alive HTTP connection, send requests back to back
for ``--seconds`` (at most 600), each request bounded by ``--request-timeout``. Every request is one
of the four searches, picked at random (seeded) with equal weights: ``image-to-points`` and
``image-to-images`` with a PNG (a demo shape rendered at 224 px, as ``cmah render`` does),
``points-to-images`` and ``points-to-points`` with a binary PLY of a demo shape (``--queries``
distinct shapes). A request counts as an error unless it answers 200 with ``k`` results. One request
per route is sent first, untimed (warm-up).

Bulk job (``--bulk-job FILE``, a dataset ``.npz`` or a ``.zip``): while the clients search, one more
thread keeps an indexing job running on the same server: it submits ``FILE`` to ``POST
/api/v1/admin/jobs`` (Bearer ``--admin-token``; a started server gets that token, or a random one, as
``CMAH_ADMIN_TOKEN``), polls ``GET /api/v1/admin/jobs/{id}`` every ``--job-poll`` seconds, and submits
it again as soon as it has finished, until the load ends (the job then running is left to finish or to
be stopped with the server). A job that fails, or that indexes a file with an error, counts as an error.

Reports requests/s, p50 / p99 latency (overall and per route, with the job submissions and status
polls as routes of their own), errors (must be 0: the exit status is 1 otherwise), the server's RSS
(``VmRSS`` of /proc/<pid>/status) before and after the load and its peak (``VmHWM``), and the mean
model batch per kind from ``/metrics``; with a bulk job, the jobs submitted / finished, the shapes and
items indexed during the load (the index size from ``/ready`` before and after) and the RSS check:
growth during the load at most ``--max-rss-growth-mib`` plus ``--rss-per-item-kib`` per item added
(the exit status is 1 otherwise). Prints markdown tables; ``--json FILE`` also writes the figures.

Only loopback servers are loaded (``--url`` must be 127.0.0.1, localhost or [::1]) unless
``--allow-non-loopback`` is given.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from model.device import cpu_name

ROOT = Path(__file__).resolve().parents[1]

DEMO = ROOT / "model" / "assets" / "demo_modelnet40.npz"
ROUTES = ("image-to-points", "points-to-images", "image-to-images", "points-to-points")
#: The bulk job's requests, reported as routes of their own.
JOB_SUBMIT, JOB_POLL = "POST admin/jobs", "GET admin/jobs/{id}"
JOB_ROUTES = (JOB_SUBMIT, JOB_POLL)
MAX_SECONDS = 600.0
LOOPBACK_URL = re.compile(r"^https?://(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|localhost|\[::1\])(:\d+)?/?$")


# ------------------------------------------------------------------------------------------ helpers
def proc_status(pid: int | None) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a process in KiB (empty when unknown)."""
    if pid is None:
        return {}
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_queries(n: int) -> dict[str, list[bytes]]:
    """``n`` PNG renders (224 px) and ``n`` binary PLY files of demo shapes."""
    import torch
    from PIL import Image

    from model.dataset import load_dataset
    from model.io import normalize_points, write_ply
    from model.renderer import RenderConfig, canonical_view, render, to_uint8

    torch.set_num_threads(1)
    ds = load_dataset(DEMO)
    idx = np.linspace(0, len(ds) - 1, n).round().astype(int)
    clouds = np.stack([normalize_points(ds.points[i].astype(np.float32)) for i in idx])
    imgs = to_uint8(render(torch.from_numpy(clouds), canonical_view(n), RenderConfig(image_size=224))).numpy()
    pngs, plys = [], []
    for img, cloud in zip(imgs, clouds, strict=True):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        pngs.append(buf.getvalue())
        buf = io.BytesIO()
        write_ply(buf, cloud, binary=True)
        plys.append(buf.getvalue())
    return {"image": pngs, "points": plys}


def dataset_size(path: Path) -> int | None:
    """Shapes in a dataset .npz (None for anything else)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return int(npz["points"].shape[0])
    except (OSError, ValueError, KeyError):
        return None


# ------------------------------------------------------------------------------------------ server
class Server:
    """``cmah serve`` in a subprocess (its own process group), logging to a file."""

    def __init__(self, weights: str | None, data_dir: Path, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = dict(os.environ, CMAH_LOG_LEVEL="WARNING")
        full_env.update(env)
        if weights:
            full_env["CMAH_WEIGHTS_DIR"] = str(Path(weights).resolve())
        cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(data_dir)]
        self.cmd = cmd
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float) -> str:
        """SIGTERM, wait; SIGKILL after ``timeout``. Returns how it ended."""
        try:
            if self.proc.poll() is not None:
                return f"had already exited ({self.proc.returncode})"
            t0 = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return f"did not stop within {timeout:g} s of SIGTERM; killed"
            took = time.monotonic() - t0
            if rc == -signal.SIGTERM:  # uvicorn re-raises the signal once its graceful shutdown has finished
                graceful = "Application shutdown complete" in self.log_tail(200)
                return (f"stopped {took:.1f} s after SIGTERM (exit by the re-raised SIGTERM, as uvicorn does after "
                        f"its graceful shutdown{'; log: application shutdown complete' if graceful else ''})")
            return f"stopped {took:.1f} s after SIGTERM, exit status {rc}"
        finally:
            self._log.close()


def wait_ready(url: str, timeout: float, server: Server | None) -> float:
    """Seconds until ``/ready`` answered 200; raises on timeout or a dead server."""
    t0 = time.monotonic()
    last = "no answer"
    with httpx.Client(base_url=url, timeout=5.0) as c:
        while time.monotonic() - t0 < timeout:
            if server is not None and server.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({server.proc.returncode}):\n{server.log_tail()}")
            try:
                r = c.get("/ready")
                if r.status_code == 200:
                    return time.monotonic() - t0
                last = r.json().get("detail", r.text)
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.25)
    raise RuntimeError(f"not ready after {timeout:g} s (last: {last})")


def batch_sums(url: str) -> dict[str, tuple[float, float]]:
    """``(sum, count)`` of the ``cmah_inference_batch_size`` histogram per kind, from /metrics."""
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    found: dict[str, dict[str, float]] = {}
    for m in re.finditer(r'^cmah_inference_batch_size_(sum|count)\{kind="(\w+)"\} ([0-9.e+]+)$', text, re.M):
        found.setdefault(m.group(2), {})[m.group(1)] = float(m.group(3))
    return {k: (v.get("sum", 0.0), v.get("count", 0.0)) for k, v in found.items()}


def batch_means(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean model batch per kind between two :func:`batch_sums` snapshots."""
    out = {}
    for kind, (s1, c1) in after.items():
        s0, c0 = before.get(kind, (0.0, 0.0))
        if c1 > c0:
            out[kind] = (s1 - s0) / (c1 - c0)
    return out


# ------------------------------------------------------------------------------------------ load
@dataclass
class Results:
    lat: dict[str, list[float]] = field(default_factory=lambda: {r: [] for r in ROUTES + JOB_ROUTES})
    errors: dict[str, int] = field(default_factory=lambda: {r: 0 for r in ROUTES + JOB_ROUTES})
    messages: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, route: str, msg: str) -> None:
        with self.lock:
            self.errors[route] += 1
            if len(self.messages) < 10:
                self.messages.append(f"{route}: {msg}")


def one_request(c: httpx.Client, route: str, queries: dict[str, list[bytes]], i: int, k: int) -> str | None:
    """Sends one search; returns None when it succeeded, else what went wrong."""
    kind = "image" if route.startswith("image") else "points"
    data = queries[kind][i % len(queries[kind])]
    name = "q.png" if kind == "image" else "q.ply"
    r = c.post(f"/api/v1/search/{route}", files={"file": (name, data)}, params={"k": k})
    if r.status_code != 200:
        return f"HTTP {r.status_code}: {r.text[:200]}"
    n = len(r.json()["results"])
    return None if n == k else f"{n} results, expected {k}"


def client_loop(url: str, seed: int, deadline: float, queries: dict[str, list[bytes]], args: argparse.Namespace,
                res: Results) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=args.request_timeout) as c:
        while time.monotonic() < deadline:
            route = rng.choice(ROUTES)
            t0 = time.perf_counter()
            try:
                problem = one_request(c, route, queries, rng.randrange(1 << 30), args.k)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            dt = time.perf_counter() - t0
            if problem is None:
                with res.lock:
                    res.lat[route].append(dt)
            else:
                res.error(route, problem)


@dataclass
class BulkStats:
    """What the bulk-job thread did."""

    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    shapes: int = 0  # `done` of the finished jobs, plus that of the job running when the load ended
    file_errors: int = 0
    running_at_end: str | None = None


def bulk_job_loop(url: str, token: str, path: Path, deadline: float, args: argparse.Namespace, res: Results,
                  stats: BulkStats) -> None:
    """Keeps one indexing job of ``path`` running until ``deadline`` (submitted again when it finishes)."""
    data = path.read_bytes()
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=args.request_timeout, headers=headers) as c:
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                r = c.post("/api/v1/admin/jobs", files={"file": (path.name, data, "application/octet-stream")})
                job_id = r.json()["job_id"] if r.status_code == 202 else None
                problem = None if job_id else f"HTTP {r.status_code}: {r.text[:200]}"
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                job_id, problem = None, f"{type(exc).__name__}: {exc}"
            if problem is not None:
                res.error(JOB_SUBMIT, problem)
                time.sleep(1.0)
                continue
            with res.lock:
                res.lat[JOB_SUBMIT].append(time.perf_counter() - t0)
            stats.submitted += 1
            while True:
                time.sleep(args.job_poll)
                t0 = time.perf_counter()
                try:
                    r = c.get(f"/api/v1/admin/jobs/{job_id}")
                    body = r.json() if r.status_code == 200 else None
                except (httpx.HTTPError, ValueError) as exc:
                    r, body = None, {"error": f"{type(exc).__name__}: {exc}"}
                if r is None or r.status_code != 200 or body is None or "state" not in body:
                    res.error(JOB_POLL, f"HTTP {getattr(r, 'status_code', '-')}: {body or r.text[:200]}")
                    continue
                with res.lock:
                    res.lat[JOB_POLL].append(time.perf_counter() - t0)
                if body["state"] in ("succeeded", "failed"):
                    stats.shapes += int(body["done"])
                    stats.file_errors += int(body["failed"])
                    if body["state"] == "succeeded" and not body["failed"]:
                        stats.succeeded += 1
                    else:
                        stats.failed += 1
                        res.error(JOB_POLL, f"job {job_id} {body['state']}: {body['failed']} files failed, "
                                            f"{body.get('error') or body.get('errors')}"[:300])
                    break
                if time.monotonic() >= deadline:
                    stats.shapes += int(body["done"])
                    stats.running_at_end = f"{job_id} ({body['state']}, {body['done']}/{body['total']})"
                    break


def ready_items(url: str) -> int | None:
    try:
        return int(httpx.get(url + "/ready", timeout=10).json()["items"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def warm_up(url: str, queries: dict[str, list[bytes]], args: argparse.Namespace) -> None:
    """One untimed request per route; raises if any fails."""
    with httpx.Client(base_url=url, timeout=args.request_timeout) as c:
        for i, route in enumerate(ROUTES):
            problem = one_request(c, route, queries, i, args.k)
            if problem:
                raise RuntimeError(f"warm-up {route} failed: {problem}")


def run_load(url: str, queries: dict[str, list[bytes]], args: argparse.Namespace,
             bulk: tuple[str, Path, BulkStats] | None = None) -> tuple[Results, float]:
    """The clients' load for ``args.seconds``; with ``bulk`` (token, dataset file, stats) a bulk job beside it."""
    res = Results()
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    threads = [threading.Thread(target=client_loop, args=(url, s, deadline, queries, args, res), daemon=True)
               for s in range(args.clients)]
    if bulk is not None:
        token, path, stats = bulk
        threads.append(threading.Thread(target=bulk_job_loop, args=(url, token, path, deadline, args, res, stats),
                                        name="bulk-job", daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline + args.request_timeout + 5 - time.monotonic()))
    elapsed = time.monotonic() - t0
    stuck = sum(t.is_alive() for t in threads)
    if stuck:
        res.messages.append(f"{stuck} client / bulk-job threads still running after the deadline")
    return res, elapsed


# ------------------------------------------------------------------------------------------ output
def _pct(values: list[float], q: float) -> str:
    return f"{np.percentile(np.array(values) * 1000, q):.1f}" if values else "–"


def _mib(kib: int | None) -> str:
    return f"{kib / 1024:.0f}" if kib else "n/a"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def summary(meta: dict, res: Results, elapsed: float, before: dict, after: dict) -> dict:
    """The figures of :func:`report` as a dict (``--json``)."""
    routes = {}
    for route, lat in res.lat.items():
        if lat or res.errors[route]:
            routes[route] = {"requests": len(lat) + res.errors[route], "errors": res.errors[route],
                             "p50_ms": float(np.percentile(np.array(lat) * 1000, 50)) if lat else None,
                             "p99_ms": float(np.percentile(np.array(lat) * 1000, 99)) if lat else None}
    search_lat = [v for r in ROUTES for v in res.lat[r]]
    return {"clients": meta["clients"], "seconds": meta["seconds"], "elapsed_s": elapsed,
            "requests": sum(r["requests"] for r in routes.values()), "errors": sum(res.errors.values()),
            "search_requests_per_s": len(search_lat) / elapsed, "messages": res.messages, "routes": routes,
            "rss_before_kib": before.get("VmRSS"), "rss_after_kib": after.get("VmRSS"),
            "rss_peak_kib": after.get("VmHWM"), "bulk": meta.get("bulk")}


def report(meta: dict, res: Results, elapsed: float, before: dict, after: dict) -> str:
    all_lat = [v for vals in res.lat.values() for v in vals]
    n_ok, n_err = len(all_lat), sum(res.errors.values())
    out = [f"**Machine:** {meta['machine']}", "",
           f"**Server:** {meta['server']}", "",
           f"**Load:** {meta['clients']} concurrent clients (threads in one process, one keep-alive connection "
           f"each) for {meta['seconds']:g} s, mixed searches (equal shares of the 4 routes), k = {meta['k']}; "
           f"{meta['queries']} distinct query shapes; load average at start {meta['load']}", "",
           "| clients | duration s | requests | requests/s | p50 ms | p99 ms | errors | server RSS before MiB | "
           "RSS after MiB | peak RSS MiB |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
           f"| {meta['clients']} | {elapsed:.1f} | {n_ok + n_err} | {n_ok / elapsed:.1f} | {_pct(all_lat, 50)} | "
           f"{_pct(all_lat, 99)} | {n_err} | {_mib(before.get('VmRSS'))} | {_mib(after.get('VmRSS'))} | "
           f"{_mib(after.get('VmHWM'))} |", "",
           "| route | requests | requests/s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
    for route in ROUTES + (JOB_ROUTES if meta.get("bulk") else ()):
        lat = res.lat[route]
        out.append(f"| `{route}` | {len(lat) + res.errors[route]} | {len(lat) / elapsed:.1f} | {_pct(lat, 50)} | "
                   f"{_pct(lat, 99)} | {res.errors[route]} |")
    bulk = meta.get("bulk")
    if bulk:
        out += ["", f"**Bulk job** beside the load: `{bulk['file']}` ({bulk['file_shapes']} shapes) submitted to "
                f"`POST /api/v1/admin/jobs` and again whenever it finished; status polled every {bulk['poll']:g} s.",
                "", "| jobs submitted | succeeded | failed | shapes indexed | items before | items after | "
                "items added | RSS growth MiB | bound MiB | RSS check |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
                f"| {bulk['submitted']} | {bulk['succeeded']} | {bulk['failed']} | {bulk['shapes']} | "
                f"{bulk['items_before']} | {bulk['items_after']} | {bulk['items_added']} | "
                f"{_num(bulk['rss_growth_mib'])} | {bulk['rss_bound_mib']:.0f} | {bulk['rss_check']} |"]
        if bulk.get("running_at_end"):
            out += ["", f"Job still running when the load ended: {bulk['running_at_end']}."]
    if meta.get("batches"):
        out += ["", "Mean model batch during the run (`/metrics`): "
                + ", ".join(f"{k} {v:.1f}" for k, v in sorted(meta["batches"].items()))]
    if res.messages:
        out += ["", "Errors (first 10):", ""] + [f"* {m}" for m in res.messages]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="an already-running server (no server is started)")
    p.add_argument("--pid", type=int, help="with --url: the server's process id, for its RSS")
    p.add_argument("--weights", help="weights directory for the started server (default: the shipped weights)")
    p.add_argument("--data-dir", help="data directory of the started server (default: a fresh temporary one)")
    p.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra environment of the started server (e.g. CMAH_TORCH_THREADS=2 CMAH_MAX_BATCH=32)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    p.add_argument("--seconds", type=float, default=60.0, help=f"load duration (default 60, at most {MAX_SECONDS:g})")
    p.add_argument("--k", type=int, default=10, help="results per search (default 10)")
    p.add_argument("--queries", type=int, default=8, help="distinct query shapes (default 8)")
    p.add_argument("--request-timeout", type=float, default=30.0, help="per-request timeout in seconds")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="longest wait for /ready in seconds")
    p.add_argument("--stop-timeout", type=float, default=30.0, help="grace period after SIGTERM in seconds")
    p.add_argument("--bulk-job", type=Path, metavar="FILE",
                   help="dataset .npz (or .zip) kept indexing by an admin job during the load (e.g. "
                        "model/assets/demo_modelnet40.npz)")
    p.add_argument("--admin-token", default=os.environ.get("CMAH_ADMIN_TOKEN"),
                   help="admin token for --bulk-job (default: $CMAH_ADMIN_TOKEN; a started server without one "
                        "gets a random token)")
    p.add_argument("--job-poll", type=float, default=0.5, help="seconds between job status polls (default 0.5)")
    p.add_argument("--max-rss-growth-mib", type=float, default=300.0,
                   help="with --bulk-job: most server RSS growth during the load, in MiB, beyond the items added "
                        "(default 300)")
    p.add_argument("--rss-per-item-kib", type=float, default=16.0,
                   help="with --bulk-job: RSS allowed per item added, in KiB (default 16)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--allow-non-loopback", action="store_true",
                   help="allow a --url that is not a loopback address (never needed for a local run)")
    args = p.parse_args(argv)
    if not 1 <= args.clients <= 512 or not 0 < args.seconds <= MAX_SECONDS or args.queries < 1:
        p.error(f"--clients must be 1..512, --seconds in (0, {MAX_SECONDS:g}], --queries >= 1")
    if args.url and not args.allow_non_loopback and not LOOPBACK_URL.match(args.url):
        p.error("--url must be a loopback address (127.x.x.x, localhost or [::1]); see --allow-non-loopback")
    if args.bulk_job is not None:
        if not args.bulk_job.is_file():
            p.error(f"--bulk-job {args.bulk_job}: no such file")
        if args.url and not args.admin_token:
            p.error("--bulk-job with --url needs --admin-token (or $CMAH_ADMIN_TOKEN)")
        if not 0.05 <= args.job_poll <= 60:
            p.error("--job-poll must be in [0.05, 60] seconds")

    queries = make_queries(args.queries)
    server: Server | None = None
    tmp: str | None = None
    try:
        if args.url:
            url, pid = args.url.rstrip("/"), args.pid
            server_desc = f"already running at {url}" + (f" (pid {pid})" if pid else "")
        else:
            tmp = tempfile.mkdtemp(prefix="cmah-load-")
            data_dir = Path(args.data_dir) if args.data_dir else Path(tmp) / "data"
            env = dict(kv.split("=", 1) for kv in args.server_env)
            if args.bulk_job is not None:
                args.admin_token = args.admin_token or secrets.token_urlsafe(24)
                env["CMAH_ADMIN_TOKEN"] = args.admin_token
            server = Server(args.weights, data_dir, env, Path(tmp) / "server.log")
            url, pid = server.url, server.pid
            print(f"started {' '.join(server.cmd)} (pid {pid})", file=sys.stderr)
        ready_s = wait_ready(url, args.ready_timeout, server)
        with httpx.Client(base_url=url, timeout=10) as c:
            items = c.get("/ready").json().get("items")
        print(f"ready after {ready_s:.1f} s ({items} items); load: {args.clients} clients x {args.seconds:g} s",
              file=sys.stderr)
        if server is not None:
            weights = args.weights or "weights/ (shipped)"
            extra = " ".join(args.server_env)
            server_desc = (f"`cmah serve` subprocess on {url} (pid {pid}), weights `{weights}`, data dir "
                           f"{'`' + args.data_dir + '`' if args.data_dir else 'fresh temporary'}"
                           f"{', env ' + extra if extra else ''}; ready after {ready_s:.1f} s")
        server_desc += f"; index {items} items"
        warm_up(url, queries, args)
        load_at_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        stats = BulkStats() if args.bulk_job is not None else None
        items_before = ready_items(url)
        before, sums0 = proc_status(pid), batch_sums(url)
        res, elapsed = run_load(url, queries, args, (args.admin_token, args.bulk_job, stats) if stats else None)
        after, sums1 = proc_status(pid), batch_sums(url)
        items_after = ready_items(url)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        meta = dict(machine=f"CPU: {cpu_name()}, {cores} cores (server and clients on the same machine)",
                    server=server_desc, clients=args.clients, seconds=args.seconds, k=args.k, queries=args.queries,
                    load=load_at_start, batches=batch_means(sums0, sums1))
        rss_ok = True
        if stats is not None:
            added = (items_after - items_before) if items_before is not None and items_after is not None else None
            bound = args.max_rss_growth_mib + (added or 0) * args.rss_per_item_kib / 1024
            growth = (after["VmRSS"] - before["VmRSS"]) / 1024 if "VmRSS" in before and "VmRSS" in after else None
            rss_ok = growth is None or growth <= bound
            check = ("n/a (no server pid)" if growth is None else
                     f"pass ({growth:.0f} ≤ {bound:.0f})" if rss_ok else f"FAIL ({growth:.0f} > {bound:.0f})")
            meta["bulk"] = dict(file=str(args.bulk_job), file_shapes=dataset_size(args.bulk_job), poll=args.job_poll,
                                submitted=stats.submitted, succeeded=stats.succeeded, failed=stats.failed,
                                shapes=stats.shapes, file_errors=stats.file_errors, items_before=items_before,
                                items_after=items_after, items_added=added, rss_growth_mib=growth,
                                rss_bound_mib=bound, running_at_end=stats.running_at_end,
                                rss_check=check)
        print(report(meta, res, elapsed, before, after))
        if args.json is not None:
            args.json.write_text(json.dumps(summary(meta, res, elapsed, before, after), indent=2))
        return 1 if sum(res.errors.values()) or res.messages or not rss_ok else 0
    finally:
        if server is not None:
            how = server.stop(args.stop_timeout)
            print(f"server {how}", file=sys.stderr)
            if server.proc.returncode not in (0, None, -signal.SIGTERM):
                print(server.log_tail(), file=sys.stderr)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
