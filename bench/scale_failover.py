"""Kill and restart search replicas behind nginx while clients search: how many requests fail?

Starts, on this machine: a Milvus standalone server (the PyPI package ``milvus``), an S3 server (moto), one
``cmah serve --role indexer`` (which indexes its demo gallery), two ``--role search`` replicas and nginx with
``docker/nginx-scale.conf``'s routing rules (pointed at local ports). Then ``--clients`` threads search
through nginx for ``--seconds`` while replica 1 is stopped with SIGTERM and started again, then replica 2 is
killed with SIGKILL and started again. Prints every request's outcome counted by status and the latency
percentiles.

Needs nginx on PATH (``apt-get install nginx-light``). Usage::

    python bench/scale_failover.py --weights weights --seconds 90
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 30) -> int:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


class Server:
    def __init__(self, name: str, root: Path, env: dict[str, str]) -> None:
        self.name, self.root, self.env = name, root, env
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.root / f"{self.name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(self.port),
                                      "--data-dir", str(self.root / f"{self.name}-data")],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait_ready(self, timeout: float = 900) -> float:
        t0 = time.monotonic()
        while status(f"{self.url}/ready", timeout=5) != 200:
            if self.proc.poll() is not None or time.monotonic() - t0 > timeout:  # type: ignore[union-attr]
                raise SystemExit(f"{self.name} did not become ready; see {self.root / (self.name + '.log')}")
            time.sleep(0.2)
        return time.monotonic() - t0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)


def nginx_conf(root: Path, port: int, indexer: Server, replicas: list[Server]) -> Path:
    """docker/nginx-scale.conf with the containers' addresses replaced by the local ports."""
    text = (ROOT / "docker" / "nginx-scale.conf").read_text()
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    text = text.replace("http://indexer:8000", indexer.url)
    for i, r in enumerate(replicas, 1):
        text = text.replace(f"server search-{i}:8000", f"server 127.0.0.1:{r.port}")
    text = re.sub(r"\n\s*server search-\d+:8000[^\n]*", "", text)  # the compose file's third replica
    conf = root / "nginx.conf"
    conf.write_text(f"pid {root}/nginx.pid;\nerror_log {root}/nginx-error.log;\nevents {{}}\nhttp {{\n"
                    f"access_log off;\nclient_body_temp_path {root}/nginx-body;\nproxy_temp_path {root}/nginx-proxy;\n"
                    f"{text}\n}}\n")
    return conf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    ap.add_argument("--seconds", type=float, default=90)
    ap.add_argument("--clients", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("nginx") is None:
        raise SystemExit("nginx is not installed (apt-get install nginx-light)")
    from milvus import MilvusServer
    from moto.server import ThreadedMotoServer

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        milvus = MilvusServer()
        milvus.set_base_dir(str(root / "milvus"))
        milvus.start()
        s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        s3.start()
        host, s3port = s3.get_host_and_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CMAH_")}
        env.update(CMAH_WEIGHTS_DIR=str(args.weights), CMAH_DEVICE="cpu", CMAH_TORCH_THREADS="1", CMAH_BACKEND="milvus",
                   CMAH_MILVUS_URI=f"http://127.0.0.1:{milvus.listen_port}", CMAH_S3_BUCKET="cmah-failover",
                   CMAH_S3_ENDPOINT=f"http://{host}:{s3port}", CMAH_S3_ACCESS_KEY="a", CMAH_S3_SECRET_KEY="b",
                   CMAH_LOG_LEVEL="WARNING", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        indexer = Server("indexer", root, {**env, "CMAH_ROLE": "indexer"})
        replicas = [Server(f"search-{i}", root, {**env, "CMAH_ROLE": "search"}) for i in (1, 2)]
        nginx: subprocess.Popen | None = None
        try:
            indexer.start()
            print(f"indexer ready in {indexer.wait_ready():.0f} s (demo gallery indexed)", flush=True)
            for r in replicas:
                r.start()
            for r in replicas:
                print(f"{r.name} ready in {r.wait_ready():.0f} s", flush=True)
            lb_port = free_port()
            (root / "nginx-body").mkdir()
            (root / "nginx-proxy").mkdir()
            nginx = subprocess.Popen(["nginx", "-g", "daemon off;", "-c", str(nginx_conf(root, lb_port, indexer,
                                                                                         replicas))])
            lb = f"http://127.0.0.1:{lb_port}"
            while status(f"{lb}/lb-health") != 200:
                if nginx.poll() is not None:
                    raise SystemExit(f"nginx did not start (exit {nginx.returncode})")
                time.sleep(0.1)
            buf = io.BytesIO()
            Image.fromarray(np.full((64, 64, 3), 180, np.uint8)).save(buf, format="PNG")
            boundary = "failoverboundary"
            body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.png\"\r\n"
                    "Content-Type: image/png\r\n\r\n").encode() + buf.getvalue() + f"\r\n--{boundary}--\r\n".encode()
            headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
            outcomes: Counter[int] = Counter()
            latencies: list[float] = []
            stop = threading.Event()
            lock = threading.Lock()

            def client() -> None:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    code = status(f"{lb}/api/v1/search/image-to-points?k=5", body, headers)
                    with lock:
                        outcomes[code] += 1
                        latencies.append(time.perf_counter() - t0)

            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            t_start = time.monotonic()
            for t in threads:
                t.start()
            events = []
            time.sleep(args.seconds * 0.1)
            replicas[0].stop(signal.SIGTERM)
            events.append(f"{time.monotonic() - t_start:.0f} s: {replicas[0].name} stopped (SIGTERM)")
            replicas[0].start()
            replicas[0].wait_ready()
            events.append(f"{time.monotonic() - t_start:.0f} s: {replicas[0].name} started again and ready")
            time.sleep(5)
            replicas[1].stop(signal.SIGKILL)
            events.append(f"{time.monotonic() - t_start:.0f} s: {replicas[1].name} killed (SIGKILL)")
            replicas[1].start()
            replicas[1].wait_ready()
            events.append(f"{time.monotonic() - t_start:.0f} s: {replicas[1].name} started again and ready")
            time.sleep(max(0.0, args.seconds - (time.monotonic() - t_start)))
            stop.set()
            for t in threads:
                t.join()
            wall = time.monotonic() - t_start
            print("\n".join(events))
            lat = np.array(latencies) * 1000
            print(f"{sum(outcomes.values())} searches in {wall:.0f} s through nginx by {args.clients} clients: "
                  f"{dict(outcomes)}; latency ms p50 {np.percentile(lat, 50):.0f}, p99 {np.percentile(lat, 99):.0f}, "
                  f"max {lat.max():.0f}")
        finally:
            if nginx is not None:
                nginx.terminate()
                nginx.wait(10)
            for server in (*replicas, indexer):
                server.stop()
            s3.stop()
            milvus.stop()


if __name__ == "__main__":
    main()
