"""`cmah eval` end to end on the synthetic dataset with tiny weights; results recomputed independently."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.dataset import load_dataset, make_split
from service.cli import main


def _brute_map(q: np.ndarray, db: np.ndarray, ql: np.ndarray, dl: np.ndarray, k: int) -> float:
    """Independent mAP@K: python popcount, stable sort, DJSRH top-K convention."""
    qi = [int.from_bytes(r.tobytes(), "big") for r in q]
    di = [int.from_bytes(r.tobytes(), "big") for r in db]
    aps = []
    for a, la in zip(qi, ql, strict=True):
        dist = np.array([bin(a ^ b).count("1") for b in di])
        order = np.argsort(dist, kind="stable")[:k]
        rel = dl[order] == la
        hits = np.cumsum(rel)
        aps.append(float((hits[rel] / (np.flatnonzero(rel) + 1)).mean()) if rel.any() else 0.0)
    return float(np.mean(aps))


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory, synth_npz, tiny_weights):
    out = tmp_path_factory.mktemp("eval")
    rc = main(["eval", "--weights", str(tiny_weights), "--data", str(synth_npz), "--bits", "16", "32", "64",
               "--topk", "40", "--json", str(out / "r.json"), "--plots", str(out / "plots"),
               "--save-codes", str(out / "codes.npz"), "--baselines", "--timing-repeats", "3", "--quiet",
               "--device", "cpu"])
    assert rc == 0
    return out


def test_eval_json_has_documented_keys(eval_run):
    res = json.loads((eval_run / "r.json").read_text())
    for key in ("map", "map_tie_aware", "precision_at_k", "pr_by_radius", "encode_ms", "throughput",
                "weights", "data", "baselines", "device", "topk", "bits"):
        assert key in res, key
    for d in ("i2p", "p2i", "i2i", "p2p"):
        for b in ("16", "32", "64"):
            assert 0.0 <= res["map"][d][b] <= 1.0
    assert set(res["baselines"]) == {"lsh", "pca", "itq", "djsrh"}
    assert res["weights"]["sha256"] and res["data"]["query"]["sha256"]
    assert res["encode_ms"]["image"] > 0 and res["throughput"]["points"] > 0
    for name in ("precision_at_k.png", "pr_curves.png", "tsne_64bit.png"):
        assert (eval_run / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_saved_codes_reproduce_the_reported_map(eval_run, synth_npz):
    res = json.loads((eval_run / "r.json").read_text())
    codes = np.load(eval_run / "codes.npz")
    ds = load_dataset(synth_npz)
    split = make_split(len(ds))
    assert np.array_equal(codes["query_labels"], ds.labels[split.query])
    assert np.array_equal(codes["db_labels"], ds.labels[split.retrieval])
    for bits in (16, 32, 64):
        q, db = codes[f"query_image_{bits}"], codes[f"db_points_{bits}"]
        assert q.shape == (len(split.query), bits // 8) and q.dtype == np.uint8
        expect = _brute_map(q, db, codes["query_labels"], codes["db_labels"], 40)
        assert res["map"]["i2p"][str(bits)] == pytest.approx(expect, abs=1e-9)


def test_eval_rejects_conflicting_data_arguments(synth_npz, tiny_weights, capsys):
    rc = main(["eval", "--weights", str(tiny_weights), "--data", str(synth_npz), "--query-data", str(synth_npz)])
    assert rc == 2
    assert "either --data" in capsys.readouterr().err


def test_eval_rejects_unknown_code_length(synth_npz, tiny_weights, capsys):
    rc = main(["eval", "--weights", str(tiny_weights), "--data", str(synth_npz), "--bits", "128", "--quiet"])
    assert rc == 2
    assert "128" in capsys.readouterr().err
