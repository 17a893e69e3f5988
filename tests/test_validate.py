"""Validation during training: the metric's tensors live on the logits' device, SigLIP runs are scored with
their own sigmoid loss and logit bias, and images are preprocessed as the model's record says."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kontrast.train.validate import contrastive_metrics

CAPTIONS = ["a cat", "a dog", "a car", "a cat"]


def _trainer(device: str, loss: str, bias: float | None):
    gen = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    txt = F.normalize(img + 0.3 * torch.randn(4, 8, generator=gen), dim=-1)

    def encode(images, captions, grad):
        rows = images[:, 0, 0, 0].long()  # each fake image carries its row number
        return img[rows].to(device), txt[rows].to(device)

    model = SimpleNamespace(logit_scale=torch.nn.Parameter(torch.tensor(2.0, device=device)),
                            logit_bias=None if bias is None else torch.nn.Parameter(torch.tensor(bias, device=device)))
    images = torch.arange(4).float().view(4, 1, 1, 1).expand(4, 3, 2, 2)
    trainer = SimpleNamespace(encode=encode, model=model, device=device, cfg=SimpleNamespace(loss=loss, caption_key=None),
                              _val_cache=(images, CAPTIONS))
    return trainer, img, txt


def test_metric_tensors_follow_the_logits_device(monkeypatch):
    """On a device other than the CPU (here ``meta``), labels and masks must be made on that device: the old
    code built them on the CPU, which crashes on a GPU."""
    trainer, _, _ = _trainer("meta", "clip", None)
    seen = []

    def fake_float(tensor):  # meta tensors have no values: record where each metric lives instead
        seen.append(tensor.device.type)
        return 0.0

    monkeypatch.setattr(torch.Tensor, "__float__", fake_float)
    out = contrastive_metrics(trainer, spec=None)
    assert set(out) == {"val_loss", "val_i2t_r1", "val_i2t_r5", "val_t2i_r1", "val_t2i_r5"}
    assert seen == ["meta"] * 5


def test_siglip_validation_uses_the_sigmoid_loss_and_the_bias():
    trainer, img, txt = _trainer("cpu", "siglip", -3.0)
    out = contrastive_metrics(trainer, spec=None)
    logits = torch.tensor(2.0).exp() * img @ txt.T - 3.0  # [4, 4]
    signs = 2 * torch.eye(4) - 1
    expected = -F.logsigmoid(signs * logits).sum() / 4
    assert out["val_loss"] == pytest.approx(float(expected), rel=1e-5)
    clip_trainer, _, _ = _trainer("cpu", "clip", None)
    clip = contrastive_metrics(clip_trainer, spec=None)
    labels = torch.arange(4)
    plain = torch.tensor(2.0).exp() * img @ txt.T
    assert clip["val_loss"] == pytest.approx(float((F.cross_entropy(plain, labels) + F.cross_entropy(plain.T, labels)) / 2),
                                             rel=1e-5)
    # "a cat" twice: retrieving either copy counts as a hit
    same = torch.tensor([[a == b for b in CAPTIONS] for a in CAPTIONS])
    assert clip["val_i2t_r1"] == pytest.approx(float(same.gather(1, plain.argmax(1, keepdim=True)).float().mean()))
