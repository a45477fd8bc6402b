"""How OpenMP worker threads wait, measured on `cmah train` steps: which policy should `cmah` use?

    .venv/bin/python bench/omp_wait.py [--data FILE.npz] [--config cpu] [--batch-size 64] [--steps 4]
                                       [--policies passive default spin:20000 active]
                                       [--competitors 0 1] [--threads N] [--json FILE]

torch's CPU kernels run on an OpenMP pool (libgomp). Between parallel regions its workers wait, and
``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` say how: ``active`` spins, ``passive`` sleeps at once (every
region then wakes a sleeping thread), libgomp's ``default`` spins for ~300,000 iterations and then
sleeps, ``spin:N`` spins for N iterations. Which is fastest depends on the host: on a KVM guest a
sleeping vCPU must be woken by the hypervisor, and spinning threads lose when another process wants
the core.

Every policy runs in its own child process (the variables only act before torch loads its OpenMP
runtime): the preset's training steps (render a batch, both encoders on full and masked views,
fusion, decoders, backward, AdamW) exactly as ``model.train.Trainer`` runs them, one warm-up step,
then the median of ``--steps``. ``--competitors 1`` repeats every policy with one busy pure-Python
process beside it (another job on a 2-core machine). The data default is the demo gallery shipped in
``model/assets`` (real ModelNet40 clouds); the rendering geometry is computed once and shared.

Prints a markdown table naming the machine: seconds per step and the ratio to the first policy
measured in the same run with the same competitors (the baseline).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DEMO = ROOT / "model" / "assets" / "demo_modelnet40.npz"
POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def policy_env(policy: str) -> dict[str, str]:
    """The environment of a child measuring ``policy`` (the caller's own OpenMP settings removed)."""
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif policy == "active":
        env["OMP_WAIT_POLICY"] = "ACTIVE"
    elif policy.startswith("spin:"):
        count = policy.split(":", 1)[1]
        if not count.isdigit():
            raise SystemExit(f"--policies: {policy!r}: spin:N needs a whole number of iterations")
        env["GOMP_SPINCOUNT"] = count
    elif policy != "default":
        raise SystemExit(f"--policies: unknown policy {policy!r} (passive, default, active, spin:N)")
    return env


def child(args: argparse.Namespace) -> None:
    """Time training steps in this process and print one JSON line."""
    import numpy as np
    import torch

    from model.config import get_config
    from model.device import set_cpu_threads
    from model.train import TrainConfig, Trainer

    threads = set_cpu_threads(args.threads)
    trainer = Trainer(get_config(args.config), TrainConfig(batch_size=args.batch_size, seed=0), args.data,
                      args.out, device="cpu", show_progress=False)
    normals, spacing = trainer._geometry()
    rng = np.random.default_rng(0)
    times = []
    for i in range(args.steps + 1):
        idx = np.sort(rng.choice(trainer.train_idx, size=min(args.batch_size, len(trainer.train_idx)),
                                 replace=False))
        t0 = time.perf_counter()
        images, points = trainer.batch(idx, normals, spacing)
        out = trainer.step_fn(images, points, trainer.gen)
        trainer.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        trainer.opt.step()
        if i:                                    # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    print(json.dumps({"threads": threads, "torch": torch.__version__, "step_s": times}), flush=True)


def geometry_cache(args: argparse.Namespace, work: Path) -> Path:
    """Compute the rendering geometry of the data once (the children copy it)."""
    from model.config import get_config
    from model.train import GEOMETRY_FILE, TrainConfig, Trainer

    out = work / "geometry"
    Trainer(get_config(args.config), TrainConfig(batch_size=args.batch_size), args.data, out,
            device="cpu", show_progress=True)._geometry()
    return out / GEOMETRY_FILE


def measure(args: argparse.Namespace, policy: str, competitors: int, cache: Path, work: Path) -> dict:
    out = work / f"{policy.replace(':', '_')}-{competitors}"
    out.mkdir(parents=True)
    shutil.copy(cache, out / cache.name)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(competitors)]
    try:
        cmd = [sys.executable, __file__, "--child", "--out", str(out), "--data", str(args.data),
               "--config", args.config, "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=policy_env(policy), capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
    finally:
        for p in busy:
            p.kill()
            p.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{policy}: child failed with exit code {proc.returncode}:\n{proc.stderr[-2000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row.update(policy=policy, competitors=competitors, wall_s=round(wall, 1),
               median_s=statistics.median(row["step_s"]))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEMO, help="dataset .npz (default: the shipped demo gallery)")
    ap.add_argument("--config", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per policy (after one warm-up step)")
    ap.add_argument("--policies", nargs="+", default=["passive", "default", "spin:20000", "active"],
                    help="passive, default (libgomp's), active, spin:N; the first is the baseline")
    ap.add_argument("--competitors", nargs="+", type=int, default=[0, 1],
                    help="busy processes running beside the measured one")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if not args.data.is_file():
        raise SystemExit(f"--data: {args.data}: no such file")
    for policy in args.policies:
        policy_env(policy)                                   # reject a bad name before any work

    from model.device import cpu_name

    rows = []
    with tempfile.TemporaryDirectory(prefix="cmah-omp-") as tmp:
        work = Path(tmp)
        cache = geometry_cache(args, work)
        for competitors in args.competitors:
            for policy in args.policies:
                row = measure(args, policy, competitors, cache, work)
                rows.append(row)
                print(f"  {policy:>12} competitors={competitors}: {row['median_s']:.2f} s/step "
                      f"({', '.join(f'{t:.2f}' for t in row['step_s'])})", file=sys.stderr, flush=True)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n{cpu_name()}, {os.cpu_count()} cores, torch {rows[0]['torch']}, {rows[0]['threads']} threads, "
          f"preset {args.config}, batch {args.batch_size}, {args.data.name}, {when}\n")
    print(f"| busy processes beside | policy | s / step (median) | speed-up vs {args.policies[0]} |")
    print("|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["competitors"] == row["competitors"] and r["policy"] == args.policies[0])
        print(f"| {row['competitors']} | {row['policy']} | {row['median_s']:.2f} | "
              f"x{base['median_s'] / row['median_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu_name(), "when": when, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
