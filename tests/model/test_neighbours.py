"""Neighbour positives: the soft-target NT-Xent against a direct formula, the k-NN graph against brute
force, batch composition, the validation holdout, and training with neighbours end to end."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from model.config import TINY
from model.dataset import DatasetError, load_dataset, make_split
from model.evaluate import load_eval_data
from model.losses import nt_xent, soft_nt_xent
from model.neighbours import NeighbourGraph, knn_joint
from model.train import GRAPH_REBUILD_MIN_LEFT, TrainConfig, Trainer
from service.cli import main


def _reference_soft_loss(a: torch.Tensor, b: torch.Tensor, tau: float, nb: np.ndarray, alpha: float) -> float:
    """Direct per-anchor formula: -sum_c t_c log(exp(s_ac / tau) / sum_{c' != anchor} exp(s_ac' / tau))."""
    z = [x / x.norm() for x in torch.cat([a, b]).double()]
    n = a.shape[0]
    total = 0.0
    for r in range(2 * n):
        i = r % n
        pair = r + n if r < n else r - n
        nbrs = [j for j in range(n) if nb[i, j]]
        targets = {pair: 1.0 - alpha} if nbrs else {pair: 1.0}
        for j in nbrs:
            for c in (j, j + n):
                targets[c] = targets.get(c, 0.0) + alpha / (2 * len(nbrs))
        denom = sum(math.exp(float(z[r] @ z[c]) / tau) for c in range(2 * n) if c != r)
        total -= sum(w * (float(z[r] @ z[c]) / tau - math.log(denom)) for c, w in targets.items())
    return total / (2 * n)


def test_soft_nt_xent_matches_a_direct_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    nb = np.zeros((6, 6), dtype=bool)
    for i, j in ((0, 1), (0, 4), (2, 3)):            # shape 5 has no neighbour in the batch
        nb[i, j] = nb[j, i] = True
    got = float(soft_nt_xent(a, b, 0.3, torch.from_numpy(nb), 0.4))
    assert got == pytest.approx(_reference_soft_loss(a, b, 0.3, nb, 0.4), rel=1e-5)
    # no neighbours, or alpha 0, is plain NT-Xent; neighbours change the loss
    none = torch.zeros(6, 6, dtype=torch.bool)
    assert float(soft_nt_xent(a, b, 0.3, none, 0.4)) == pytest.approx(float(nt_xent(a, b, 0.3)), rel=1e-6)
    assert float(soft_nt_xent(a, b, 0.3, torch.from_numpy(nb), 0.0)) == pytest.approx(float(nt_xent(a, b, 0.3)),
                                                                                      rel=1e-6)
    assert got != pytest.approx(float(nt_xent(a, b, 0.3)), rel=1e-3)


def test_soft_nt_xent_pulls_neighbours_together():
    """One gradient step on the soft loss raises a neighbour pair's similarity more than NT-Xent does."""
    g = torch.Generator().manual_seed(2)
    a0, b0 = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    nb = torch.zeros(4, 4, dtype=torch.bool)
    nb[0, 1] = nb[1, 0] = True

    def sim_after(loss_fn) -> float:
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        loss_fn(a, b).backward()
        with torch.no_grad():
            a2, b2 = a - 0.5 * a.grad, b - 0.5 * b.grad
            return float(torch.nn.functional.cosine_similarity(a2[0], b2[1], dim=0))

    soft = sim_after(lambda a, b: soft_nt_xent(a, b, 0.2, nb, 0.5))
    plain = sim_after(lambda a, b: nt_xent(a, b, 0.2))
    assert soft > plain


def test_knn_joint_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(2100, 5, generator=g), dim=1)   # > one similarity block
    pts = torch.nn.functional.normalize(torch.randn(2100, 7, generator=g), dim=1)
    got = knn_joint(img, pts, 4)
    rows = [0, 1, 1023, 1024, 2099]
    for r in rows:
        sims = [(float(img[r] @ img[j] + pts[r] @ pts[j]) / 2, j) for j in range(2100) if j != r]
        want = [j for _, j in sorted(sims, reverse=True)[:4]]
        assert got[r].tolist() == want
    with pytest.raises(ValueError, match="--neighbours"):
        knn_joint(img[:3], pts[:3], 3)


