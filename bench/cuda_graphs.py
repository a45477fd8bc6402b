"""Small-batch encode latency on a GPU with CUDA-graph replay against the eager calls, in the same run.

    python bench/cuda_graphs.py [--weights DIR] [--batches 1 2 8] [--n 100] [--warmup 10] [--json FILE]

For each modality and batch size: ``--warmup`` untimed calls, then the mean and p50 of ``--n`` timed
calls of ``Encoder.encode_*_tensors`` (preprocessed demo inputs in, packed codes on the host out),
first eager (``CMAH_CUDA_GRAPHS=0``), then replayed from a graph (:mod:`model.cuda_graphs`); prints a
markdown table with the speed-up and whether both gave the same codes. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from model.cuda_graphs import ENV_SWITCH
from model.dataset import load_dataset
from model.encode import Encoder
from model.weights import SHIPPED_WEIGHTS_DIR

ROOT = Path(__file__).resolve().parents[1]

DEMO = ROOT / "model" / "assets" / "demo_modelnet40.npz"


def time_calls(fn, inputs: list[torch.Tensor], warmup: int) -> tuple[list[float], list]:
    """Milliseconds of each call after ``warmup`` untimed ones (the codes come back to the host, so each
    call is complete when it returns), and the outputs of the timed calls."""
    for x in inputs[:warmup]:
        fn(x)
    ms, outs = [], []
    for x in inputs[warmup:]:
        t0 = time.perf_counter()
        outs.append(fn(x))
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms, outs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(SHIPPED_WEIGHTS_DIR))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 8])
    p.add_argument("--n", type=int, default=100, help="timed calls per row (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls first (default 10)")
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")

    enc = Encoder.from_weights(a.weights, "cuda")
    demo = load_dataset(DEMO)
    pts_all = enc.points_tensor(demo.points)
    imgs_all = enc.render_points(pts_all[:64]).cpu()
    rng = np.random.default_rng(0)
    rows = []
    for kind, pool, call in (("image", imgs_all, enc.encode_image_tensors),
                             ("points", pts_all, enc.encode_point_tensors)):
        for bs in a.batches:
            picks = [torch.from_numpy(rng.choice(len(pool), bs)) for _ in range(a.warmup + a.n)]
            inputs = [pool[i] for i in picks]
            os.environ[ENV_SWITCH] = "0"
            eager_ms, eager_out = time_calls(call, inputs, a.warmup)
            os.environ[ENV_SWITCH] = "1"
            graph_ms, graph_out = time_calls(call, inputs, a.warmup)
            same = all(np.array_equal(e[b], g[b]) for e, g in zip(eager_out, graph_out, strict=True) for b in e)
            row = {"modality": kind, "batch": bs,
                   "eager_ms": statistics.fmean(eager_ms), "eager_p50_ms": statistics.median(eager_ms),
                   "graph_ms": statistics.fmean(graph_ms), "graph_p50_ms": statistics.median(graph_ms),
                   "same_codes": same}
            row["speedup"] = row["eager_ms"] / row["graph_ms"]
            rows.append(row)
            print(f"  {kind} bs{bs}: eager {row['eager_ms']:.2f} ms, graph {row['graph_ms']:.2f} ms "
                  f"(x{row['speedup']:.2f}), same codes: {same}", file=sys.stderr, flush=True)
    failed = [c for c in (enc._image_call, enc._point_call) if c.failed]
    print(f"\n**Device:** {torch.cuda.get_device_name()}, torch {torch.__version__}; weights `{a.weights}`; "
          f"{a.n} timed calls after {a.warmup} warm-up{'; CAPTURE FAILED: eager both times' if failed else ''}\n")
    print("| modality | batch | eager ms (p50) | graph ms (p50) | speed-up | same codes |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['modality']} | {r['batch']} | {r['eager_ms']:.2f} ({r['eager_p50_ms']:.2f}) | "
              f"{r['graph_ms']:.2f} ({r['graph_p50_ms']:.2f}) | **×{r['speedup']:.2f}** | {r['same_codes']} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                            "rows": rows, "capture_failed": bool(failed)}, indent=1))
    return 0 if all(r["same_codes"] for r in rows) and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
