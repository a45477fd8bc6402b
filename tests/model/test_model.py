"""CMAH model: shapes, masking, losses against reference formulas, training step, checkpoints, weights."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from model import pointops
from model.cmah import CMAH, HashEncoder
from model.config import ABLATIONS, CPU, PAPER, TINY, CMAHConfig
from model.dataset import load_dataset
from model.encode import Encoder
from model.hash_head import binarize
from model.losses import chamfer_l2, hard_nt_xent, masked_patch_mse, nt_xent, patchify
from model.masking import random_masking
from model.pointops import farthest_point_sample, group_points
from model.train import TrainConfig, Trainer
from model.weights import MANIFEST_FILE, WEIGHTS_FILE, WeightsError, load_weights, save_weights
from service.cli import main


def _batch(cfg: CMAHConfig, b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = cfg.image.image_size
    return torch.rand(b, 3, s, s, generator=g), torch.randn(b, cfg.points.num_points, 3, generator=g)


def test_encoder_shapes_and_codes():
    torch.manual_seed(0)
    enc = HashEncoder(TINY).eval()
    images, points = _batch(TINY, 3)
    with torch.no_grad():
        hi, hp = enc.encode_images(images), enc.encode_points(points)
    for bits in TINY.bits:
        assert hi[bits].shape == (3, bits) and hp[bits].shape == (3, bits)
        assert hi[bits].abs().max() < 1 and hp[bits].abs().max() < 1          # tanh, continuous
        assert set(binarize(hi[bits]).unique().tolist()) <= {-1.0, 1.0}


def test_cls_token_and_token_counts():
    enc = HashEncoder(TINY)
    images, points = _batch(TINY, 2)
    toks = enc.image_encoder.embed(enc.normalize_images(images))
    assert toks.shape == (2, TINY.image.num_patches, TINY.image.dim)
    assert enc.image_encoder.forward_features(toks).shape == (2, 1 + TINY.image.num_patches, TINY.image.dim)
    groups, centres = enc.point_encoder.group(points)
    assert groups.shape == (2, TINY.points.num_groups, TINY.points.group_size, 3)
    assert centres.shape == (2, TINY.points.num_groups, 3)


def test_paper_config_sizes():
    assert PAPER.image.num_patches == 196 and PAPER.image.dim == 768 and PAPER.image.depth == 12
    assert PAPER.points.dim == 384 and PAPER.points.depth == 12 and PAPER.points.num_groups == 64
    assert PAPER.points.group_size == 32
    assert PAPER.decoder.image_depth == 8 and PAPER.decoder.point_depth == 4
    assert PAPER.image_mask_ratio == 0.75 and PAPER.point_mask_ratio == 0.6


@pytest.mark.parametrize("n,ratio,expect_masked", [(196, 0.75, 147), (64, 0.6, 38), (16, 0.75, 12)])
def test_masking_ratio_and_partition(n, ratio, expect_masked):
    keep, mask = random_masking(5, n, ratio, generator=torch.Generator().manual_seed(1))
    assert mask.shape == (5, expect_masked) and keep.shape == (5, n - expect_masked)
    for k, m in zip(keep, mask, strict=True):
        assert sorted(torch.cat([k, m]).tolist()) == list(range(n))           # a partition
    assert not torch.equal(mask[0], mask[1])                                   # random per sample


def test_forward_encoder_masked_views_use_visible_tokens():
    model = CMAH(TINY)
    images, points = _batch(TINY, 2)
    enc = model.forward_encoder(images, points, torch.Generator().manual_seed(0))
    n_img_vis = TINY.image.num_patches - round(TINY.image_mask_ratio * TINY.image.num_patches)
    n_pt_vis = TINY.points.num_groups - round(TINY.point_mask_ratio * TINY.points.num_groups)
    assert enc["img_vis"].shape[1] == 1 + n_img_vis
    assert enc["pt_vis"].shape[1] == 1 + n_pt_vis
    assert enc["img_full"].shape[1] == 1 + TINY.image.num_patches


def _reference_loss(x: torch.Tensor, pos: torch.Tensor, negs: list[torch.Tensor], tau: float) -> float:
    """Eq. (1) of the paper, written out: -log(e^{s+/t} / (e^{s+/t} + sum_neg e^{s-/t}))."""
    def sim(a, b):
        return float(torch.dot(a, b) / (a.norm() * b.norm()))
    num = math.exp(sim(x, pos) / tau)
    den = num + sum(math.exp(sim(x, n) / tau) for n in negs)
    return -math.log(num / den)


def test_nt_xent_matches_paper_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    tau = 0.3
    total = 0.0
    for i in range(5):
        # anchor a_i: positive b_i; negatives: every other b_j and every other a_j (both modalities)
        negs = [b[j] for j in range(5) if j != i] + [a[j] for j in range(5) if j != i]
        total += _reference_loss(a[i], b[i], negs, tau)
        negs = [a[j] for j in range(5) if j != i] + [b[j] for j in range(5) if j != i]
        total += _reference_loss(b[i], a[i], negs, tau)
    assert float(nt_xent(a, b, tau)) == pytest.approx(total / 10, rel=1e-5)


def test_hard_negative_loss_reduces_to_nt_xent_and_reweights():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    assert float(hard_nt_xent(a, b, 0.5, beta=0.0, tau_plus=0.0)) == pytest.approx(float(nt_xent(a, b, 0.5)),
                                                                                   rel=1e-5)
    # beta > 0 up-weights the most similar negatives, which can only raise the negative term
    assert float(hard_nt_xent(a, b, 0.5, beta=2.0, tau_plus=0.0)) >= float(nt_xent(a, b, 0.5)) - 1e-6


def test_chamfer_matches_direct_computation():
    g = torch.Generator().manual_seed(2)
    p, t = torch.randn(2, 5, 3, generator=g), torch.randn(2, 7, 3, generator=g)
    ref = 0.0
    for bi in range(2):
        d = [[float(((p[bi, i] - t[bi, j]) ** 2).sum()) for j in range(7)] for i in range(5)]
        ref += np.mean([min(r) for r in d]) + np.mean([min(d[i][j] for i in range(5)) for j in range(7)])
    assert float(chamfer_l2(p, t)) == pytest.approx(ref / 2, rel=1e-5)
    assert float(chamfer_l2(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_patchify_matches_patch_order_and_mse():
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    patches = patchify(img, 4)                                             # 4 patches of 4x4x3
    assert patches.shape == (2, 4, 48)
    # patch 1 is the top-right block (row-major), channel-last within the patch
    expect = img[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[0, 1], expect)
    mask_idx = torch.tensor([[1, 3], [0, 2]])
    target = torch.stack([patches[0, [1, 3]], patches[1, [0, 2]]])
    assert float(masked_patch_mse(target, img, mask_idx, 4, norm_pix=False)) == 0.0


def test_fps_spreads_and_knn_groups_are_local():
    pts = torch.rand(1, 200, 3)
    idx = farthest_point_sample(pts, 10)
    assert idx.shape == (1, 10) and len(set(idx[0].tolist())) == 10
    groups, centres = group_points(pts, 10, 8)
    # each group's nearest member is its centre itself (distance 0 after centring)
    assert torch.allclose(groups.norm(dim=-1).min(dim=-1).values, torch.zeros(1, 10), atol=1e-6)


def _fps_reference(cloud: np.ndarray, m: int) -> list[int]:
    """Farthest point sampling of one cloud [N, 3], written out point by point (numpy, float32)."""
    chosen = [0]
    dist = np.full(len(cloud), np.inf, dtype=np.float32)
    for _ in range(1, m):
        diff = cloud - cloud[chosen[-1]]
        dist = np.minimum(dist, (diff[:, 0] * diff[:, 0] + diff[:, 1] * diff[:, 1]) + diff[:, 2] * diff[:, 2])
        chosen.append(int(np.argmax(dist)))                      # first maximum, as torch.argmax
    return chosen


@pytest.mark.parametrize("fps", [pointops._fps_planar, pointops._fps_batched], ids=["planar", "batched"])
def test_fps_paths_match_a_reference(fps):
    """Both FPS paths (CPU planar, GPU batched) pick the reference's indices, ties included: a cloud
    on a small integer grid has many equal distances, where the first maximum must win."""
    g = torch.Generator().manual_seed(1)
    clouds = torch.cat([torch.randn(3, 300, 3, generator=g),
                        torch.randint(0, 4, (2, 300, 3), generator=g).float()])
    got = fps(clouds, 24)
    for b, cloud in enumerate(clouds.numpy()):
        assert got[b].tolist() == _fps_reference(cloud, 24), b


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_ablation_switches_run(ablation):
    cfg = TINY.with_loss(**ABLATIONS[ablation])
    out = CMAH(cfg).forward_loss(*_batch(cfg))
    assert torch.isfinite(out.loss)
    assert ("rec_2d" in out.parts) == cfg.loss.reconstruction


def test_fusion_without_reconstruction_is_refused():
    with pytest.raises(ValueError, match="fusion needs reconstruction"):
        CMAH(TINY.with_loss(reconstruction=False, fusion=True))


def test_training_steps_lower_the_loss(synth_npz, tmp_path):
    torch.manual_seed(0)
    ds = load_dataset(synth_npz)
    tr = Trainer(TINY, TrainConfig(batch_size=16, lr=2e-3, warmup_epochs=0), ds, tmp_path, show_progress=False)
    normals, spacing = tr._geometry()
    images, points = tr.batch(np.arange(16), normals, spacing)

    def loss() -> float:
        with torch.no_grad():
            return float(tr.model.forward_loss(images, points, torch.Generator().manual_seed(5)).loss)

    before = loss()
    for _ in range(8):
        out = tr.model.forward_loss(images, points, torch.Generator().manual_seed(5))
        tr.opt.zero_grad()
        out.loss.backward()
        tr.opt.step()
    assert loss() < before


def test_labels_never_reach_the_loss(synth_npz, tmp_path):
    """Permuting the labels leaves a training step's loss and gradients unchanged."""
    ds = load_dataset(synth_npz)
    permuted = dataclasses.replace(ds, labels=np.random.default_rng(0).permutation(ds.labels))
    assert not np.array_equal(permuted.labels, ds.labels)
    results = []
    for i, data in enumerate((ds, permuted)):
        tr = Trainer(TINY, TrainConfig(batch_size=8, seed=3), data, tmp_path / str(i), show_progress=False)
        normals, spacing = tr._geometry()
        images, points = tr.batch(np.arange(8), normals, spacing)
        out = tr.model.forward_loss(images, points, torch.Generator().manual_seed(1))
        out.loss.backward()
        grads = [p.grad.clone() for p in tr.model.parameters() if p.grad is not None]
        results.append((float(out.loss.detach()), grads))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1], strict=True))


