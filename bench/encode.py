"""Encoder speed: single-input latency, peak batched throughput, the service's dynamic batching, and
batch-1 latency end to end (upload bytes in, codes out), beside other weights measured in the same run.

    .venv/bin/python bench/encode.py [--weights DIR] [--baseline-weights DIR ...] [--devices cpu cuda]
                                     [--n 50] [--warmup 5] [--batches 1 4 8 16 32 64] [--seconds 1.0]
                                     [--threads N] [--callers 32] [--requests 20] [--max-batch 32]
                                     [--max-wait-ms 5] [--skip-model] [--skip-engine] [--skip-e2e]
                                     [--cpu-parallel chunks intra-op] [--json FILE]

(a) **Model** (``model.encode.Encoder``, preprocessed tensors in, packed codes out, per modality):

* ``bs1`` latency: ``--warmup`` calls, then the mean (and p50 / p90) of ``--n`` timed calls of one input;
* peak batched throughput: for every ``--batches`` size, one warm-up call, then calls until
  ``--seconds`` have passed (at least 2); the best inputs/s over the batch sizes and the size it
  was reached at.

Devices: CPU, and CUDA when it is available (``--devices`` to choose). On CPU both ways of using the
threads are measured (``--cpu-parallel``, the service's ``CMAH_CPU_PARALLEL``): ``chunks`` (the
service's default: a batch split over the threads, one torch thread each) and ``intra-op``.

(b) **Dynamic batching** (``service.engine.InferenceEngine``, in process, on the first device): ``--callers``
threads each submit ``--requests`` inputs one after the other (submit, wait for the codes, next),
once with ``max_batch = --max-batch`` (the service default, 32) and once with ``max_batch = 1``
(one input per model call); inputs/s of the whole run, the mean model batch and the per-request
latency, and the speed-up. Rows: image callers only, point callers only, and half of each.

(c) **End to end, batch 1**, per device and CPU mode: the bytes of an upload through what a search request
runs before and in the model (``service.routes.search._preprocess``: content sniffing, ``read_image`` /
``load_points`` with the service's default limits, ``Encoder.image_tensor`` / ``points_tensor``), then
the model on that one input to packed codes (farthest point sampling and grouping happen inside the
point encoder). Not included: HTTP, the engine's queue and the index search. Files: PNG and JPEG (quality
90) of canonical renders at 512 px and binary PLY files (1,024 points) of 8 demo shapes, used in turn;
``--warmup`` calls, then mean / p50 / p90 of ``--n``, and the mean of the part before the model. The same
rows are measured for every ``--baseline-weights`` directory, one after the other per row, and each gets
its ratio to ``--weights``.

Inputs are the demo shapes (``model/assets/demo_modelnet40.npz``, normalised 1,024-point clouds) and
their canonical renders, i.e. what the service encodes. Prints markdown tables naming the machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

# As `cmah` (service/cli.py) does before torch loads its OpenMP runtime: threads that yield instead of
# spinning while they wait. Without it, on a 2-core machine, batch-1 image calls in this process took
# 90-330 ms instead of ~11 ms in our runs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from model.device import cpu_name
from model.encode import Encoder
from model.weights import SHIPPED_WEIGHTS_DIR, read_manifest
from service.engine import InferenceEngine
from service.routes.search import _preprocess as service_preprocess
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

DEMO = ROOT / "model" / "assets" / "demo_modelnet40.npz"
KINDS = ("image", "points")
E2E_SHAPES = 8
E2E_PICTURE_PX = 512
JPEG_QUALITY = 90
#: end-to-end inputs: label -> (modality, upload file name)
E2E_INPUTS = {f"PNG {E2E_PICTURE_PX} px": ("image", "shape.png"),
              f"JPEG {E2E_PICTURE_PX} px (q {JPEG_QUALITY})": ("image", "shape.jpg"),
              "binary PLY": ("points", "shape.ply")}


# ------------------------------------------------------------------------------------------ machine
def machine_line(threads: int) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    line = (f"CPU: {cpu_name()}, {cores} cores available, torch intra-op threads {threads}; "
            f"Python {platform.python_version()}, torch {torch.__version__}")
    if torch.cuda.is_available():
        line += f"; CUDA: {torch.cuda.get_device_name(0)}"
    return line


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def describe_weights(weights_dir: str, enc: Encoder) -> dict:
    manifest = read_manifest(weights_dir)
    return dict(weights=weights_dir, config=manifest.get("config", {}).get("name", "?"),
                parameters=int(manifest.get("parameters", 0)), image_size=enc.image_size, num_points=enc.num_points)


# ------------------------------------------------------------------------------------------ inputs
def demo_clouds(n: int) -> np.ndarray:
    """The demo shapes' clouds float32 [M, P, 3] (at least ``n`` synthetic ones where the set is missing)."""
    if DEMO.is_file():
        from model.dataset import load_dataset

        return load_dataset(DEMO).points.astype(np.float32)
    from model.synthetic import make_synthetic  # pragma: no cover - the demo set ships with the repository

    return make_synthetic(n_per_class=-(-n // 8), n_points=1024, seed=0).points.astype(np.float32)


def make_inputs(enc: Encoder, n: int) -> dict[str, torch.Tensor]:
    """``n`` preprocessed inputs per kind on the CPU: clouds [n, P, 3] and their renders [n, 3, S, S]."""
    pts = demo_clouds(n)
    pts = np.resize(pts, (n, *pts.shape[1:]))  # repeats the set cyclically if n > len
    from model.io import normalize_points

    clouds = enc.points_tensor(np.stack([normalize_points(p, n_points=p.shape[0]) for p in pts]))
    images = torch.cat([enc.render_points(clouds[i:i + 64]).cpu() for i in range(0, n, 64)])
    return {"points": clouds.contiguous(), "image": images.contiguous()}


def encode_fn(enc: Encoder, kind: str):
    return enc.encode_image_tensors if kind == "image" else enc.encode_point_tensors


def make_files() -> dict[str, list[bytes]]:
    """Upload bytes per ``E2E_INPUTS`` label, one file per demo shape (``E2E_SHAPES`` spread over the set)."""
    from PIL import Image

    from model.io import write_ply
    from model.renderer import RenderConfig, render_canonical, to_uint8

    pts = demo_clouds(E2E_SHAPES)
    clouds = pts[np.linspace(0, len(pts) - 1, E2E_SHAPES).round().astype(int)]
    pixels = to_uint8(render_canonical(torch.from_numpy(clouds), RenderConfig(image_size=E2E_PICTURE_PX))).numpy()
    savers = (lambda i, f: Image.fromarray(pixels[i]).save(f, format="PNG"),
              lambda i, f: Image.fromarray(pixels[i]).save(f, format="JPEG", quality=JPEG_QUALITY),
              lambda i, f: write_ply(f, clouds[i], binary=True))
    files: dict[str, list[bytes]] = {}
    for label, save in zip(E2E_INPUTS, savers, strict=True):
        files[label] = []
        for i in range(E2E_SHAPES):
            buf = io.BytesIO()
            save(i, buf)
            files[label].append(buf.getvalue())
    return files


# ------------------------------------------------------------------------------------------ (a) model
def bench_model(enc: Encoder, inputs: dict[str, torch.Tensor], args: argparse.Namespace) -> list[dict]:
    rows = []
    for kind in KINDS:
        fn, x = encode_fn(enc, kind), inputs[kind]
        for i in range(args.warmup):
            fn(x[i % len(x)][None])
        times = []
        for i in range(args.n):
            xi = x[i % len(x)][None]
            t0 = time.perf_counter()
            fn(xi)  # codes come back as numpy: the call has finished on any device
            times.append(time.perf_counter() - t0)
        ms = np.array(times) * 1000
        per_batch = {}
        for b in args.batches:
            xb = x[:b] if b <= len(x) else x.repeat((-(-b // len(x)),) + (1,) * (x.ndim - 1))[:b]
            fn(xb)
            calls, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < args.seconds or calls < 2:
                fn(xb)
                calls += 1
            per_batch[b] = calls * b / elapsed
        best = max(per_batch, key=per_batch.__getitem__)
        rows.append(dict(device=str(enc.device), kind=kind, bs1_mean_ms=float(ms.mean()),
                         bs1_p50_ms=float(np.percentile(ms, 50)), bs1_p90_ms=float(np.percentile(ms, 90)),
                         bs1_per_s=1000.0 / float(ms.mean()), peak_per_s=per_batch[best], peak_batch=best,
                         per_batch={str(k): v for k, v in per_batch.items()}))
        print(f"  {enc.device} {kind}: bs1 {ms.mean():.2f} ms, peak {per_batch[best]:.1f}/s at batch {best}",
              file=sys.stderr)
    return rows


# ------------------------------------------------------------------------------------------ (b) engine
def run_engine(enc: Encoder, inputs: dict[str, torch.Tensor], kinds: list[str], max_batch: int,
               args: argparse.Namespace) -> dict:
    """``args.callers`` threads x ``args.requests`` sequential requests through one engine."""
    sizes: list[int] = []
    engine = InferenceEngine(enc, max_batch=max_batch, max_wait_ms=args.max_wait_ms,
                             max_pending=max(256, 2 * args.callers), on_batch=lambda _k, n: sizes.append(n))
    engine.start(warm_up=True)
    lat: list[list[float]] = [[] for _ in range(args.callers)]
    errors: list[str] = []
    start = threading.Barrier(args.callers + 1)
    deadline_s = args.engine_timeout

    def caller(c: int) -> None:
        kind = kinds[c % len(kinds)]
        x = inputs[kind]
        start.wait()
        for r in range(args.requests):
            t0 = time.perf_counter()
            try:
                engine.submit(kind, x[(c * args.requests + r) % len(x)]).result(timeout=deadline_s)
            except Exception as exc:  # counted and reported
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            lat[c].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=caller, args=(c,), daemon=True) for c in range(args.callers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(deadline_s)
    elapsed = time.perf_counter() - t0
    engine.stop()
    ms = np.array([v for per in lat for v in per]) * 1000
    done = len(ms)
    return dict(max_batch=max_batch, inputs=done, errors=len(errors), first_error=errors[0] if errors else None,
                seconds=elapsed, per_s=done / elapsed, mean_batch=(sum(sizes) / len(sizes)) if sizes else 0.0,
                largest_batch=max(sizes, default=0), p50_ms=float(np.percentile(ms, 50)) if done else float("nan"),
                p99_ms=float(np.percentile(ms, 99)) if done else float("nan"))


def bench_engine(enc: Encoder, inputs: dict[str, torch.Tensor], args: argparse.Namespace) -> list[dict]:
    rows = []
    for label, kinds in (("image", ["image"]), ("points", ["points"]), ("mixed (½ image, ½ points)", list(KINDS))):
        batched = run_engine(enc, inputs, kinds, args.max_batch, args)
        single = run_engine(enc, inputs, kinds, 1, args)
        ratio = batched["per_s"] / single["per_s"] if single["per_s"] else float("nan")
        rows.append(dict(workload=label, batched=batched, single=single, speedup=ratio))
        print(f"  engine {label}: {batched['per_s']:.1f}/s (mean batch {batched['mean_batch']:.1f}) vs "
              f"{single['per_s']:.1f}/s one at a time -> x{ratio:.2f}", file=sys.stderr)
    return rows


# ------------------------------------------------------------------------------------------ (c) end to end
def time_e2e(enc: Encoder, label: str, files: list[bytes], args: argparse.Namespace) -> dict:
    """``args.warmup`` then ``args.n`` timed uploads of ``files`` (in turn) through preprocessing and the model."""
    kind, name = E2E_INPUTS[label]
    run, fn = SimpleNamespace(settings=Settings(), encoder=enc), encode_fn(enc, kind)
    total, prep = [], []
    for i in range(args.warmup + args.n):
        t0 = time.perf_counter()
        x = service_preprocess(run, kind, files[i % len(files)], name)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        fn(x[None])
        if i >= args.warmup:
            total.append(time.perf_counter() - t0)
            prep.append(t1 - t0)
    ms = np.array(total) * 1000
    return dict(mean_ms=float(ms.mean()), p50_ms=float(np.percentile(ms, 50)), p90_ms=float(np.percentile(ms, 90)),
                prep_mean_ms=float(np.mean(prep) * 1000))


def bench_e2e(encs: dict[str, Encoder], files: dict[str, list[bytes]], device: str,
              args: argparse.Namespace) -> list[dict]:
    """One row per input; in each, every weights directory of ``encs`` (the first is the reference)."""
    rows = []
    for label in E2E_INPUTS:
        per = [dict(weights=w, **time_e2e(enc, label, files[label], args)) for w, enc in encs.items()]
        for r in per:
            r["ratio"] = r["mean_ms"] / per[0]["mean_ms"]
        rows.append(dict(device=device, input=label, kind=E2E_INPUTS[label][0], weights=per))
        print(f"  e2e {device} {label}: " + ", ".join(f"{r['weights']} {r['mean_ms']:.2f} ms" for r in per),
              file=sys.stderr)
    return rows


# ------------------------------------------------------------------------------------------ output
def weights_phrase(w: dict) -> str:
    return (f"`{w['weights']}` (config `{w['config']}`, {w['parameters']:,} parameters, image {w['image_size']} px, "
            f"{w['num_points']} points)")


def markdown_e2e(meta: dict, rows: list[dict], args: argparse.Namespace) -> list[str]:
    names = [meta["weights"]] + [w["weights"] for w in meta["baselines"]]
    out = [f"### End to end, batch 1: upload bytes to codes (ms per input; mean (p50 / p90) of {args.n} after "
           f"{args.warmup} warm-up; \"prep\" = sniff + decode + validate + resize or read + normalise)", "",
           "| device | input | " + " | ".join(f"`{w}` | prep" for w in names)
           + "".join(f" | `{w}` ÷ `{names[0]}`" for w in names[1:]) + " |",
           "|---|---|" + "---:|---:|" * len(names) + "---:|" * (len(names) - 1)]
    for r in rows:
        cells = [f"{w['mean_ms']:.2f} ({w['p50_ms']:.2f} / {w['p90_ms']:.2f}) | {w['prep_mean_ms']:.2f}"
                 for w in r["weights"]]
        out.append(f"| {r['device']} | {r['input']} | " + " | ".join(cells)
                   + "".join(f" | ×{w['ratio']:.2f}" for w in r["weights"][1:]) + " |")
    return out


def markdown(meta: dict, model_rows: list[dict], engine_rows: list[dict], e2e_rows: list[dict],
             args: argparse.Namespace) -> str:
    out = [f"**Machine:** {meta['machine']}", "",
           f"**Weights:** {weights_phrase(meta)}; load average at start {meta['load']}", ""]
    out += [f"**Baseline weights:** {weights_phrase(w)}" for w in meta["baselines"]]
    out += [""] if meta["baselines"] else []
    if model_rows:
        out += [f"### Model: batch-1 latency (mean of {args.n} after {args.warmup} warm-up) and peak batched "
                "throughput", "",
                "| device | modality | bs1 mean ms | bs1 p50 / p90 ms | bs1 inputs/s | peak inputs/s | at batch |",
                "|---|---|---:|---:|---:|---:|---:|"]
        for r in model_rows:
            out.append(f"| {r['device']} | {r['kind']} | {r['bs1_mean_ms']:.2f} | {r['bs1_p50_ms']:.2f} / "
                       f"{r['bs1_p90_ms']:.2f} | {r['bs1_per_s']:.1f} | {r['peak_per_s']:.1f} | {r['peak_batch']} |")
        out += ["", "Throughput (inputs/s) per batch size:", "",
                "| device | modality | " + " | ".join(f"b={b}" for b in args.batches) + " |",
                "|---|---|" + "---:|" * len(args.batches)]
        for r in model_rows:
            out.append(f"| {r['device']} | {r['kind']} | "
                       + " | ".join(f"{r['per_batch'][str(b)]:.1f}" for b in args.batches) + " |")
    if engine_rows:
        out += ["", f"### Dynamic batching: `InferenceEngine` on {meta['engine_device']}, {args.callers} concurrent "
                f"callers × {args.requests} requests each (max_wait_ms {args.max_wait_ms:g})", "",
                f"| callers | max_batch={args.max_batch} inputs/s | mean / largest batch | p50 / p99 ms | "
                "max_batch=1 inputs/s | p50 / p99 ms | speed-up | errors |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in engine_rows:
            b, s = r["batched"], r["single"]
            out.append(f"| {r['workload']} | {b['per_s']:.1f} | {b['mean_batch']:.1f} / {b['largest_batch']} | "
                       f"{b['p50_ms']:.1f} / {b['p99_ms']:.1f} | {s['per_s']:.1f} | {s['p50_ms']:.1f} / "
                       f"{s['p99_ms']:.1f} | **×{r['speedup']:.2f}** | {b['errors'] + s['errors']} |")
    if e2e_rows:
        out += ([""] if out[-1] else []) + markdown_e2e(meta, e2e_rows, args)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(SHIPPED_WEIGHTS_DIR), help="weights directory (default: weights/)")
    p.add_argument("--baseline-weights", nargs="+", action="extend", default=[], metavar="DIR",
                   help="more weights directories: the end-to-end rows for each, with the ratio to --weights")
    p.add_argument("--devices", nargs="+", help="default: cpu, plus cuda when available")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: as the service, all cores)")
    p.add_argument("--n", type=int, default=50, help="timed batch-1 calls per modality (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed batch-1 calls first (default 5)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    p.add_argument("--seconds", type=float, default=1.0, help="time per batch size (default 1.0)")
    p.add_argument("--callers", type=int, default=32, help="concurrent engine callers (default 32)")
    p.add_argument("--requests", type=int, default=20, help="requests per caller (default 20)")
    p.add_argument("--max-batch", type=int, default=32, help="engine max_batch of the batched run (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="engine max_wait_ms (default 5, as the service)")
    p.add_argument("--engine-timeout", type=float, default=600.0, help="bound on one engine run in seconds")
    p.add_argument("--skip-model", action="store_true", help="no model part (preprocessed tensors)")
    p.add_argument("--skip-engine", action="store_true", help="no dynamic-batching part")
    p.add_argument("--skip-e2e", action="store_true", help="no end-to-end part")
    p.add_argument("--cpu-parallel", nargs="+", choices=["chunks", "intra-op"], default=["chunks", "intra-op"],
                   help="CPU modes to measure (as CMAH_CPU_PARALLEL; default: both, the service's first)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if min(args.n, args.callers, args.requests, *args.batches) < 1 or args.warmup < 0:
        p.error("--n, --callers, --requests and --batches must be >= 1")

    from model.device import set_cpu_threads

    threads = set_cpu_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    meta: dict = dict(machine=machine_line(threads), load=load_avg())
    model_rows: list[dict] = []
    engine_rows: list[dict] = []
    e2e_rows: list[dict] = []
    n_inputs = max(64, max(args.batches), args.callers)
    files = make_files() if not args.skip_e2e else {}
    for i, dev in enumerate(devices):
        enc = Encoder.from_weights(args.weights, device=dev)
        bases = {w: Encoder.from_weights(w, device=dev) for w in args.baseline_weights if w != args.weights}
        meta.update(describe_weights(args.weights, enc), baselines=[describe_weights(w, b) for w, b in bases.items()])
        inputs = make_inputs(enc, n_inputs) if not (args.skip_model and args.skip_engine) else {}
        for mode in (args.cpu_parallel if enc.device.type == "cpu" else ["-"]):
            if mode != "-":
                for e in (enc, *bases.values()):
                    e.use_cpu_threads(threads, mode)
            label = str(enc.device) if mode == "-" else f"{enc.device} ({mode})"
            if not args.skip_model:
                rows = bench_model(enc, inputs, args)
                model_rows += [dict(r, device=label, mode=mode) for r in rows]
            if i == 0 and not args.skip_engine:
                meta["engine_device"] = str(enc.device)
                engine_rows += [dict(r, workload=f"{r['workload']}, {mode}" if mode != "-" else r["workload"],
                                     mode=mode) for r in bench_engine(enc, inputs, args)]
            if not args.skip_e2e:
                e2e_rows += [dict(r, mode=mode) for r in bench_e2e({args.weights: enc, **bases}, files, label, args)]
        for e in (enc, *bases.values()):
            e.use_cpu_threads(threads, "intra-op")
    print(markdown(meta, model_rows, engine_rows, e2e_rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(meta=meta, model=model_rows, engine=engine_rows, e2e=e2e_rows,
                                                   args=vars(args)), indent=2) + "\n")
    errors = sum(r["batched"]["errors"] + r["single"]["errors"] for r in engine_rows)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
