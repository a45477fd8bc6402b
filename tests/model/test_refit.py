"""Hash-head refit on frozen features (model.refit, `cmah refit-heads`) and the "normed" head kind."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from model.cmah import HashEncoder
from model.config import TINY, CMAHConfig
from model.dataset import load_dataset
from model.djsrh import DJSRHConfig, DJSRHHasher
from model.encode import Encoder, pack_codes
from model.hash_head import MultiHashHead
from model.refit import PairFeatures, RefitConfig, fit_heads, pair_features
from model.weights import MANIFEST_FILE, WeightsError, load_weights, save_weights
from service.cli import main


def test_normed_head_matches_its_formula():
    torch.manual_seed(0)
    head = MultiHashHead(6, 5, (16,), kind="normed").eval()
    mean, std = torch.randn(6), torch.rand(6) + 0.5
    head.norm.set_stats(mean, std)
    x = torch.randn(4, 6)
    h = head.heads["16"]
    z = (x - mean) / std
    z = z / z.norm(dim=1, keepdim=True)
    ref = torch.tanh(torch.relu(z @ h.fc1.weight.T + h.fc1.bias) @ h.fc2.weight.T + h.fc2.bias)
    assert torch.allclose(head(x)[16], ref, atol=1e-6)


def test_unknown_head_kind_is_refused(tiny_weights, tmp_path):
    with pytest.raises(ValueError, match="unknown hash head kind"):
        MultiHashHead(4, 4, (16,), kind="mystery")
    bad = tmp_path / "bad"
    save_weights(HashEncoder(TINY), bad)
    manifest = json.loads((bad / MANIFEST_FILE).read_text())
    manifest["config"]["hash_head"] = "mystery"
    (bad / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="unknown hash head kind"):
        load_weights(bad)


def test_old_manifests_without_head_kind_load_as_bn(tiny_weights, tmp_path):
    d = dict(TINY.to_dict())
    del d["hash_head"]
    assert CMAHConfig.from_dict(d) == TINY and TINY.hash_head == "bn"


@pytest.fixture(scope="module")
def tiny_encoder(tiny_weights) -> Encoder:
    return Encoder.from_weights(tiny_weights, "cpu")


def test_pair_features_rows_and_pairing(tiny_encoder, synth_npz):
    pts = load_dataset(synth_npz).points[:10]
    f = pair_features(tiny_encoder, pts, views=2, seed=0, batch_size=4, progress=False)
    assert f.image.shape == (30, TINY.image.dim) and f.points.shape == (30, TINY.points.dim)
    assert f.shape.tolist() == list(range(10)) * 3
    # row 0..9: canonical renders (what the gallery stores), the same features as the encoder's own path
    canon = tiny_encoder.image_features(tiny_encoder.render_points(tiny_encoder.points_tensor(pts)))
    assert np.allclose(f.image[:10], canon, atol=1e-5)
    assert not np.allclose(f.image[10:20], f.image[:10], atol=1e-3)            # random views differ
    assert np.array_equal(f.points[:10], f.points[10:20])                        # paired with the same shape


def test_fitted_heads_give_the_djsrh_codes(tiny_encoder, synth_npz):
    """Independent reference: the DJSRH hasher fitted on the same features with the same seed."""
    pts = load_dataset(synth_npz).points[:48]
    feats = pair_features(tiny_encoder, pts, views=1, seed=0, batch_size=16, progress=False)
    cfg = RefitConfig(views=1, hidden=24, seed=3, djsrh=DJSRHConfig(epochs=3, batch_size=32))
    model = fit_heads(tiny_encoder.model, feats, cfg)
    assert model.cfg.hash_head == "normed" and model.cfg.hash_hidden == 24
    # encoders untouched
    for k, v in tiny_encoder.model.state_dict().items():
        if k.startswith(("image_encoder.", "point_encoder.")):
            assert torch.equal(model.state_dict()[k], v)
    enc = Encoder(model, "cpu")
    cloud = enc.points_tensor(pts)
    images = enc.render_points(cloud)
    for i, bits in enumerate(TINY.bits):
        ref = DJSRHHasher(bits, dataclasses.replace(cfg.djsrh, hidden=24), seed=cfg.seed + i)
        ref.fit(feats.image, feats.points)
        assert np.array_equal(enc.encode_point_tensors(cloud)[bits],
                              ref.encode("points", tiny_encoder.point_features(cloud)))
        assert np.array_equal(enc.encode_image_tensors(images)[bits],
                              ref.encode("image", tiny_encoder.image_features(images)))


def test_fit_heads_refuses_mismatched_features(tiny_encoder):
    feats = PairFeatures(np.zeros((4, 3), np.float32), np.zeros((5, 3), np.float32), np.arange(4))
    with pytest.raises(ValueError):
        fit_heads(tiny_encoder.model, feats, RefitConfig(djsrh=DJSRHConfig(epochs=1)))


def test_refit_heads_cli_writes_loadable_weights(tiny_weights, synth_npz, tmp_path, capsys):
    out = tmp_path / "refit"
    rc = main(["refit-heads", "--data", str(synth_npz), "--weights", str(tiny_weights), "--out", str(out),
               "--epochs", "2", "--hidden", "16", "--views", "1", "--quiet", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["config"]["hash_head"] == "normed" and manifest["config"]["hash_hidden"] == 16
    refit = manifest["head_refit"]
    n = len(load_dataset(synth_npz))
    assert refit["data"]["train"] < n and refit["data"]["feature_rows"] == 2 * refit["data"]["train"]
    assert manifest["training"] == json.loads((tiny_weights / MANIFEST_FILE).read_text())["training"]
    model = load_weights(out)
    assert model.cfg.hash_head == "normed"
    # stored statistics are those of the features, not the defaults
    assert not torch.equal(model.image_hash.norm.std, torch.ones_like(model.image_hash.norm.std))
    cloud = tmp_path / "cloud.xyz"
    np.savetxt(cloud, load_dataset(synth_npz).points[0])
    assert main(["encode", str(cloud), "--weights", str(out), "--bits", "32"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()[-1]) == 8


def test_refit_heads_cli_bad_input(tiny_weights, synth_npz, tmp_path, capsys):
    assert main(["refit-heads", "--data", str(tmp_path / "none.npz"), "--weights", str(tiny_weights),
                 "--out", str(tmp_path / "o")]) == 2
    assert "no such dataset file" in capsys.readouterr().err
    assert main(["refit-heads", "--data", str(synth_npz), "--weights", str(tiny_weights),
                 "--out", str(tiny_weights)]) == 2
    assert "must differ" in capsys.readouterr().err
    assert main(["refit-heads", "--data", str(synth_npz), "--weights", str(tiny_weights),
                 "--out", str(tmp_path / "o"), "--views", "-1"]) == 2
    assert not (tmp_path / "o").exists()


def test_pack_codes_of_normed_head_match_sign():
    """Sign at inference: the packed code is bit 1 exactly where the head's output is >= 0."""
    torch.manual_seed(1)
    head = MultiHashHead(TINY.image.dim, 8, (16,), kind="normed").eval()
    x = torch.randn(5, TINY.image.dim)
    with torch.no_grad():
        h = head(x)[16]
    assert np.array_equal(pack_codes(h), np.packbits((h >= 0).numpy(), axis=1))


