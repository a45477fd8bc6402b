"""Where a search request's time goes besides the model: one client against a live server, the model-only
encode measured in the same run, and the pieces of the service's own share timed in-process.

    .venv/bin/python bench/overhead.py [--weights DIR] [--shapes 5000] [--n 300] [--warmup 30]
                                       [--route image-to-points] [--gallery-dir DIR] [--json FILE]

**Gallery** (built once and cached in ``--gallery-dir``, default ``/tmp/cmah-overhead-gallery-<weights>-<n>``;
each server gets a fresh copy): the first ``--shapes`` clouds of ``--data`` (default the ModelNet40 train
file in ``../shared/data``, else the demo set, repeated) encoded by the weights as point-cloud items, plus
as many image items that carry the same codes (no renders: 2 × ``--shapes`` items, 10,000 by default).

**Server:** ``cmah serve`` as ``bench/load.py`` starts it (``CMAH_LOG_LEVEL=WARNING``, the other settings
at their defaults) on that copy.

**Per round** (``--warmup`` untimed, then ``--n`` timed, one after the other in this order, so that every
figure sees the same machine state):

* ``total``: one search over HTTP/1.1 (keep-alive ``http.client`` connection, a prebuilt multipart body:
  a 224-px PNG render of a demo shape, as ``bench/load.py`` sends), request sent → JSON parsed;
* ``model``: the model alone at batch 1, in this process, on the tensor the service makes of that upload:
  ``Encoder.encode_image_tensors`` / ``encode_point_tensors``, torch set up as the service does
  (``use_cpu_threads`` with the service's ``CMAH_CPU_PARALLEL``), i.e. the call the inference engine makes;
* the pieces, each in this process with the code of the checkout the script runs in:
  ``multipart`` (starlette parsing the same body from an ASGI ``receive``, plus ``read_upload``),
  ``decode`` (the route's ``_preprocess``: content sniffing, decode, pad/resize to a tensor),
  ``engine`` (``InferenceEngine.encode`` from an event loop with the service's default settings, minus
  the model time: queue wait and thread hand-offs), ``hop`` (one ``run_in_threadpool`` of a no-op, times
  the number of hops the route makes besides the engine's), ``search`` (``HashStore.search``, k = 10, on
  another copy of the gallery), ``records`` (``HashStore.get_many`` of the hits), ``response`` (the
  response model built, validated and dumped to JSON as FastAPI's ``serialize_response(dump_json=True)`` does).

**Report:** p50 of every column (ms), ``service = total − model`` and its ratio to ``model``; ``rest``
= service − the pieces (HTTP parsing in uvicorn/h11, middleware, routing and dependencies, the client).
Prints a markdown table naming the machine; ``--json`` writes the figures.

Run it from the checkout to measure (``cd`` there, or a git worktree with this file copied in): the server
and the in-process pieces use that checkout's code.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages before the editable install's (a git worktree)
sys.path.insert(1, str(ROOT / "bench"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `cmah` sets before torch loads

import load  # noqa: E402  (bench/load.py: the server and the query files)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.device import cpu_name, set_cpu_threads  # noqa: E402
from model.encode import Encoder  # noqa: E402
from model.weights import SHIPPED_WEIGHTS_DIR  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "modelnet40_train.npz"
SOURCE = "overhead-bench"
BOUNDARY = "cmahbenchboundary7MA4YWxkTrZu0gW"


# ------------------------------------------------------------------------------------------ gallery
def build_gallery(path: Path, enc: Encoder, data: Path, shapes: int) -> None:
    """``shapes`` point-cloud items with their real codes and as many image items with the same codes."""
    from index.store import CODES_MODEL_KEY, HashStore
    from model.dataset import load_dataset

    if (path / "complete").exists():
        return
    ds = load_dataset(data if data.is_file() else load.DEMO)
    idx = np.arange(shapes) % len(ds)
    tmp = Path(tempfile.mkdtemp(prefix="gallery-", dir=path.parent))
    store = HashStore(tmp, check_integrity=False)
    try:
        store.set_value(CODES_MODEL_KEY, str(enc.weights_id))
        for s in range(0, shapes, 256):
            rows = idx[s:s + 256]
            codes = enc.encode_point_tensors(enc.points_tensor(ds.points[rows]))
            items = []
            for j, i in enumerate(rows):
                label = str(ds.classes[ds.labels[i]])
                for modality in ("points", "image"):
                    items.append({"modality": modality, "name": f"{ds.names[i]}-{s + j}", "label": label,
                                  "source": SOURCE, "codes": {b: c[j] for b, c in codes.items()}})
            store.add(items)
    finally:
        store.close()
    (tmp / "complete").write_text(f"{shapes} shapes of {data}\n")
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def copy_gallery(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("LOCK"))
    return dst


# ------------------------------------------------------------------------------------------ pieces
def multipart_body(data: bytes, filename: str) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


async def parse_multipart(body: bytes, max_bytes: int) -> bytes:
    """What the service does with the body before the route: starlette's form parser, then ``read_upload``."""
    from starlette.requests import Request

    from service.uploads import read_upload

    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [
        (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
        (b"content-length", str(len(body)).encode())]}
    form = await Request(scope, receive).form(max_files=8, max_fields=8)
    try:
        return await read_upload(form["file"], max_bytes)  # type: ignore[arg-type]
    finally:
        await form.close()