def test_checkpoint_resume_and_exported_weights(synth_npz, tmp_path):
    tc = TrainConfig(batch_size=16, max_steps=2, log_every=1)
    s1 = Trainer(TINY, tc, synth_npz, tmp_path, show_progress=False).run()
    assert s1["steps"] == 2 and (tmp_path / "checkpoint.pt").is_file()
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["steps"] == 2 and log["history"]
    tc2 = dataclasses.replace(tc, max_steps=3)
    tr = Trainer(TINY, tc2, synth_npz, tmp_path, resume=True, show_progress=False)
    assert tr.step == 2
    state_before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    s2 = tr.run()
    assert s2["steps"] == 3
    assert any(not torch.equal(state_before[k], v) for k, v in tr.model.state_dict().items())
    # the exported weights load and encode like the trained model (fp16 rounding aside)
    enc = load_weights(tmp_path / "weights")
    images, points = _batch(TINY, 2)
    with torch.no_grad():
        a = tr.model.encoder.eval().encode_points(points)[64]
        b = enc.encode_points(points)[64]
    assert torch.allclose(a, b, atol=2e-2)


def test_resume_refuses_a_different_config(synth_npz, tmp_path):
    Trainer(TINY, TrainConfig(batch_size=16, max_steps=1), synth_npz, tmp_path, show_progress=False).run()
    with pytest.raises(ValueError, match="different model config"):
        Trainer(TINY.with_loss(temperature=0.5), TrainConfig(batch_size=16), synth_npz, tmp_path, resume=True,
                show_progress=False)


