#!/usr/bin/env python3
"""The short summary that ``scripts/gpu/device_run.sh`` prints last: mAP of every evaluated weights set next
to the shipped weights' recorded evaluation, the training run, and the benchmarks' headline numbers.

    python scripts/gpu/device_summary.py RESULTS_DIR [--manifest weights/manifest.json] [--out summary.txt]

Reads what it finds in RESULTS_DIR: ``eval-<name>.json`` (``cmah eval --json``), ``train_log.json``,
``bench-encode.json`` (``bench/encode.py --json``) and ``bench-search.json``
(``bench/search_gpu.py --json``). Missing files are skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DIRS = ("i2p", "p2i", "i2i", "p2p")
BITS = ("16", "32", "64")
ORDER = ("shipped", "trained", "refit")


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cross_mean(maps: dict) -> float:
    vals = [maps[d][b] for d in ("i2p", "p2i") for b in BITS if b in maps.get(d, {})]
    return sum(vals) / len(vals) if vals else float("nan")


def summarize(res: Path, manifest: Path | None) -> str:
    lines: list[str] = []
    rows: list[tuple[str, dict, str]] = []
    if manifest and (m := _load(manifest)) and "evaluation" in m:
        ev = m["evaluation"]
        rows.append(("shipped (manifest)", ev["map"], f"{ev.get('device', '?')}, original data"))
    evals = {p.stem.removeprefix("eval-"): _load(p) for p in sorted(res.glob("eval-*.json"))}
    for name in sorted(evals, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        if (ev := evals[name]) is not None:
            rows.append((name, ev["map"], f"{ev.get('device', '?')}; {ev['data']['db']['size']} db / "
                         f"{ev['data']['query']['size']} query; weights sha {str(ev['weights'].get('sha256'))[:12]}"))
    if rows:
        lines.append(f"mAP@{next((e['topk'] for e in evals.values() if e), 2000)} "
                     "(columns: direction-bits; 'x-mean' = mean of i2p and p2i over 16/32/64 bits)")
        head = f"{'weights':<20}" + "".join(f"{d + '-' + b:>9}" for d in DIRS for b in BITS) + f"{'x-mean':>9}"
        lines += [head, "-" * len(head)]
        for name, maps, _ in rows:
            cells = "".join(f"{maps.get(d, {}).get(b, float('nan')):>9.4f}" for d in DIRS for b in BITS)
            lines.append(f"{name:<20}{cells}{cross_mean(maps):>9.4f}")
        lines += [f"  {name}: {note}" for name, _, note in rows]
        base = next((maps for name, maps, _ in rows if name == "shipped"), None)
        if base is not None:
            for name, maps, _ in rows:
                if name not in ("shipped", "shipped (manifest)"):
                    delta = cross_mean(maps) - cross_mean(base)
                    lines.append(f"  {name} vs shipped on this machine and data: x-mean {delta:+.4f} "
                                 f"({'better' if delta > 0 else 'not better'}; confirm with cmah eval on the "
                                 "original data before shipping)")
    if (tl := _load(res / "train_log.json")) is not None:
        last = tl["history"][-1] if tl.get("history") else {}
        lines.append(f"training: {tl['model_config']['name']} config, stopped {tl['stopped']}, {tl['steps']} steps "
                     f"({tl['epochs_done']} epochs done, {tl.get('steps_per_epoch')} steps/epoch), "
                     f"{tl['elapsed_s']:.0f} s, {tl['samples_per_s']} samples/s on {tl['device']}, last loss "
                     f"{last.get('loss', float('nan')):.4f}, batch {tl['train_config']['batch_size']}, "
                     f"lr {tl['train_config']['lr']:g}")
    if (be := _load(res / "bench-encode.json")) is not None:
        for r in be.get("model", []):
            lines.append(f"encode {r['device']} {r['kind']}: bs1 {r['bs1_mean_ms']:.2f} ms "
                         f"(p50 {r['bs1_p50_ms']:.2f}), peak {r['peak_per_s']:,.0f}/s at batch {r['peak_batch']}")
        for r in be.get("engine", []):
            lines.append(f"engine {r['workload']}: {r['batched']['per_s']:,.0f}/s batched vs "
                         f"{r['single']['per_s']:,.0f}/s one at a time (x{r['speedup']:.2f})")
    if (bs := _load(res / "bench-search.json")) is not None:
        lines.append(f"search ({bs['device']}, copy {bs['copy_bandwidth'] / 1e9:.0f} GB/s):")
        for r in bs["rows"]:
            lines.append(f"  n={r['n']:,} {r['bits']}-bit batch {r['batch']}: {r['scan_qps']:,.0f} q/s "
                         f"({r['scan_ms']:.3f} ms/call, {r['scan_over_bound']:.3g} of the bound), "
                         f"store accelerator {r['accel_ms']:.3f} ms/call")
    return "\n".join(lines) if lines else "no results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("--manifest", type=Path, help="shipped weights' manifest.json (its recorded evaluation)")
    p.add_argument("--out", type=Path, help="also write the summary here")
    args = p.parse_args(argv)
    text = summarize(args.results, args.manifest)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
