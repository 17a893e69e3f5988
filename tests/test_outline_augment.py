"""Outlined-drawing augmentation (``aug_outline``): dark strokes along colour edges, none in flat fills or soft
shading, 1 or 2 pixels wide, seeded, and wired into both training input pipelines."""

from __future__ import annotations

import pytest
import torch

from kontrast.data.outline import draw_outlines, edge_mask, random_outlines
from kontrast.data.stream import AugmentConfig, SampleDecoder
from kontrast.errors import KontrastError
from kontrast.train import TrainConfig
from kontrast.train.cached_data import BatchAugment
from kontrast.train.config import validate

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def red_square(n: int = 1, side: int = 32) -> torch.Tensor:
    """``[n, 3, side, side]`` white pictures with a red square over rows/columns 8..23."""
    x = torch.ones(n, 3, side, side)
    x[:, 1:, 8:24, 8:24] = 0.0
    return x


def test_lines_follow_the_border_of_a_shape_and_nothing_else():
    x = red_square()
    out = draw_outlines(x, 0.2, 1)
    dark = out.sum(1)[0] < 0.5  # [32, 32]: black pixels (red is 1.0, white 3.0)
    assert dark[8, 8:24].all() and dark[23, 8:24].all() and dark[8:24, 8].all()  # the square's border rows/columns
    assert not dark[12:20, 12:20].any() and not dark[:6].any() and not dark[:, 26:].any()  # fill and background
    assert torch.equal(out[0, :, 14, 14], x[0, :, 14, 14]) and torch.equal(out[0, :, 2, 2], x[0, :, 2, 2])


def test_flat_pictures_and_soft_shading_get_no_line():
    white = torch.ones(2, 3, 16, 16)
    assert torch.equal(draw_outlines(white, 0.15, 2), white)
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64).contiguous()  # shading across the width
    assert edge_mask(ramp, 0.15).sum() == 0


def test_two_pixel_strokes_cover_more_and_darkness_scales_them():
    x = red_square(2)
    thin = edge_mask(x, 0.2)[0].sum()
    out = draw_outlines(x, torch.tensor([0.2, 0.2]), torch.tensor([1, 2]))
    assert (out[1].sum(0) < 0.5).sum() > (out[0].sum(0) < 0.5).sum() == thin
    grey = draw_outlines(x[:1], 0.2, 1, darkness=0.5)
    assert grey[0, 0, 8, 12] == pytest.approx(0.5)  # a red border pixel, half darkened


def test_random_outlines_are_seeded_and_p_zero_draws_nothing():
    x = red_square(16)
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    assert random_outlines(x, 0.0, g) is x and torch.equal(g.get_state(), state)  # older recipes keep their batches
    a = random_outlines(x, 0.5, torch.Generator().manual_seed(1))
    b = random_outlines(x, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    changed = (a != x).flatten(1).any(1)  # [16]
    assert 0 < int(changed.sum()) < 16
    assert (random_outlines(x, 1.0, torch.Generator().manual_seed(2)) != x).flatten(1).any(1).all()


def dark(x: torch.Tensor) -> int:
    """Black pixels of a normalised batch ``[n, 3, H, W]``."""
    return int(((x * 0.5 + 0.5).sum(1) < 0.5).sum())


def test_both_pipelines_draw_outlines():
    pic = (red_square(1, 40)[0].permute(1, 2, 0) * 255).round().byte()  # [3, 40, 40] -> [40, 40, 3] uint8
    batch = pic.unsqueeze(0).expand(4, -1, -1, -1)
    plain = BatchAugment(32, MEAN, STD, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=0.0, grayscale=0.0)
    lined = BatchAugment(32, MEAN, STD, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=0.0, grayscale=0.0, outline=1.0)
    flip = torch.zeros(4, dtype=torch.bool)
    assert dark(plain(batch, flip, torch.Generator().manual_seed(0))) == 0
    assert dark(lined(batch, flip, torch.Generator().manual_seed(0))) > 4 * 40

    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pic.numpy()).save(buf, format="PNG")
    decode = SampleDecoder(32, MEAN, STD, AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), outline=1.0))
    x = decode(buf.getvalue(), seed=3)
    assert x.shape == (3, 32, 32) and dark(x.unsqueeze(0)) > 40
    assert torch.equal(x, decode(buf.getvalue(), seed=3))


def test_outline_probability_is_checked():
    with pytest.raises(KontrastError, match="aug_outline 1.5 is a probability"):
        validate(TrainConfig(model="tiny-ViT", train_data="x.tar", aug_outline=1.5))