def test_weights_loader_checks_sha_and_config(tiny_weights, tmp_path):
    enc = load_weights(tiny_weights)
    assert enc.cfg == TINY
    with pytest.raises(WeightsError, match="does not match"):
        load_weights(tiny_weights, expect_config=CPU)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in (WEIGHTS_FILE, MANIFEST_FILE):
        (broken / name).write_bytes((tiny_weights / name).read_bytes())
    data = bytearray((broken / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (broken / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_weights(broken)
    with pytest.raises(WeightsError, match="no manifest.json"):
        load_weights(tmp_path)


def test_weights_are_fp16_and_inference_only(tiny_weights):
    from safetensors.torch import load_file

    state = load_file(str(tiny_weights / WEIGHTS_FILE))
    assert all(v.dtype == torch.float16 for v in state.values())
    assert not any("decoder" in k or "fusion" in k for k in state)


def test_encode_is_deterministic(tiny_weights, synth_npz):
    enc = Encoder.from_weights(tiny_weights, "cpu")
    pts = load_dataset(synth_npz).points[:3]
    a = enc.encode_point_dataset(pts, progress=False)
    b = enc.encode_point_dataset(pts, progress=False)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k])
    assert a["points_64"].shape == (3, 8) and a["image_16"].dtype == np.uint8


def test_save_weights_round_trip(tmp_path):
    torch.manual_seed(1)
    model = HashEncoder(TINY).eval()
    save_weights(model, tmp_path)
    loaded = load_weights(tmp_path)
    images, points = _batch(TINY, 2)
    with torch.no_grad():
        for bits in TINY.bits:   # fp16 storage: continuous outputs agree to fp16 precision
            assert torch.allclose(model.encode_images(images)[bits], loaded.encode_images(images)[bits], atol=1e-2)
            assert torch.allclose(model.encode_points(points)[bits], loaded.encode_points(points)[bits], atol=1e-2)


def test_contrastive_learning_does_not_collapse(synth_npz, tmp_path):
    """Over-fitting one batch with CL-F only must get well below chance, ln(2B - 1).

    A collapsed model (every input mapped to the same code) sits exactly at chance; this is what the
    plain FC-ReLU-FC-tanh head did from scratch (see model/hash_head.py)."""
    torch.manual_seed(0)
    cfg = TINY.with_loss(cl_masked=False, reconstruction=False, fusion=False)
    tr = Trainer(cfg, TrainConfig(batch_size=16), load_dataset(synth_npz), tmp_path, show_progress=False)
    normals, spacing = tr._geometry()
    images, points = tr.batch(np.arange(0, 96, 6), normals, spacing)
    opt = torch.optim.AdamW(tr.model.parameters(), lr=1e-3)
    for _ in range(60):
        out = tr.model.forward_loss(images, points)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.parts["contrastive"] < 0.6 * math.log(2 * 16 - 1)


def test_masked_views_do_not_update_inference_statistics():
    model = CMAH(TINY).train()
    head = model.encoder.image_hash.heads["64"]
    before = head.bn.running_mean.clone()
    head(torch.randn(8, TINY.image.dim), update_stats=False)
    assert torch.equal(head.bn.running_mean, before)
    head(torch.randn(8, TINY.image.dim))
    assert not torch.equal(head.bn.running_mean, before)


def test_point_tokenizer_chunked_inference_equals_one_pass():
    from model.config import TINY
    from model.encoders import MiniPointNet

    torch.manual_seed(0)
    tok = MiniPointNet(TINY.points.dim, TINY.points.pointnet_widths).eval()
    tok.inference_chunk_groups = 32                      # 2 clouds of 16 groups per chunk
    groups = torch.randn(7, 16, 8, 3)
    with torch.no_grad():
        chunked = tok(groups)
        whole = tok.embed(groups)
    assert chunked.shape == whole.shape == (7, 16, TINY.points.dim)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tok(groups).detach(), whole, rtol=1e-5, atol=1e-6)  # autograd: one pass


