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

Reports requests/s, p50 / p99 latency (overall and per route), errors (must be 0: the exit status is
1 otherwise), the server's RSS (``VmRSS`` of /proc/<pid>/status) before and after the load and its
peak (``VmHWM``), and the mean model batch per kind from ``/metrics``. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import re
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.device import cpu_name  # noqa: E402

DEMO = ROOT / "model" / "assets" / "demo_modelnet40.npz"
ROUTES = ("image-to-points", "points-to-images", "image-to-images", "points-to-points")
MAX_SECONDS = 600.0


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
    from model.inputs import normalize_points, write_ply
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
    lat: dict[str, list[float]] = field(default_factory=lambda: {r: [] for r in ROUTES})
    errors: dict[str, int] = field(default_factory=lambda: {r: 0 for r in ROUTES})
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


def warm_up(url: str, queries: dict[str, list[bytes]], args: argparse.Namespace) -> None:
    """One untimed request per route; raises if any fails."""
    with httpx.Client(base_url=url, timeout=args.request_timeout) as c:
        for i, route in enumerate(ROUTES):
            problem = one_request(c, route, queries, i, args.k)
            if problem:
                raise RuntimeError(f"warm-up {route} failed: {problem}")


def run_load(url: str, queries: dict[str, list[bytes]], args: argparse.Namespace) -> tuple[Results, float]:
    res = Results()
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    threads = [threading.Thread(target=client_loop, args=(url, s, deadline, queries, args, res), daemon=True)
               for s in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline + args.request_timeout + 5 - time.monotonic()))
    elapsed = time.monotonic() - t0
    stuck = sum(t.is_alive() for t in threads)
    if stuck:
        res.messages.append(f"{stuck} client threads still running after the deadline")
    return res, elapsed


# ------------------------------------------------------------------------------------------ output
def _pct(values: list[float], q: float) -> str:
    return f"{np.percentile(np.array(values) * 1000, q):.1f}" if values else "–"


def _mib(kib: int | None) -> str:
    return f"{kib / 1024:.0f}" if kib else "n/a"


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
    for route in ROUTES:
        lat = res.lat[route]
        out.append(f"| `{route}` | {len(lat) + res.errors[route]} | {len(lat) / elapsed:.1f} | {_pct(lat, 50)} | "
                   f"{_pct(lat, 99)} | {res.errors[route]} |")
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
    args = p.parse_args(argv)
    if not 1 <= args.clients <= 512 or not 0 < args.seconds <= MAX_SECONDS or args.queries < 1:
        p.error(f"--clients must be 1..512, --seconds in (0, {MAX_SECONDS:g}], --queries >= 1")
    if args.url and not re.match(r"^https?://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?/?$", args.url):
        p.error("--url must be a loopback address (127.0.0.1, localhost or [::1])")

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
        before, sums0 = proc_status(pid), batch_sums(url)
        res, elapsed = run_load(url, queries, args)
        after, sums1 = proc_status(pid), batch_sums(url)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        meta = dict(machine=f"CPU: {cpu_name()}, {cores} cores (server and clients on the same machine)",
                    server=server_desc, clients=args.clients, seconds=args.seconds, k=args.k, queries=args.queries,
                    load=load_at_start, batches=batch_means(sums0, sums1))
        print(report(meta, res, elapsed, before, after))
        return 1 if sum(res.errors.values()) or res.messages else 0
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