def test_graph_batches_pair_each_anchor_with_a_neighbour():
    rng = np.random.default_rng(0)
    knn = np.stack([rng.choice(np.delete(np.arange(40), i), 3, replace=False) for i in range(40)])
    graph = NeighbourGraph(knn)
    anchors = rng.permutation(40)[:10]
    idx = graph.batch(anchors, np.random.default_rng(1))
    assert len(idx) == 20 and len(set(idx.tolist())) == 20
    assert np.array_equal(idx[0::2], anchors)
    m = graph.mask(idx).numpy()
    assert m.shape == (20, 20) and np.array_equal(m, m.T) and not m.diagonal().any()
    for r in range(20):
        for c in range(20):
            assert m[r, c] == (idx[c] in knn[idx[r]] or idx[r] in knn[idx[c]])
    # each anchor gets one of its neighbours unless all of them are already in the batch
    taken = set(anchors.tolist())
    for a, j in zip(idx[0::2], idx[1::2], strict=True):
        assert (j in knn[a]) == any(k not in taken for k in knn[a])
        taken.add(int(j))
    with pytest.raises(ValueError, match="training shapes"):
        graph.batch(np.arange(21), np.random.default_rng(0))


def test_holdout_keeps_validation_shapes_out_of_training():
    s = make_split(9843, holdout=1000)
    base = make_split(9843)
    assert np.array_equal(s.validation, base.retrieval[:1000])
    assert np.array_equal(s.train, base.retrieval[1000:])
    assert not set(s.validation) & set(s.train) and not set(s.validation) & set(s.query)
    assert len(make_split(9843, holdout=1000, n_train=50).train) == 50
    with pytest.raises(DatasetError, match="holdout"):
        make_split(9843, holdout=8243)


def test_eval_validation_split(synth_npz):
    ds = load_dataset(synth_npz)
    data = load_eval_data(synth_npz, validation=10)
    split = make_split(len(ds), holdout=10)
    assert np.array_equal(data.query.points, ds.points[split.retrieval[:10]])
    assert np.array_equal(data.db.points, ds.points[split.retrieval[10:]])
    assert "validation" in data.split_note
    with pytest.raises(ValueError, match="--validation needs --data"):
        load_eval_data(query_data=synth_npz, db_data=synth_npz, validation=10)


def test_training_with_neighbours(synth_npz, tmp_path):
    tc = TrainConfig(batch_size=16, max_steps=3, log_every=1, neighbours=3, holdout=10, warmup_epochs=0)
    tr = Trainer(TINY, tc, synth_npz, tmp_path, show_progress=False)
    assert len(tr.train_idx) == len(make_split(96).retrieval) - 10
    summary = tr.run()
    assert summary["steps"] == 3 and len(summary["neighbour_graphs"]) == 1
    assert summary["data"]["validation"] == 10
    assert tr.graph is not None and tr.graph.knn.shape == (len(tr.train_idx), 3)
    assert all(np.isfinite(r["loss"]) for r in summary["history"])
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["train_config"]["neighbours"] == 3
    # a batch: anchors and their neighbours, with the mask the loss gets
    normals, spacing = tr._geometry()
    images, points, mask = tr.step_batch(0, normals, spacing)
    assert images.shape[0] == points.shape[0] == mask.shape[0] == 16 and mask.any()


def test_resume_keeps_the_graph_record(synth_npz, tmp_path):
    """A resumed run rebuilds the graph from the current model and its log lists every build."""
    tc = TrainConfig(batch_size=16, max_steps=2, log_every=1, neighbours=3, holdout=10, warmup_epochs=0)
    Trainer(TINY, tc, synth_npz, tmp_path, show_progress=False).run()
    tr = Trainer(TINY, dataclasses.replace(tc, max_steps=4), synth_npz, tmp_path, resume=True,
                 show_progress=False)
    assert tr.graph is None and [g["step"] for g in tr.graph_builds] == [0]
    summary = tr.run()
    assert summary["steps"] == 4 and [g["step"] for g in summary["neighbour_graphs"]] == [0, 2]
    manifest = json.loads((tmp_path / "weights" / "manifest.json").read_text())
    assert [g["step"] for g in manifest["training"]["neighbour_graphs"]] == [0, 2]


