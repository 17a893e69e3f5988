"""``data_mode: cached``: images decoded once into a uint8 cache, augmented per batch; several captions per sample;
mirroring only where the sample allows it; the batch of a step does not depend on where the run (re)started."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from kontrast.train import TrainConfig, train
from kontrast.train.cached_data import BatchAugment, CachedBatches, load_cached_pairs

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _png(i: int, side: int = 40) -> bytes:
    """A left-right asymmetric image: a dark bar on the left third, a colour from ``i`` elsewhere."""
    im = Image.new("RGB", (side, side), ((i * 40) % 256, (i * 90) % 256, 200))
    im.paste((0, 0, 0), (0, 0, side // 3, side))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _shard(path: Path, n: int) -> Path:
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            caps = [f"picture {i}", f"image number {i}"]
            members = {"png": _png(i), "txt": caps[0].encode(),
                       "json": json.dumps({"captions": caps, "flip": i % 2 == 0}).encode()}
            if i == 3:
                members["png"] = b"not an image"
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture()
def shard(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("KONTRAST_CACHE", str(tmp_path / "cache"))
    return _shard(tmp_path / "data-000000.tar", 24)


def test_cache_is_built_once_and_skips_bad_images(shard: Path, tmp_path: Path):
    pairs, skipped = load_cached_pairs(str(shard), 36)
    assert skipped == 1 and len(pairs) == 23 and pairs.images.shape == (23, 36, 36, 3)
    assert pairs.images.dtype == torch.uint8
    assert pairs.captions[0] == ["picture 0", "image number 0"]
    assert pairs.flip.tolist()[:3] == [True, False, True]
    cached = list((tmp_path / "cache" / "train").rglob("images.npy"))
    assert len(cached) == 1
    again, skipped_again = load_cached_pairs(str(shard), 36)  # read back from disk
    assert skipped_again == 1 and torch.equal(again.images, pairs.images) and again.captions == pairs.captions


def test_flips_only_where_allowed(shard: Path):
    pairs, _ = load_cached_pairs(str(shard), 32)
    aug = BatchAugment(32, MEAN, STD, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=0.0, grayscale=0.0)
    mirrored = {True: 0, False: 0}
    for step in range(6):
        g = torch.Generator().manual_seed(step)
        out = aug(pairs.images, pairs.flip, g)  # [n, 3, 32, 32]
        left, right = out[..., :8].mean(dim=(1, 2, 3)), out[..., -8:].mean(dim=(1, 2, 3))
        for i in range(len(pairs)):
            flipped = bool(left[i] > right[i])  # the dark bar moved to the right
            assert not flipped or bool(pairs.flip[i]), "a sample that must not be mirrored was mirrored"
            mirrored[bool(pairs.flip[i])] += flipped
    assert mirrored[True] > 0 and mirrored[False] == 0


def test_batches_depend_only_on_the_step(shard: Path):
    pairs, _ = load_cached_pairs(str(shard), 32)
    aug = BatchAugment(28, MEAN, STD)
    run = CachedBatches(pairs, aug, 8, seed=3, start_step=0)
    batches = [next(run) for _ in range(5)]
    resumed = CachedBatches(pairs, aug, 8, seed=3, start_step=3)
    for want in batches[3:]:
        got = next(resumed)
        assert torch.equal(got.images, want.images) and got.captions == want.captions
    assert batches[0].images.shape == (8, 3, 28, 28)
    every = {c for b in batches for c in b.captions}
    assert any(c.startswith("image number") for c in every) and any(c.startswith("picture") for c in every)
    # each epoch is a permutation: 2 steps of 8 from 23 samples show 16 distinct samples
    one_epoch = [c.split()[-1] for b in batches[:2] for c in b.captions]
    assert len(set(one_epoch)) == 16


def test_training_runs_on_the_cache(shard: Path, tmp_path: Path):
    cfg = TrainConfig(model="tiny-ViT", train_data=str(shard), data_mode="cached", batch_size=8, steps=3, warmup=1,
                      lr=1e-3, precision="fp32", output=str(tmp_path / "run"), tensorboard=False, log_every=1,
                      aug_scale=(0.6, 1.0), aug_jitter=0.2)
    last = train(cfg)
    assert last["step"] == 3 and torch.isfinite(torch.tensor(last["loss"]))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]


def test_zoom_out_shows_the_whole_picture_smaller_on_white(shard: Path):
    pairs, _ = load_cached_pairs(str(shard), 32)
    aug = BatchAugment(32, MEAN, STD, scale=(4.0, 4.0), ratio=(1.0, 1.0), jitter=0.0, grayscale=0.0)
    out = aug(pairs.images, torch.zeros(len(pairs), dtype=torch.bool), torch.Generator().manual_seed(0))
    px = out * 0.5 + 0.5  # [n, 3, 32, 32] in [0, 1]
    white = (px > 0.99).all(dim=1).float().mean(dim=(1, 2))  # [n] share of white pixels
    assert bool((white > 0.7).all()) and bool((white < 0.8).all())  # the picture fills a quarter of the area
    assert bool((px.amin(dim=(1, 2, 3)) < 0.05).all())  # its dark bar is still there
