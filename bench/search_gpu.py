"""GPU Hamming search: the torch popcount scan of :mod:`index.gpu` against the memory-bandwidth bound.

    python bench/search_gpu.py [--device cuda] [--n 1000000 10000000] [--bits 16 32 64]
                               [--batches 1 64 1024] [--k 10] [--seconds 1.0] [--check-rows 1000000]
                               [--json FILE]

For every database size ``--n`` and code length it fills the device with random codes and measures

* ``scan``: :func:`index.gpu.torch_hamming_topk` on device tensors (median time per call of
  ``batch`` queries, after a warm-up, synchronised), as queries/s and as code bytes scanned per
  second;
* ``accel``: :class:`index.gpu.TorchAccelerator` ``search`` as the store calls it (numpy queries in,
  numpy ids out: host transfers included);
* the bound: one read of the codes per call at the device's copy bandwidth (a 1 GiB
  device-to-device copy measured in the same run, bytes read plus written per second).

Before timing, each (n, bits) result for 16 queries is compared with the numpy reference
(:func:`index.exact.brute_force_search`) on the first ``--check-rows`` rows; a mismatch ends the run
with exit status 1. Prints a markdown table last. FAISS is not needed (the GPU machine has none).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _import_index_modules():
    """``index.exact`` and ``index.gpu``. The package's ``__init__`` opens the store, which needs FAISS;
    where FAISS is missing (the GPU machine) the package is registered without running it."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        if "index" not in sys.modules:
            pkg = types.ModuleType("index")
            pkg.__path__ = [str(ROOT / "index")]
            sys.modules["index"] = pkg
    from index import exact, gpu

    return exact, gpu


exact, gpu = _import_index_modules()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, seconds: float, min_calls: int = 3) -> float:
    """Median wall time of ``fn()`` (synchronised) over calls made for about ``seconds``."""
    fn()
    sync(device)
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Device-to-device copy, bytes read plus written per second (best of 5)."""
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    del src, dst
    return 2 * nbytes / best


def check_exact(db: torch.Tensor, k: int, check_rows: int, gen: torch.Generator) -> None:
    rows = min(check_rows, db.shape[0])
    q = torch.randint(0, 256, (16, db.shape[1]), dtype=torch.uint8, generator=gen).to(db.device)
    d, r = gpu.torch_hamming_topk(q, db[:rows], k)
    ref_d, ref_i = exact.brute_force_search(q.cpu().numpy(), db[:rows].cpu().numpy(), np.arange(rows), k)
    if not (np.array_equal(d.cpu().numpy(), ref_d) and np.array_equal(r.cpu().numpy(), ref_i)):
        raise SystemExit(f"search_gpu: torch scan differs from the numpy reference ({rows} rows, "
                         f"{db.shape[1] * 8} bits, k={k})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, nargs="+", default=[1_000_000, 10_000_000], help="database sizes")
    p.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024], help="queries per call")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seconds", type=float, default=1.0, help="timing per cell (default 1.0)")
    p.add_argument("--check-rows", type=int, default=1_000_000, help="rows compared with numpy (default 1M)")
    p.add_argument("--copy-mib", type=int, default=1024, help="size of the bandwidth copy (default 1024 MiB)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("search_gpu: --device cuda but torch sees no CUDA device")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    bw = copy_bandwidth(device, args.copy_mib << 20)
    print(f"device: {name}; torch {torch.__version__}; copy bandwidth {bw / 1e9:.0f} GB/s (read + write)",
          flush=True)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in args.n:
        for bits in args.bits:
            nbytes = bits // 8
            db = torch.randint(0, 256, (n, nbytes), dtype=torch.uint8, generator=gen).to(device)
            check_exact(db, args.k, args.check_rows, gen)
            acc = gpu.TorchAccelerator(str(device))
            acc.rebuild(np.arange(n, dtype=np.int64), db.cpu().numpy())
            for b in args.batches:
                q = torch.randint(0, 256, (b, nbytes), dtype=torch.uint8, generator=gen).to(device)
                qn = q.cpu().numpy()
                t_scan = median_seconds(lambda q=q, db=db: gpu.torch_hamming_topk(q, db, args.k), device, args.seconds)
                t_acc = median_seconds(lambda qn=qn, acc=acc: acc.search(qn, args.k), device, args.seconds)
                bound_qps = b / (n * nbytes / bw)
                row = dict(n=n, bits=bits, batch=b, scan_ms=t_scan * 1e3, scan_qps=b / t_scan,
                           scan_gbps=n * nbytes / t_scan / 1e9, accel_ms=t_acc * 1e3, accel_qps=b / t_acc,
                           bound_qps=bound_qps, scan_over_bound=(b / t_scan) / bound_qps)
                rows.append(row)
                print(f"  n={n:,} {bits}-bit batch {b}: scan {row['scan_ms']:.3f} ms ({row['scan_qps']:,.0f} q/s, "
                      f"{row['scan_gbps']:.1f} GB/s of codes), accelerator {row['accel_ms']:.3f} ms, "
                      f"bound {bound_qps:,.0f} q/s", flush=True)
            db = acc = None  # free the device memory before the next size
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"\n**Device:** {name}, torch {torch.__version__}, copy bandwidth {bw / 1e9:.0f} GB/s; k = {args.k}; "
          "exactness checked against numpy\n")
    print("| n | bits | batch | scan ms | scan q/s | codes GB/s | accelerator ms (numpy in/out) | bound q/s "
          "| scan / bound |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['bits']} | {r['batch']} | {r['scan_ms']:.3f} | {r['scan_qps']:,.0f} | "
              f"{r['scan_gbps']:.1f} | {r['accel_ms']:.3f} | {r['bound_qps']:,.0f} | {r['scan_over_bound']:.3g} |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=name, torch=torch.__version__, copy_bandwidth=bw,
                                                   args=vars(args), rows=rows), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