def test_graph_rebuild_skipped_near_the_budget_end(synth_npz, tmp_path):
    """A due rebuild is skipped when the budget left is under GRAPH_REBUILD_MIN_LEFT x the last build."""
    tc = TrainConfig(batch_size=16, neighbours=3, holdout=10, neighbour_refresh_epochs=1)
    tr = Trainer(TINY, tc, synth_npz, tmp_path, show_progress=False)
    normals, spacing = tr._geometry()
    tr.step_batch(0, normals, spacing, left_s=0.5)              # no graph yet: built whatever is left
    assert len(tr.graph_builds) == 1
    tr.graph_builds[-1]["seconds"] = last = 10.0
    first = tr.graph
    tr.epoch = 1                                                # due, too little left: kept
    tr.step_batch(0, normals, spacing, left_s=GRAPH_REBUILD_MIN_LEFT * last - 1)
    assert tr.graph is first and len(tr.graph_builds) == 1
    tr.epoch = 2                                                # due, enough left: rebuilt
    tr.step_batch(0, normals, spacing, left_s=GRAPH_REBUILD_MIN_LEFT * last + 1)
    assert tr.graph is not first and len(tr.graph_builds) == 2
    second = tr.graph
    tr.step_batch(1, normals, spacing)                          # not due: kept
    assert tr.graph is second
    tr.epoch = 3                                                # due, no time budget: rebuilt
    tr.step_batch(0, normals, spacing)
    assert tr.graph is not second and len(tr.graph_builds) == 3


def test_neighbour_losses_ignore_labels(synth_npz, tmp_path):
    """With neighbours on, permuting the labels leaves the graph, a step's loss and its gradients unchanged."""
    ds = load_dataset(synth_npz)
    permuted = dataclasses.replace(ds, labels=np.random.default_rng(0).permutation(ds.labels))
    results = []
    for i, data in enumerate((ds, permuted)):
        tr = Trainer(TINY, TrainConfig(batch_size=8, seed=3, neighbours=2), data, tmp_path / str(i),
                     show_progress=False)
        normals, spacing = tr._geometry()
        images, points, mask = tr.step_batch(0, normals, spacing)
        out = tr.model.forward_loss(images, points, torch.Generator().manual_seed(1), mask, 0.5)
        out.loss.backward()
        grads = [p.grad.clone() for p in tr.model.parameters() if p.grad is not None]
        results.append((tr.graph.knn.copy(), float(out.loss.detach()), grads))
    assert np.array_equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]
    assert all(torch.equal(a, b) for a, b in zip(results[0][2], results[1][2], strict=True))


def test_train_cli_neighbour_errors(synth_npz, tmp_path, capsys):
    base = ["train", "--data", str(synth_npz), "--config", "tiny", "--out", str(tmp_path), "--max-steps", "1"]
    assert main([*base, "--neighbours", "500"]) == 2
    assert "--neighbours must lie in" in capsys.readouterr().err
    assert main([*base, "--neighbours", "2", "--neighbour-alpha", "1.5"]) == 2
    assert "--neighbour-alpha" in capsys.readouterr().err
    assert main([*base, "--neighbours", "2", "--contrastive", "hard"]) == 2
    assert "ntxent" in capsys.readouterr().err
    assert main([*base, "--neighbours", "2", "--batch-size", "2"]) == 2
    assert "--batch-size >= 4" in capsys.readouterr().err
    assert main([*base, "--holdout", "100000"]) == 2
    assert "holdout" in capsys.readouterr().err
    assert not (tmp_path / "checkpoint.pt").exists()