def test_head_overrides_give_each_length_its_kind_and_width():
    cfg = dataclasses.replace(TINY, hash_head="normed", hash_hidden=12, head_overrides=((16, "bn", 7),))
    assert cfg.head_spec(16) == ("bn", 7) and cfg.head_spec(32) == ("normed", 12)
    assert CMAHConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg      # survives the manifest
    model = HashEncoder(cfg).eval()
    heads = model.image_hash.heads
    assert heads["16"].fc1.out_features == 7 and hasattr(heads["16"], "bn")
    assert heads["32"].fc1.out_features == 12 and not hasattr(heads["32"], "bn")
    # the trained head sees the raw feature, the re-fitted ones the standardised + L2-normalised one
    torch.nn.init.normal_(model.image_hash.norm.mean)
    x = torch.randn(3, TINY.image.dim)
    with torch.no_grad():
        out = model.image_hash(x)
        assert torch.equal(out[16], heads["16"](x))
        assert torch.equal(out[32], heads["32"](model.image_hash.norm(x)))
    with pytest.raises(ValueError, match="not one of the code lengths"):
        MultiHashHead(4, 4, (16, 32), overrides=((64, "bn", 4),))
    with pytest.raises(ValueError, match="unknown hash head kind"):
        MultiHashHead(4, 4, (16, 32), overrides=((16, "mystery", 4),))