class Pieces:
    """The in-process pieces of one search, timed one by one (ms)."""

    def __init__(self, enc: Encoder, store_dir: Path, kind: str, target: str):
        from pydantic import TypeAdapter

        from index.store import HashStore
        from service.engine import InferenceEngine
        from service.settings import Settings

        self.enc, self.kind, self.target = enc, kind, target
        self.settings = Settings()
        self.run = SimpleNamespace(settings=self.settings, encoder=enc)
        self.store = HashStore(store_dir, check_integrity=False)
        s = self.settings
        self.engine = InferenceEngine(enc, s.max_batch, s.max_wait_ms, s.max_pending)
        self.engine.start(warm_up=False)
        self.loop = asyncio.new_event_loop()
        from service.schemas import SearchResponse

        self.response_adapter = TypeAdapter(SearchResponse)

    def close(self) -> None:
        self.engine.stop()
        self.store.close()
        self.loop.close()

    def _ms(self, fn, *args):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        out = fn(*args)
        return out, (time.perf_counter() - t0) * 1000

    def preprocess(self, data: bytes, filename: str) -> torch.Tensor:
        from service.routes.search import _preprocess

        return _preprocess(self.run, self.kind, data, filename)  # type: ignore[arg-type]

    def model(self, tensor: torch.Tensor) -> tuple[dict, float]:
        fn = self.enc.encode_image_tensors if self.kind == "image" else self.enc.encode_point_tensors
        return self._ms(fn, tensor[None])

    def engine_encode(self, tensor: torch.Tensor) -> dict:
        """The route's way to the codes of one request on an idle engine."""
        if hasattr(self.engine, "encode_if_idle"):  # encoded in the route's worker thread when idle
            with self.engine.arriving(self.kind):
                codes = self.engine.encode_if_idle(self.kind, tensor)
            if codes is not None:
                return codes
        return self.loop.run_until_complete(self.engine.encode(self.kind, tensor))

    def measure(self, body: bytes, data: bytes, filename: str, tensor: torch.Tensor, model_ms: float) -> dict:
        from starlette.concurrency import run_in_threadpool

        from service.schemas import SearchHit, SearchResponse

        out: dict[str, float] = {}
        got, out["multipart"] = self._ms(self.loop.run_until_complete, parse_multipart(body, 1 << 25))
        assert got == data
        _, out["decode"] = self._ms(self.preprocess, data, filename)
        codes, engine_ms = self._ms(self.engine_encode, tensor)
        out["engine"] = max(engine_ms - model_ms, 0.0)

        async def hop() -> None:
            await run_in_threadpool(lambda: None)

        _, out["hop"] = self._ms(self.loop.run_until_complete, hop())
        (dist, ids), out["search"] = self._ms(self.store.search, self.target, codes[64][None], 64, 10)
        recs, out["records"] = self._ms(self.store.get_many, [int(i) for i in ids[0]])

        def respond() -> bytes:
            hits = [SearchHit(rank=r + 1, id=int(i), distance=int(d), name=rec.name, label=rec.label,
                              **({"source": rec.source, "modality": rec.modality}
                                 if "source" in SearchHit.model_fields else {}), preview_url=None)
                    for r, (i, d, rec) in enumerate(zip(ids[0], dist[0], recs, strict=True))]
            resp = SearchResponse(bits=64, k=10, took_ms=1.0, results=hits)
            # what FastAPI's serialize_response(dump_json=True) does with a response model
            value = self.response_adapter.validate_python(resp, from_attributes=True)
            return self.response_adapter.dump_json(value)

        _, out["response"] = self._ms(respond)
        return out


def route_hops() -> int:
    """``run_in_threadpool`` calls of the route's ``search`` on an idle engine (the engine's own hand-off aside):
    one when it encodes in the route's worker thread (``encode_if_idle``), else every call in its source."""
    import inspect

    from service.routes import search

    source = inspect.getsource(search)
    return 1 if "encode_if_idle" in source else inspect.getsource(search.search).count("run_in_threadpool(")


