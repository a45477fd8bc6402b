"""The paper's ablation (Table 2) on our model: train every loss variant on the same budget, score each.

    .venv/bin/python bench/ablation.py --data ../shared/data/modelnet40_train.npz [--out runs/ablation]
        [--config cpu] [--epochs 4] [--warmup-epochs 0.5] [--variants cl-f cl-f+hard cl-f+cl-m cl+mr full full@16 ...]
        [--geometry-cache runs/cpu-main/geometry_cache.npz] [--threads N] [--json FILE]

Variants (``model.config.ABLATIONS``; ``+hard`` swaps NT-Xent for the hard-negative loss):

* ``cl-f``: contrastive loss between the full image and full point cloud only;
* ``cl-f+cl-m``: plus full <-> masked views across modalities;
* ``cl+mr``: plus masked reconstruction of both modalities (decoders on each modality's own tokens);
* ``full``: plus the cross-modal fusion blocks before the decoders (the CMAH objective, the default).

A suffix ``@BITS`` trains a model with that one code length's hash layers only (the paper trains one
model per length): ``full@16 full@32 full@64 full`` compares them with one model for all three.

Every variant trains from scratch with the same seed, data split, batch size, number of epochs and
learning-rate schedule (the paper's protocol: equal training, not equal wall time; each run's wall time
and throughput are reported too). Each is scored like ``cmah eval --data`` does — the documented split,
canonical renders, mAP@2000 with ties in database order, i2p and p2i at every code length — on the
same rendered query/database images, which are rendered once and shared by all variants.

A variant whose ``result.json`` exists is not trained again, and an interrupted run resumes from its
checkpoint, so the whole chain can be restarted with the same command.  Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from model.config import ABLATIONS, CODE_LENGTHS, get_config

VARIANTS = ("cl-f", "cl-f+hard", "cl-f+cl-m", "cl+mr", "full")
log = logging.getLogger("ablation")


def variant_config(preset: str, variant: str):
    """``NAME[+hard][@BITS]`` -> the preset with NAME's loss switches (and one code length if @BITS)."""
    name, at, bits = variant.partition("@")
    hard = name.endswith("+hard")
    name = name.removesuffix("+hard")
    if name not in ABLATIONS or (at and bits not in {str(b) for b in CODE_LENGTHS}):
        raise SystemExit(f"unknown variant {variant!r}; choose from {list(ABLATIONS)}, optionally followed "
                         f"by +hard and/or @BITS (one of {list(CODE_LENGTHS)})")
    cfg = get_config(preset).with_loss(**ABLATIONS[name], contrastive="hard" if hard else "ntxent")
    return dataclasses.replace(cfg, bits=(int(bits),)) if bits else cfg


def render_all(enc, points, batch: int = 64):
    """Canonical renders of every cloud (what ``Encoder.encode_point_dataset`` encodes), [N, 3, S, S]."""
    import torch
    from tqdm import tqdm

    out = []
    for s in tqdm(range(0, len(points), batch), desc="renders", unit="batch"):
        out.append(enc.render_points(enc.points_tensor(points[s:s + batch])).cpu())
    return torch.cat(out)


def encode_all(enc, points, images, batch: int = 64) -> dict[str, dict[int, Any]]:
    import numpy as np
    from tqdm import tqdm

    codes: dict[str, dict[int, list]] = {"image": {}, "points": {}}
    for s in tqdm(range(0, len(points), batch), desc="encode", unit="batch"):
        for b, c in enc.encode_point_tensors(enc.points_tensor(points[s:s + batch])).items():
            codes["points"].setdefault(b, []).append(c)
        for b, c in enc.encode_image_tensors(images[s:s + batch]).items():
            codes["image"].setdefault(b, []).append(c)
    return {m: {b: np.concatenate(v) for b, v in d.items()} for m, d in codes.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--config", default="cpu")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--warmup-epochs", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--geometry-cache", help="a trainer's geometry_cache.npz for the same data (saves the "
                    "per-shape normals, ~4 min on 2 cores)")
    ap.add_argument("--topk", type=int, default=2000)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", help="write all results here (default: OUT/ablation.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from model.dataset import load_dataset, make_split
    from model.device import set_cpu_threads
    from model.encode import Encoder
    from model.evaluate import CROSS, retrieval_metrics
    from model.train import GEOMETRY_FILE, TrainConfig, Trainer

    set_cpu_threads(args.threads)
    configs = {v: variant_config(args.config, v) for v in args.variants}
    data = load_dataset(args.data)
    split = make_split(len(data))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tc = TrainConfig(epochs=args.epochs, warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
                     lr=args.lr)
    results: dict[str, Any] = {}
    images = None
    for variant, cfg in configs.items():
        run_dir = out / variant
        res_path = run_dir / "result.json"
        if res_path.is_file():
            results[variant] = json.loads(res_path.read_text())
            log.info("%s: already done (%s)", variant, res_path)
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        if args.geometry_cache and not (run_dir / GEOMETRY_FILE).is_file():
            shutil.copyfile(args.geometry_cache, run_dir / GEOMETRY_FILE)
        log.info("%s: training %d epochs", variant, args.epochs)
        summary = Trainer(cfg, tc, data, run_dir, device=args.device, resume=True).run()
        enc = Encoder.from_weights(run_dir / "weights", device=args.device)
        if images is None:
            images = render_all(enc, data.points)
        t0 = time.monotonic()
        codes = encode_all(enc, data.points, images)
        q = {m: {b: c[split.query] for b, c in d.items()} for m, d in codes.items()}
        db = {m: {b: c[split.retrieval] for b, c in d.items()} for m, d in codes.items()}
        met = retrieval_metrics(q, db, data.labels[split.query], data.labels[split.retrieval], enc.bits,
                                args.topk, CROSS, curves=False)
        last = summary["history"][-5:]
        results[variant] = {
            "loss": dataclasses.asdict(cfg.loss), "bits": list(cfg.bits), "map": met["map"],
            "map_tie_aware": met["map_tie_aware"],
            "steps": summary["steps"], "epochs": summary["epochs_done"], "train_s": summary["elapsed_s"],
            "samples_per_s": summary["samples_per_s"], "eval_s": round(time.monotonic() - t0, 1),
            "final_loss": {k: round(sum(r[k] for r in last) / len(last), 4) for k in last[-1] if
                           k.startswith("loss")},
        }
        res_path.write_text(json.dumps(results[variant], indent=2))
        log.info("%s: %s", variant, results[variant]["map"])
    (Path(args.json) if args.json else out / "ablation.json").write_text(json.dumps(
        {"data": str(args.data), "config": args.config, "train": dataclasses.asdict(tc), "results": results},
        indent=2))
    bits = sorted({int(b) for r in results.values() for b in r["map"]["i2p"]})
    head = " | ".join(f"{d} {b}" for d in CROSS for b in bits)
    lines = [f"| variant | {head} | steps | train min | samples/s |",
             "|" + "---|" * (4 + len(CROSS) * len(bits))]
    for v, r in results.items():
        cells = " | ".join(f"{r['map'][d][str(b)]:.3f}" if str(b) in r["map"][d] else "—"
                           for d in CROSS for b in bits)
        lines.append(f"| {v} | {cells} | {r['steps']} | {r['train_s'] / 60:.1f} | {r['samples_per_s']:.1f} |")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