def test_init_from_takes_the_weights_but_not_the_schedule(synth_npz, tmp_path):
    src = tmp_path / "src"
    Trainer(TINY, TrainConfig(batch_size=16, max_steps=2), synth_npz, src, show_progress=False).run()
    ck = torch.load(src / "checkpoint.pt", weights_only=False)
    tc = TrainConfig(batch_size=16, max_steps=1, init_from=str(src / "checkpoint.pt"), seed=1)
    tr = Trainer(TINY, tc, synth_npz, tmp_path / "dst", show_progress=False)
    assert tr.step == 0 and tr.epoch == 0 and tr.history == []
    assert all(torch.equal(v, ck["model"][k]) for k, v in tr.model.state_dict().items())
    assert not tr.opt.state_dict()["state"]                                     # fresh optimiser
    # a later --resume of the new run continues the new run, not the source
    tr.run()
    tr2 = Trainer(TINY, dataclasses.replace(tc, max_steps=2), synth_npz, tmp_path / "dst", resume=True,
                  show_progress=False)
    assert tr2.step == 1
    # the objective may differ (a recipe's stages switch losses; model.recipe), the architecture may not
    Trainer(TINY.with_loss(temperature=0.5), tc, synth_npz, tmp_path / "other", show_progress=False)
    with pytest.raises(ValueError, match="different model config"):
        Trainer(dataclasses.replace(TINY, hash_hidden=64), tc, synth_npz, tmp_path / "wider", show_progress=False)


