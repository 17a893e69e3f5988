"""CLIP and SigLIP losses against hand computations (single process)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kontrast.train.losses import MAX_LOGIT_SCALE, ClipLoss, SigLipLoss, build_loss, clamp_logit_scale

torch.set_num_threads(1)


def _features(n: int = 4, d: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_clip_loss_matches_hand_computation() -> None:
    img, txt = _features()
    scale = torch.tensor(10.0)
    n = img.shape[0]
    # -log softmax of the diagonal, row-wise (image->text) and column-wise (text->image), averaged
    expected_i2t, expected_t2i = 0.0, 0.0
    for i in range(n):
        row = [scale.item() * float(img[i] @ txt[j]) for j in range(n)]
        col = [scale.item() * float(txt[i] @ img[j]) for j in range(n)]
        expected_i2t += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        expected_t2i += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    expected = (expected_i2t + expected_t2i) / (2 * n)
    assert abs(ClipLoss()(img, txt, scale).item() - expected) < 1e-5


def test_clip_loss_perfect_alignment_is_small_and_symmetric() -> None:
    eye = torch.eye(3, 8)
    loss = ClipLoss()(eye, eye, torch.tensor(100.0))
    assert loss.item() < 1e-6
    a, b = _features(seed=1)
    assert torch.allclose(ClipLoss()(a, b, torch.tensor(5.0)), ClipLoss()(b, a, torch.tensor(5.0)))
    assert ClipLoss().grad_multiplier == 1.0


def test_siglip_loss_matches_hand_computation() -> None:
    img, txt = _features(n=3, d=4, seed=2)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            logit = scale.item() * float(img[i] @ txt[j]) + bias.item()
            total += -math.log(1.0 / (1.0 + math.exp(-z * logit)))
    assert abs(SigLipLoss()(img, txt, scale, bias).item() - total / n) < 1e-4


def test_siglip_needs_bias_and_build_loss_names() -> None:
    img, txt = _features()
    try:
        SigLipLoss()(img, txt, torch.tensor(10.0), None)
    except ValueError as exc:
        assert "logit_bias" in str(exc)
    else:
        raise AssertionError("SigLipLoss without a bias must fail")
    assert isinstance(build_loss("clip"), ClipLoss)
    assert isinstance(build_loss("siglip"), SigLipLoss)


def test_logit_scale_clamped_to_ln100() -> None:
    model = torch.nn.Module()
    model.logit_scale = torch.nn.Parameter(torch.tensor(7.0))
    clamp_logit_scale(model)
    assert abs(model.logit_scale.item() - MAX_LOGIT_SCALE) < 1e-6
    assert abs(model.logit_scale.exp().item() - 100.0) < 1e-3


def test_local_loss_labels_offset_by_rank() -> None:
    loss = ClipLoss(local_loss=True, rank=2, world_size=4)
    assert loss.labels(3, torch.device("cpu")).tolist() == [6, 7, 8]
    assert ClipLoss(world_size=2).grad_multiplier == 2.0
    assert ClipLoss(gather_with_grad=True, local_loss=True, world_size=2).grad_multiplier == 1.0
