"""The evaluation harness behind ``cmah eval``.

Encodes a query set and a database set with the one encode path (:mod:`model.encode`: each shape as
points and as its canonical render), then measures cross-modal retrieval (image->points ``i2p`` and
points->image ``p2i``) and same-modality retrieval (``i2i``, ``p2p``) for every code length.

JSON keys (stable; values are floats unless said otherwise):

* ``map[dir][bits]`` — mAP@topk, stable tie order (database order); ``dir`` in i2p, p2i, i2i, p2p and
  ``bits`` a string ("16", "32", "64");
* ``map_tie_aware[dir][bits]`` — the same, expected over random order within Hamming ties;
* ``precision_at_k[dir][bits]`` — list of mean precisions at ``precision_at_k_ks``;
* ``pr_by_radius[dir][bits]`` — {"precision": [...], "recall": [...]} for radius 0..bits;
* ``encode_ms`` — {"image": ms, "points": ms, "render": ms}: one input, batch size 1, mean of 100 calls
  after warm-up; ``throughput`` — {"image": inputs/s, "points": inputs/s} at ``throughput_batch``;
* ``baselines[name]["map"][dir][bits]`` — LSH / PCA-sign / ITQ on the encoders' continuous features
  (fitted on the database side), DJSRH (a published unsupervised cross-modal hashing method, trained on
  the database side's paired features, :mod:`model.djsrh`), and any extra weights passed as baselines
  (e.g. "cl-f");
* ``weights`` {"dir", "sha256", "config"}, ``data`` {"query"/"db": {"path", "sha256", "size"}}, ``topk``,
  ``bits``, ``device``, ``torch``, ``elapsed_s``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metrics
from .baselines import fit_cross_modal, make_hasher
from .dataset import PointDataset, load_dataset, make_split
from .device import cpu_name
from .djsrh import DJSRHHasher
from .encode import Encoder, time_call
from .weights import WEIGHTS_FILE

log = logging.getLogger(__name__)

DIRECTIONS = {"i2p": ("image", "points"), "p2i": ("points", "image"),
              "i2i": ("image", "image"), "p2p": ("points", "points")}
CROSS = ("i2p", "p2i")
BASELINE_NAMES = ("lsh", "pca", "itq")


@dataclass
class EvalData:
    query: PointDataset
    db: PointDataset
    split_note: str = ""


def load_eval_data(data: str | Path | PointDataset | None = None, query_data: str | Path | None = None,
                   db_data: str | Path | None = None, validation: int = 0) -> EvalData:
    """Either one file with the documented split, or explicit query and database files.

    ``validation`` > 0 (with ``data``) evaluates the validation split instead: the retrieval set's
    first ``validation`` shapes (what ``cmah train --holdout`` keeps out of training) as queries
    against the rest of the retrieval set; the test queries are not touched."""
    if validation and data is None:
        raise ValueError("--validation needs --data (it splits that file's retrieval set)")
    if data is not None:
        if query_data or db_data:
            raise ValueError("give either --data or both --query-data and --db-data, not both")
        ds = data if isinstance(data, PointDataset) else load_dataset(data)
        name = Path(ds.source).name if ds.source else "the dataset"
        if validation:
            split = make_split(len(ds), holdout=validation)
            return EvalData(ds.subset(split.validation), ds.subset(split.train),
                            f"validation split of {name}: its retrieval set's first "
                            f"{len(split.validation)} shapes as queries against the other {len(split.train)}")
        split = make_split(len(ds))
        return EvalData(ds.subset(split.query), ds.subset(split.retrieval),
                        f"documented split of {name}: {len(split.query)} query / "
                        f"{len(split.retrieval)} retrieval")
    if not (query_data and db_data):
        raise ValueError("give --data FILE, or both --query-data and --db-data")
    return EvalData(load_dataset(query_data), load_dataset(db_data), "explicit query / database files")


@dataclass
class CodeSet:
    """Packed codes per modality and code length, plus continuous features for the baselines."""

    codes: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)   # codes[modality][bits]
    feats: dict[str, np.ndarray] = field(default_factory=dict)              # feats[modality]


def encode_set(enc: Encoder, ds: PointDataset, desc: str, batch_size: int = 64,
               features: bool = False, progress: bool = True) -> CodeSet:
    out = enc.encode_point_dataset(ds.points, batch_size, desc=desc, features=features, progress=progress)
    cs = CodeSet()
    for mod in ("image", "points"):
        cs.codes[mod] = {b: out[f"{mod}_{b}"] for b in enc.bits}
        if features:
            cs.feats[mod] = out[f"{mod}_feat"]
    return cs


def retrieval_metrics(q: dict[str, dict[int, np.ndarray]], db: dict[str, dict[int, np.ndarray]],
                      q_labels: np.ndarray, db_labels: np.ndarray, bits: Sequence[int], topk: int,
                      directions: Sequence[str] = tuple(DIRECTIONS), curves: bool = True,
                      ks: Sequence[int] = ()) -> dict[str, Any]:
    res: dict[str, Any] = {"map": {}, "map_tie_aware": {}}
    if curves:
        res["precision_at_k"], res["pr_by_radius"] = {}, {}
    for d in directions:
        qm, dm = DIRECTIONS[d]
        for key in res:
            res[key][d] = {}
        for b in bits:
            args = (q[qm][b], db[dm][b], q_labels, db_labels)
            res["map"][d][str(b)] = float(metrics.map_at_k(*args, topk))
            res["map_tie_aware"][d][str(b)] = float(metrics.map_at_k_tie_aware(*args, topk))
            if curves:
                res["precision_at_k"][d][str(b)] = metrics.precision_at_k_curve(*args, ks).tolist()
                p, r = metrics.precision_recall_by_radius(*args)
                res["pr_by_radius"][d][str(b)] = {"precision": np.nan_to_num(p, nan=0.0).tolist(),
                                                  "recall": r.tolist()}
    return res


def baseline_metrics(q: CodeSet, db: CodeSet, q_labels: np.ndarray, db_labels: np.ndarray,
                     bits: Sequence[int], topk: int, seed: int = 0) -> dict[str, Any]:
    """LSH / PCA-sign / ITQ fitted on the database side's continuous features of both modalities, and
    DJSRH trained on the database side's paired features (row i of both modalities = one shape)."""
    out: dict[str, Any] = {}
    fi, fp = db.feats["image"], db.feats["points"]
    if fi.shape[1] != fp.shape[1]:
        log.warning("image and point features differ in width (%d vs %d): LSH / PCA / ITQ skipped",
                    fi.shape[1], fp.shape[1])
        usable: list[int] = []
    else:
        usable = [b for b in bits if b <= fi.shape[1]]
        if len(usable) < len(bits):
            log.warning("baselines skip code lengths above the feature width %d: %s", fi.shape[1],
                        [b for b in bits if b > fi.shape[1]])
    for name in BASELINE_NAMES if usable else ():
        qc: dict[str, dict[int, np.ndarray]] = {"image": {}, "points": {}}
        dc: dict[str, dict[int, np.ndarray]] = {"image": {}, "points": {}}
        for b in usable:
            h = fit_cross_modal(make_hasher(name, b, seed), [fi, fp])
            for mod in ("image", "points"):
                qc[mod][b] = h.encode(q.feats[mod])
                dc[mod][b] = h.encode(db.feats[mod])
        out[name] = retrieval_metrics(qc, dc, q_labels, db_labels, usable, topk, CROSS, curves=False)
    qc, dc = {"image": {}, "points": {}}, {"image": {}, "points": {}}
    for b in bits:
        h = DJSRHHasher(b, seed=seed).fit(fi, fp)
        for mod in ("image", "points"):
            qc[mod][b] = h.encode(mod, q.feats[mod])
            dc[mod][b] = h.encode(mod, db.feats[mod])
    out["djsrh"] = retrieval_metrics(qc, dc, q_labels, db_labels, bits, topk, CROSS, curves=False)
    return out


