"""Training streams: deterministic indexed batches, webdataset streaming, bad samples skipped and counted."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from kontrast.data.stream import (
    AugmentConfig,
    PairDataset,
    SampleDecoder,
    StepBatchSampler,
    WebDatasetStream,
    collate,
    count_tar_samples,
    indexed_loader,
    load_records,
    webdataset_loader,
)
from kontrast.errors import KontrastError

torch.set_num_threads(1)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _png(color: tuple[int, int, int], size: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size + 4), color).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shard(path: Path, n: int, corrupt: set[int] = frozenset(), start: int = 0) -> Path:
    """A webdataset shard of ``n`` samples (png + txt); samples in ``corrupt`` get bytes that are no image."""
    with tarfile.open(path, "w") as tar:
        for i in range(start, start + n):
            data = b"not a png at all" if i in corrupt else _png((i * 40 % 256, i * 90 % 256, 128))
            _add(tar, f"s{i:04d}.png", data)
            _add(tar, f"s{i:04d}.txt", f"caption {i}".encode())
    return path


def decoder(size: int = 16, jitter: float = 0.0) -> SampleDecoder:
    return SampleDecoder(size, MEAN, STD, AugmentConfig(scale=(0.5, 1.0), jitter=jitter, grayscale=0.2 if jitter else 0.0))


def test_indexed_batches_skip_and_count_a_corrupt_sample(tmp_path: Path) -> None:
    shard = make_shard(tmp_path / "a.tar", 12, corrupt={3})
    records = load_records(str(shard))
    assert len(records) == 12
    loader = indexed_loader(records, decoder(), global_batch=12, seed=0, start_step=0, total_steps=1)
    batch = next(iter(loader))
    assert batch.images.shape == (12, 3, 16, 16)  # the bad sample was replaced, the batch keeps its size
    assert batch.skipped == 1
    assert "caption 3" not in batch.captions and len(set(batch.captions)) == 11  # one good sample drawn twice


def test_step_batch_sampler_rank_slices_make_the_global_batch() -> None:
    one = StepBatchSampler(50, 8, seed=3, start_step=0, total_steps=12)
    two = [StepBatchSampler(50, 8, seed=3, start_step=0, total_steps=12, rank=r, world_size=2) for r in range(2)]
    for step in range(12):
        assert one.indices(step) == two[0].indices(step) + two[1].indices(step)
    # each epoch (6 steps of 8 out of 50) uses distinct samples; the next epoch reshuffles
    epoch0 = [i for s in range(6) for i, _ in one.indices(s)]
    assert len(set(epoch0)) == 48
    assert [i for i, _ in one.indices(6)] != [i for i, _ in one.indices(0)]
    resumed = list(StepBatchSampler(50, 8, seed=3, start_step=5, total_steps=12))
    assert resumed == [one.indices(s) for s in range(5, 12)]
    with pytest.raises(KontrastError):
        StepBatchSampler(50, 9, seed=0, start_step=0, total_steps=1, world_size=2)


def test_augmentation_is_seeded_per_sample(tmp_path: Path) -> None:
    records = load_records(str(make_shard(tmp_path / "a.tar", 4)))
    ds = PairDataset(records, decoder(jitter=0.3))
    a, b = ds[(1, 11)][0], ds[(1, 11)][0]
    assert torch.equal(a, b)
    assert not torch.equal(a, ds[(1, 12)][0])  # another seed, another colour jitter
    assert a.shape == (3, 16, 16)


def test_caption_head_variant_is_seeded() -> None:
    from kontrast.data.stream import caption_variant

    text = "an emoji of a cat: animal, pet"
    variants = {caption_variant(text, seed, 0.5) for seed in range(40)}
    assert variants == {text, "an emoji of a cat"}
    assert caption_variant(text, 7, 0.5) == caption_variant(text, 7, 0.5)
    assert caption_variant(text, 7, 0.0) == text and caption_variant("no colon here", 1, 1.0) == "no colon here"


def test_csv_and_folder_sources_are_read_lazily(tmp_path: Path, data_dir: Path) -> None:
    records = load_records(str(data_dir / "emoji_sample" / "captions.csv"))
    assert len(records) == 200 and records[0].data is None and records[0].meta["lazy"]
    batch = collate([PairDataset(records, decoder())[(i, i)] for i in range(4)])
    assert batch.images.shape == (4, 3, 16, 16) and all(c.startswith("an emoji of") for c in batch.captions)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"x{i}.png").write_bytes(_png((10 * i, 0, 0)))
        (folder / f"x{i}.txt").write_text(f"red {i}")
    (folder / "x3.png").write_bytes(b"broken")
    (folder / "x3.txt").write_text("broken one")
    recs = load_records(str(folder))
    assert sorted(r.caption for r in recs) == ["broken one", "red 0", "red 1", "red 2"]
    ds = PairDataset(recs, decoder())
    broken = next(i for i, r in enumerate(recs) if r.caption == "broken one")
    image, caption, skipped = ds[(broken, 0)]
    assert image is not None and caption != "broken one" and skipped == 1


def test_webdataset_stream_counts_bad_samples_and_resumes_exactly(tmp_path: Path) -> None:
    shards = [str(make_shard(tmp_path / f"s{k}.tar", 10, corrupt={4}, start=10 * k)) for k in range(2)]
    assert count_tar_samples(shards) == 20
    fresh = WebDatasetStream(shards, decoder(), local_batch=4, seed=1, shuffle_buffer=8)
    it = iter(webdataset_loader(fresh))
    batches = [next(it) for _ in range(8)]  # 8 batches of 4 = more than one pass over 19 good samples
    assert all(b.images.shape == (4, 3, 16, 16) for b in batches)
    assert sum(b.skipped for b in batches) >= 1  # the corrupt sample of shard 0 was skipped and counted
    assert all("caption 4" not in b.captions for b in batches)
    pos = batches[4].position
    assert pos[0] == 0 and pos[1] >= 0
    resumed = WebDatasetStream(shards, decoder(), local_batch=4, seed=1, shuffle_buffer=8, consumed_batches=5,
                               state={pos[0]: pos[1:]})
    it2 = iter(webdataset_loader(resumed))
    for expected in batches[5:]:
        got = next(it2)
        assert got.captions == expected.captions
        assert torch.equal(got.images, expected.images)


def test_webdataset_stream_splits_shards_over_ranks(tmp_path: Path) -> None:
    shards = [str(make_shard(tmp_path / f"s{k}.tar", 6, start=10 * k)) for k in range(4)]
    seen = []
    for rank in range(2):
        s = WebDatasetStream(shards, decoder(), local_batch=6, seed=0, rank=rank, world_size=2, shuffle_buffer=1)
        it = iter(s)
        seen.append({c for _ in range(2) for c in next(it).captions})
    assert len(seen[0]) == 12 and len(seen[1]) == 12 and not seen[0] & seen[1]
