"""Encoder speed: single-input latency, peak batched throughput, and the service's dynamic batching.

    .venv/bin/python bench/encode.py [--weights DIR] [--devices cpu cuda] [--n 50] [--warmup 5]
                                     [--batches 1 4 8 16 32 64] [--seconds 1.0] [--threads N]
                                     [--callers 32] [--requests 20] [--max-batch 32] [--max-wait-ms 5]
                                     [--skip-engine] [--cpu-parallel chunks intra-op] [--json FILE]

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

Inputs are the demo shapes (``model/assets/demo_modelnet40.npz``, normalised 1,024-point clouds) and
their canonical renders, i.e. what the service encodes. Prints markdown tables naming the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

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

ROOT = Path(__file__).resolve().parents[1]

DEMO = ROOT / "model" / "assets" / "demo_modelnet40.npz"
KINDS = ("image", "points")


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


# ------------------------------------------------------------------------------------------ inputs
def make_inputs(enc: Encoder, n: int) -> dict[str, torch.Tensor]:
    """``n`` preprocessed inputs per kind on the CPU: clouds [n, P, 3] and their renders [n, 3, S, S]."""
    if DEMO.is_file():
        from model.dataset import load_dataset

        pts = load_dataset(DEMO).points
    else:  # pragma: no cover - the demo set ships with the repository
        from model.synthetic import make_synthetic

        pts = make_synthetic(n_per_class=-(-n // 8), n_points=1024, seed=0).points
    pts = np.resize(pts.astype(np.float32), (n, *pts.shape[1:]))  # repeats the set cyclically if n > len
    from model.io import normalize_points

    clouds = enc.points_tensor(np.stack([normalize_points(p, n_points=p.shape[0]) for p in pts]))
    images = torch.cat([enc.render_points(clouds[i:i + 64]).cpu() for i in range(0, n, 64)])
    return {"points": clouds.contiguous(), "image": images.contiguous()}


def encode_fn(enc: Encoder, kind: str):
    return enc.encode_image_tensors if kind == "image" else enc.encode_point_tensors


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


# ------------------------------------------------------------------------------------------ output
def markdown(meta: dict, model_rows: list[dict], engine_rows: list[dict], args: argparse.Namespace) -> str:
    out = [f"**Machine:** {meta['machine']}", "",
           f"**Weights:** `{meta['weights']}` (config `{meta['config']}`, {meta['parameters']:,} parameters, "
           f"image {meta['image_size']} px, {meta['num_points']} points); load average at start {meta['load']}", ""]
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
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(SHIPPED_WEIGHTS_DIR), help="weights directory (default: weights/)")
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
    p.add_argument("--skip-model", action="store_true", help="only the dynamic-batching part")
    p.add_argument("--skip-engine", action="store_true", help="only the model part")
    p.add_argument("--cpu-parallel", nargs="+", choices=["chunks", "intra-op"], default=["chunks", "intra-op"],
                   help="CPU modes to measure (as CMAH_CPU_PARALLEL; default: both, the service's first)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if min(args.n, args.callers, args.requests, *args.batches) < 1 or args.warmup < 0:
        p.error("--n, --callers, --requests and --batches must be >= 1")

    from model.device import set_cpu_threads

    threads = set_cpu_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    manifest = read_manifest(args.weights)
    meta: dict = dict(machine=machine_line(threads), weights=args.weights, load=load_avg(),
                      config=manifest.get("config", {}).get("name", "?"), parameters=int(manifest.get("parameters", 0)))
    model_rows: list[dict] = []
    engine_rows: list[dict] = []
    n_inputs = max(64, max(args.batches), args.callers)
    for i, dev in enumerate(devices):
        enc = Encoder.from_weights(args.weights, device=dev)
        meta.update(image_size=enc.image_size, num_points=enc.num_points)
        inputs = make_inputs(enc, n_inputs)
        for mode in (args.cpu_parallel if enc.device.type == "cpu" else ["-"]):
            if mode != "-":
                enc.use_cpu_threads(threads, mode)
            label = str(enc.device) if mode == "-" else f"{enc.device} ({mode})"
            if not args.skip_model:
                rows = bench_model(enc, inputs, args)
                model_rows += [dict(r, device=label, mode=mode) for r in rows]
            if i == 0 and not args.skip_engine:
                meta["engine_device"] = str(enc.device)
                engine_rows += [dict(r, workload=f"{r['workload']}, {mode}" if mode != "-" else r["workload"],
                                     mode=mode) for r in bench_engine(enc, inputs, args)]
        enc.use_cpu_threads(threads, "intra-op")
    print(markdown(meta, model_rows, engine_rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(meta=meta, model=model_rows, engine=engine_rows,
                                                   args=vars(args)), indent=2) + "\n")
    errors = sum(r["batched"]["errors"] + r["single"]["errors"] for r in engine_rows)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