# ------------------------------------------------------------------------------------------ HTTP
class OneClient:
    """One keep-alive HTTP/1.1 connection sending the same prebuilt multipart search."""

    def __init__(self, url: str, path: str, body: bytes):
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.path, self.body = path, body
        self.headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}

    def search(self) -> tuple[dict, float]:
        t0 = time.perf_counter()
        self.conn.request("POST", self.path, body=self.body, headers=self.headers)
        r = self.conn.getresponse()
        payload = r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {payload[:300]!r}")
        out = json.loads(payload)
        return out, (time.perf_counter() - t0) * 1000


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="weights directory (default: the shipped weights)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset .npz for the gallery's codes")
    p.add_argument("--shapes", type=int, default=5000, help="shapes in the gallery (2 items each; default 5000)")
    p.add_argument("--gallery-dir", type=Path, help="cached gallery (default /tmp/cmah-overhead-gallery-...)")
    p.add_argument("--route", default="image-to-points",
                   choices=["image-to-points", "image-to-images", "points-to-images", "points-to-points"])
    p.add_argument("--n", type=int, default=300, help="timed rounds (default 300)")
    p.add_argument("--warmup", type=int, default=30, help="untimed rounds first (default 30)")
    p.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE", help="extra server environment")
    p.add_argument("--label", default="", help="a name for this run in the report (e.g. before / after)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)

    from service.settings import Settings

    weights = Path(args.weights).resolve() if args.weights else SHIPPED_WEIGHTS_DIR
    settings = Settings()
    threads = set_cpu_threads(settings.torch_threads)
    enc = Encoder.from_weights(weights, device="cpu")
    enc.use_cpu_threads(threads, settings.cpu_parallel)
    gallery = args.gallery_dir or (Path(tempfile.gettempdir())
                                   / f"cmah-overhead-gallery-{str(enc.weights_id)[:12]}-{args.shapes}")
    t0 = time.monotonic()
    build_gallery(gallery, enc, args.data, args.shapes)
    print(f"gallery {gallery} ({time.monotonic() - t0:.1f} s)", file=sys.stderr)

    kind = "image" if args.route.startswith("image") else "points"
    target = "points" if args.route.endswith("points") else "image"
    queries = load.make_queries(8)[kind]
    filename = "q.png" if kind == "image" else "q.ply"
    bodies = [multipart_body(q, filename) for q in queries]

    tmp = Path(tempfile.mkdtemp(prefix="cmah-overhead-"))
    server = None
    pieces = None
    try:
        data_dir = copy_gallery(gallery, tmp / "data")
        env = dict(kv.split("=", 1) for kv in args.server_env)
        server = load.Server(str(weights), data_dir, env, tmp / "server.log")
        ready_s = load.wait_ready(server.url, 600, server)
        pieces = Pieces(enc, copy_gallery(gallery, tmp / "pieces"), kind, target)
        tensors = [pieces.preprocess(q, filename) for q in queries]
        clients = [OneClient(server.url, f"/api/v1/search/{args.route}?k=10", b) for b in bodies]
        rows: list[dict[str, float]] = []
        load_at_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        for r in range(args.warmup + args.n):
            i = r % len(queries)
            body, took = clients[i].search()
            if len(body["results"]) != 10:
                raise RuntimeError(f"{len(body['results'])} results, expected 10")
            _, model_ms = pieces.model(tensors[i])
            row = {"total": took, "took_ms": float(body["took_ms"]), "model": model_ms}
            row.update(pieces.measure(bodies[i], queries[i], filename, tensors[i], model_ms))
            if r >= args.warmup:
                rows.append(row)
    finally:
        if pieces is not None:
            pieces.close()
        if server is not None:
            server.stop(30)
        shutil.rmtree(tmp, ignore_errors=True)

    hops = route_hops()
    med = {k: float(np.median([row[k] for row in rows])) for k in rows[0]}
    med["service"] = float(np.median([row["total"] - row["model"] for row in rows]))
    p90 = {k: float(np.percentile([row[k] for row in rows], 90)) for k in ("total", "model")}
    named = ["multipart", "decode", "engine", "search", "records", "response"]
    med["hops"] = med["hop"] * hops
    med["rest"] = med["service"] - sum(med[k] for k in named) - med["hops"]
    cores = len(os.sched_getaffinity(0))
    print(f"**Machine:** CPU {cpu_name()}, {cores} cores; torch {torch.__version__}; load average at start "
          f"{load_at_start}; server ready after {ready_s:.1f} s, gallery {2 * args.shapes} items; "
          f"`{args.route}`, k = 10, {args.n} rounds after {args.warmup}\n")
    print("| run | total p50 (p90) | model p50 (p90) | service = total − model | ÷ model | multipart | decode | "
          "engine wait | thread hops | search | records | response | rest (HTTP, routing, client) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.label or '–'} | {med['total']:.2f} ({p90['total']:.2f}) | "
          f"{med['model']:.2f} ({p90['model']:.2f}) | "
          f"{med['service']:.2f} | ×{med['service'] / med['model']:.2f} | {med['multipart']:.2f} | "
          f"{med['decode']:.2f} | {med['engine']:.2f} | {med['hops']:.2f} ({hops} × {med['hop']:.3f}) | "
          f"{med['search']:.3f} | {med['records']:.3f} | {med['response']:.3f} | {med['rest']:.2f} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"label": args.label, "cpu": cpu_name(), "cores": cores, "route": args.route,
                                         "n": args.n, "p50_ms": med, "p90_ms": p90, "load": load_at_start},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