def timing(enc: Encoder, sample_points: np.ndarray, repeats: int = 100, batch: int = 64) -> dict[str, Any]:
    """bs1 latency (mean over ``repeats`` after warm-up) and batched throughput per modality."""
    pts1 = enc.points_tensor(sample_points[:1])
    img1 = enc.render_points(pts1)
    ptsb = enc.points_tensor(sample_points[:batch])
    imgb = enc.render_points(ptsb)
    ms = {
        "image": time_call(lambda: enc.encode_image_tensors(img1), repeats),
        "points": time_call(lambda: enc.encode_point_tensors(pts1), repeats),
        "render": time_call(lambda: enc.render_points(pts1), max(10, repeats // 5)),
    }
    reps = 5
    thr = {
        "image": len(imgb) / (time_call(lambda: enc.encode_image_tensors(imgb), reps, 1) / 1000),
        "points": len(ptsb) / (time_call(lambda: enc.encode_point_tensors(ptsb), reps, 1) / 1000),
    }
    return {"encode_ms": {k: round(v, 3) for k, v in ms.items()},
            "throughput": {k: round(v, 1) for k, v in thr.items()}, "throughput_batch": len(ptsb),
            "threads": max(enc.workers, torch.get_num_threads()), "cpu_parallel": enc.workers > 1}


def weights_sha(weights_dir: str | Path) -> str:
    p = Path(weights_dir) / WEIGHTS_FILE
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""


def device_name(dev: torch.device, workers: int = 1) -> str:
    """The device in words; ``workers`` > 1: CPU model calls split over that many threads
    (:meth:`~model.encode.Encoder.use_cpu_threads`)."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if workers > 1:
        return f"CPU ({cpu_name()}, {workers} threads, batches split over them)"
    return f"CPU ({cpu_name()}, {torch.get_num_threads()} threads)"


def evaluate(enc: Encoder, data: EvalData, bits: Sequence[int] = (16, 32, 64), topk: int = 2000,
             baselines: bool = False, extra_baselines: dict[str, Encoder] | None = None,
             plots_dir: str | Path | None = None, save_codes: str | Path | None = None,
             weights_dir: str | Path | None = None, timing_repeats: int = 100, batch_size: int = 64,
             progress: bool = True, tsne_sample: int = 1000) -> dict[str, Any]:
    t0 = time.monotonic()
    bits = [int(b) for b in bits]
    unknown = [b for b in bits if b not in enc.bits]
    if unknown:
        raise ValueError(f"the weights have no {unknown}-bit head; they provide {list(enc.bits)}")
    ql, dl = data.query.labels, data.db.labels
    q = encode_set(enc, data.query, "query", batch_size, features=baselines, progress=progress)
    db = encode_set(enc, data.db, "database", batch_size, features=baselines, progress=progress)
    ks = sorted({k for k in (1, 5, 10, 20, 50, 100, 200, 500, 1000, 1500, 2000) if k <= len(data.db)}
                | {min(topk, len(data.db))})
    res: dict[str, Any] = {"topk": topk, "bits": bits, "precision_at_k_ks": ks}
    res.update(retrieval_metrics(q.codes, db.codes, ql, dl, bits, topk, ks=ks))
    if baselines:
        res["baselines"] = baseline_metrics(q, db, ql, dl, bits, topk)
    for name, other in (extra_baselines or {}).items():
        oq = encode_set(other, data.query, f"{name} query", batch_size, progress=progress)
        od = encode_set(other, data.db, f"{name} database", batch_size, progress=progress)
        res.setdefault("baselines", {})[name] = retrieval_metrics(oq.codes, od.codes, ql, dl, bits, topk,
                                                                  CROSS, curves=False)
    res.update(timing(enc, data.query.points, timing_repeats))
    res.update({
        "device": device_name(enc.device, enc.workers), "torch": torch.__version__,
        "weights": {"dir": str(weights_dir) if weights_dir else None,
                    "sha256": weights_sha(weights_dir) if weights_dir else None,
                    "config": enc.cfg.name},
        "data": {"split": data.split_note,
                 "query": {"path": data.query.source, "sha256": data.query.sha256, "size": len(data.query)},
                 "db": {"path": data.db.source, "sha256": data.db.sha256, "size": len(data.db)}},
    })
    if save_codes:
        arrays = {"query_labels": ql, "db_labels": dl}
        for side, cs in (("query", q), ("db", db)):
            for mod in ("image", "points"):
                for b in bits:
                    arrays[f"{side}_{mod}_{b}"] = cs.codes[mod][b]
        np.savez_compressed(save_codes, **arrays)
    if plots_dir:
        res["plots"] = write_plots(res, q, db, ql, dl, data.query.classes, bits, Path(plots_dir), tsne_sample)
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    return res


def write_plots(res: dict[str, Any], q: CodeSet, db: CodeSet, ql: np.ndarray, dl: np.ndarray,
                classes: np.ndarray, bits: Sequence[int], out: Path, tsne_sample: int) -> dict[str, str]:
    from . import plots

    out.mkdir(parents=True, exist_ok=True)
    ks = res["precision_at_k_ks"]
    curves = {d: {f"{b} bits": np.asarray(res["precision_at_k"][d][str(b)]) for b in bits} for d in CROSS}
    pr = {d: {f"{b} bits": (np.asarray(res["pr_by_radius"][d][str(b)]["precision"]),
                            np.asarray(res["pr_by_radius"][d][str(b)]["recall"])) for b in bits} for d in CROSS}
    b = max(bits)
    paths = {
        "precision_at_k": plots.plot_precision_at_k(curves, ks, out / "precision_at_k.png"),
        "pr_curves": plots.plot_pr_curves(pr, out / "pr_curves.png"),
        "tsne": plots.plot_tsne({"image": q.codes["image"][b], "points": q.codes["points"][b]},
                                {"image": ql, "points": ql}, [str(c) for c in classes],
                                out / f"tsne_{b}bit.png", n_sample=tsne_sample, bits=b,
                                title=f"t-SNE of {b}-bit query codes"),
    }
    return {k: str(v) for k, v in paths.items()}


def format_table(res: dict[str, Any]) -> str:
    """A plain-text table: method x direction x code length (mAP@topk, tie-aware in brackets)."""
    bits = res["bits"]
    head = f"{'method':<10} {'task':<5} " + " ".join(f"{str(b) + '-bit':>17}" for b in bits)
    lines = [f"mAP@{res['topk']} (tie-aware)", head, "-" * len(head)]

    def rows(name: str, r: dict[str, Any], dirs: Sequence[str]) -> None:
        for d in dirs:
            cells = []
            for b in bits:
                if str(b) not in r["map"][d]:
                    cells.append("-".rjust(17))
                    continue
                m, t = r["map"][d][str(b)], r["map_tie_aware"][d][str(b)]
                cells.append(f"{m:.4f} ({t:.4f})".rjust(17))
            lines.append(f"{name:<10} {d:<5} " + " ".join(cells))

    rows("cmah", res, tuple(DIRECTIONS))
    for name, r in res.get("baselines", {}).items():
        rows(name, r, CROSS)
    e = res["encode_ms"]
    lines.append(f"encode bs1: image {e['image']:.2f} ms, points {e['points']:.2f} ms, render {e['render']:.2f} ms "
                 f"on {res['device']}; throughput image {res['throughput']['image']:.0f}/s, "
                 f"points {res['throughput']['points']:.0f}/s")
    return "\n".join(lines)


def write_json(res: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(res, indent=1))