def test_train_cli_init_from_errors(synth_npz, tmp_path, capsys):
    assert main(["train", "--data", str(synth_npz), "--config", "tiny", "--out", str(tmp_path / "r"),
                 "--init-from", str(tmp_path / "missing.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_init_from_weights_dir_takes_encoders_and_matching_heads(synth_npz, tiny_weights, tmp_path):
    src = load_weights(tiny_weights)
    tc = TrainConfig(batch_size=16, max_steps=1, init_from=str(tiny_weights), seed=3)
    tr = Trainer(TINY, tc, synth_npz, tmp_path / "a", show_progress=False)
    enc = tr.model.encoder
    for name in ("image_encoder", "point_encoder", "image_hash", "point_hash"):
        got, want = getattr(enc, name).state_dict(), getattr(src, name).state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), name
    fresh = Trainer(TINY, dataclasses.replace(tc, init_from=None), synth_npz, tmp_path / "b",
                    show_progress=False)
    # fusion and decoders are not in inference weights: they start as a fresh run's (same seed)
    for name in ("image_fusion", "point_fusion", "image_decoder", "point_decoder"):
        got, want = getattr(tr.model, name).state_dict(), getattr(fresh.model, name).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), name
    assert tr.run()["steps"] == 1

    # heads of another kind (refit "normed" heads) are not taken: the run's own kind starts fresh
    normed = dataclasses.replace(TINY, hash_head="normed")
    save_weights(HashEncoder(normed), tmp_path / "normed")
    tr = Trainer(TINY, dataclasses.replace(tc, init_from=str(tmp_path / "normed")), synth_npz,
                 tmp_path / "c", show_progress=False)
    src = load_weights(tmp_path / "normed")
    got = tr.model.encoder.point_encoder.state_dict()
    assert all(torch.equal(v, src.point_encoder.state_dict()[k]) for k, v in got.items())
    got, want = tr.model.encoder.image_hash.state_dict(), fresh.model.encoder.image_hash.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)

    # an encoder of another size is refused by name
    wide = dataclasses.replace(TINY, points=dataclasses.replace(TINY.points, dim=TINY.points.dim * 2))
    save_weights(HashEncoder(wide), tmp_path / "wide")
    with pytest.raises(ValueError, match="points encoder"):
        Trainer(TINY, dataclasses.replace(tc, init_from=str(tmp_path / "wide")), synth_npz, tmp_path / "d",
                show_progress=False)


def test_train_cli_init_from_weights_dir(synth_npz, tiny_weights, tmp_path, capsys):
    assert main(["train", "--data", str(synth_npz), "--config", "tiny", "--out", str(tmp_path / "r"),
                 "--init-from", str(tiny_weights), "--max-steps", "1", "--batch-size", "16",
                 "--quiet"]) == 0
    assert "1 steps" in capsys.readouterr().out
    bad = tmp_path / "notweights"
    bad.mkdir()
    assert main(["train", "--data", str(synth_npz), "--config", "tiny", "--out", str(tmp_path / "s"),
                 "--init-from", str(bad)]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_parallel_chunks_encode_like_one_call(tiny_weights, synth_npz):
    """Encoder.set_parallel (the service's CPU mode) splits a batch over threads: same codes and features
    as one call, for batches smaller and larger than the number of workers."""
    enc = Encoder.from_weights(tiny_weights, device="cpu")
    pts = enc.points_tensor(load_dataset(synth_npz).points[:7])
    imgs = enc.render_points(pts)
    want = (enc.encode_point_tensors(pts), enc.encode_image_tensors(imgs), enc.point_features(pts),
            enc.image_features(imgs))
    enc.set_parallel(3)
    assert enc.workers == 3
    for n in (1, 2, 7):
        got = (enc.encode_point_tensors(pts[:n]), enc.encode_image_tensors(imgs[:n]), enc.point_features(pts[:n]),
               enc.image_features(imgs[:n]))
        torch.testing.assert_close(enc.render_points(pts[:n]), imgs[:n])
        for b in enc.bits:
            assert np.array_equal(got[0][b], want[0][b][:n]) and np.array_equal(got[1][b], want[1][b][:n])
        np.testing.assert_allclose(got[2], want[2][:n], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[3], want[3][:n], rtol=1e-4, atol=1e-5)
    enc.set_parallel(1)
    assert enc.workers == 1 and enc._pool is None
    with pytest.raises(ValueError):
        enc.set_parallel(0)
