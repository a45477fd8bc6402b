"""Server memory over a fixed amount of bulk indexing: RSS of ``cmah serve`` after each job.

Starts ``python -m service.cli serve`` (fresh data directory, 638-item demo gallery), keeps ``--clients``
search clients running, submits ``--jobs`` indexing jobs of the first ``--shapes`` demo shapes one after
the other (each waits for the previous one) and records the server's RSS and index size when each job has
finished, then once more ``--settle`` seconds after the clients stopped. Unlike ``bench/load.py``, the
work is fixed (items, not seconds), so runs on a busy machine compare: e.g. with and without
``--server-env CMAH_MALLOC_TRIM_INTERVAL_S=0``::

    .venv/bin/python bench/job_memory.py --jobs 5 --shapes 160 --clients 16

Prints one line per job and a summary: the growth from ready to the settled sample, and the peak. (RSS
sampled while a job runs includes that moment's working set, ±100 MiB under load: compare settled
values.) Exit status 0.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import load  # bench/load.py (this folder is first on sys.path): server, queries, requests

from model.dataset import load_dataset, save_dataset


def _rss_mib(pid: int) -> float:
    return load.proc_status(pid).get("VmRSS", 0) / 1024


def _clients(url: str, n: int, queries: dict[str, list[bytes]], stop: threading.Event,
             counts: list[int]) -> list[threading.Thread]:
    def loop(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=600) as c:
            while not stop.is_set():
                try:
                    problem = load.one_request(c, rng.choice(load.ROUTES), queries, rng.randrange(1 << 30), 10)
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                counts[0 if problem is None else 1] += 1

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="cmah-jobmem-"))
    server = None
    try:
        ds = load_dataset(load.DEMO)
        n = min(args.shapes, len(ds))
        job = tmp / "job.npz"
        save_dataset(job, ds.points[:n], ds.labels[:n], ds.names[:n], ds.classes)
        token = secrets.token_urlsafe(24)
        env = dict(kv.split("=", 1) for kv in args.server_env)
        env["CMAH_ADMIN_TOKEN"] = token
        queries = load.make_queries(8)
        server = load.Server(None, tmp / "data", env, tmp / "server.log")
        load.wait_ready(server.url, args.ready_timeout, server)
        ready = {"rss_mib": _rss_mib(server.pid), "items": load.ready_items(server.url)}
        print(f"ready: RSS {ready['rss_mib']:.0f} MiB, {ready['items']} items; env {args.server_env}", flush=True)
        stop, counts = threading.Event(), [0, 0]
        threads = _clients(server.url, args.clients, queries, stop, counts)
        rows = []
        with httpx.Client(base_url=server.url, timeout=600, headers={"Authorization": f"Bearer {token}"}) as c:
            for j in range(args.jobs):
                t0 = time.monotonic()
                r = c.post("/api/v1/admin/jobs", files={"file": ("job.npz", job.read_bytes())})
                r.raise_for_status()
                job_id = r.json()["job_id"]
                while (state := c.get(f"/api/v1/admin/jobs/{job_id}").json()["state"]) not in ("succeeded", "failed"):
                    time.sleep(0.5)
                row = {"job": j, "state": state, "seconds": round(time.monotonic() - t0, 1),
                       "items": load.ready_items(server.url), "rss_mib": _rss_mib(server.pid),
                       "searches": counts[0], "errors": counts[1]}
                rows.append(row)
                print(f"job {j}: {state} in {row['seconds']} s, {row['items']} items, RSS {row['rss_mib']:.0f} MiB, "
                      f"{row['searches']} searches so far", flush=True)
        stop.set()
        for t in threads:
            t.join(600)
        time.sleep(args.settle)
        end = {"rss_mib": _rss_mib(server.pid), "peak_mib": load.proc_status(server.pid).get("VmHWM", 0) / 1024,
               "searches": counts[0], "errors": counts[1]}
        print(f"settled ({args.settle:g} s after the clients stopped): RSS {end['rss_mib']:.0f} MiB "
              f"({end['rss_mib'] - ready['rss_mib']:+.0f} from ready), peak {end['peak_mib']:.0f} MiB; "
              f"{end['searches']} searches, {end['errors']} errors")
        return {"ready": ready, "jobs": rows, "end": end, "server_env": args.server_env}
    finally:
        if server is not None:
            print(f"server {server.stop(60)}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=5)
    p.add_argument("--shapes", type=int, default=160, help="demo shapes per job (each: 2 items)")
    p.add_argument("--clients", type=int, default=16, help="search clients running throughout")
    p.add_argument("--settle", type=float, default=15.0, help="seconds between the last job and the last sample")
    p.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--ready-timeout", type=float, default=900.0)
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.shapes < 1 or args.clients < 0:
        p.error("--jobs and --shapes must be >= 1, --clients >= 0")
    result = run(args)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