def test_malformed_head_overrides_in_a_manifest_are_a_weights_error(tmp_path):
    bad = tmp_path / "bad"
    save_weights(HashEncoder(TINY), bad)
    manifest = json.loads((bad / MANIFEST_FILE).read_text())
    manifest["config"]["head_overrides"] = [[16, "bn"]]
    (bad / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="manifest config is invalid"):
        load_weights(bad)


def test_partial_refit_keeps_the_other_trained_heads(tiny_encoder, synth_npz, tmp_path):
    pts = load_dataset(synth_npz).points[:48]
    feats = pair_features(tiny_encoder, pts, seed=0, batch_size=16, progress=False)
    cfg = RefitConfig(hidden=24, seed=3, djsrh=DJSRHConfig(epochs=3, batch_size=32))
    full = Encoder(fit_heads(tiny_encoder.model, feats, cfg), "cpu")
    part = fit_heads(tiny_encoder.model, feats, cfg, bits=[32])
    assert part.cfg.hash_head == "normed" and part.cfg.hash_hidden == 24
    assert part.cfg.head_overrides == ((16, "bn", TINY.hash_hidden), (64, "bn", TINY.hash_hidden))
    save_weights(part, tmp_path / "w")
    loaded = load_weights(tmp_path / "w")                                # the config survives the manifest
    assert loaded.cfg == part.cfg and loaded.state_dict().keys() == part.state_dict().keys()
    enc = Encoder(part, "cpu")
    cloud = enc.points_tensor(pts)
    images = enc.render_points(cloud)
    for codes, source, refit in ((enc.encode_point_tensors(cloud), tiny_encoder.encode_point_tensors(cloud),
                                  full.encode_point_tensors(cloud)),
                                 (enc.encode_image_tensors(images), tiny_encoder.encode_image_tensors(images),
                                  full.encode_image_tensors(images))):
        for b in (16, 64):                                            # kept: the source's codes
            assert np.array_equal(codes[b], source[b])
        assert np.array_equal(codes[32], refit[32])                   # the same fit as re-fitting everything
        assert not np.array_equal(codes[32], source[32])
    with pytest.raises(ValueError, match="cannot be kept"):
        fit_heads(part, feats, cfg, bits=[16])
    with pytest.raises(ValueError, match="must be some of"):
        fit_heads(tiny_encoder.model, feats, cfg, bits=[])


def test_refit_heads_cli_bits(tiny_weights, synth_npz, tmp_path, capsys):
    out = tmp_path / "refit"
    assert main(["refit-heads", "--data", str(synth_npz), "--weights", str(tiny_weights), "--out", str(out),
                 "--epochs", "2", "--hidden", "16", "--bits", "64", "--quiet", "--device", "cpu"]) == 0
    assert "kept the trained [16, 32]-bit heads" in capsys.readouterr().out
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["head_refit"]["bits"] == [64] and manifest["head_refit"]["kept_bits"] == [16, 32]
    assert load_weights(out).cfg.head_spec(16) == ("bn", TINY.hash_hidden)
    again = tmp_path / "again"
    assert main(["refit-heads", "--data", str(synth_npz), "--weights", str(out), "--out", str(again),
                 "--epochs", "1", "--bits", "16", "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "the 64-bit heads" in err and "re-fit them as well" in err and not again.exists()
