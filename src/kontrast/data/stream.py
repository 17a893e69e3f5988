"""Training streams: batches of (augmented image tensor, caption) from folders, CSV files or tar shards.

Two readers, both deterministic so that ``--resume`` continues on exactly the same samples:

* **Indexed** (:class:`PairDataset` + :class:`StepBatchSampler`): for folders, CSV files, and tar shards
  loaded into memory (``in_memory``; fine for datasets of a few GB at most). The batch of global step
  ``s`` is a slice of a permutation seeded by ``(seed, epoch)``; each rank takes its contiguous part,
  so all ranks together see exactly the batch one process would. Augmentation randomness is seeded
  per (step, position), so it does not depend on the number of workers or ranks either.
* **Streaming** (:func:`webdataset_stream`, built on the ``webdataset`` library): for shard sets too big
  for memory. Shards are split over ranks (``split_by_node``) and DataLoader workers
  (``split_by_worker``), samples go through a seeded shuffle buffer and are decoded in the workers; each
  worker's stream repeats (reshuffled per pass), so every rank yields the same number of batches, and
  batches carry their stream position so that a resume skips consumed samples without decoding them.

Bad samples (unreadable bytes, undecodable images, missing captions) are skipped and counted, never fatal:
the indexed reader replaces one by another deterministic pick, so batch shapes stay equal on all ranks.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..errors import ImageError, KontrastError
from .outline import random_outlines
from .sources import Record, Source, decode_caption, open_source

log = logging.getLogger(__name__)

MAX_RETRIES = 8  # replacement picks for a bad sample before the batch slot gives up


# ---------------------------------------------------------------------------------------- augmentation
class ColorAugment:
    """Light photometric augmentation on a normalised ``[3, H, W]`` tensor: brightness / contrast /
    saturation jitter and random grayscale, applied in pixel space (denormalise -> jitter -> normalise).
    Helps a model trained on two emoji styles transfer to an unseen one."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], jitter: float = 0.2, grayscale: float = 0.1) -> None:
        self.mean = torch.tensor(mean).view(3, 1, 1)  # [3] -> [3, 1, 1]
        self.std = torch.tensor(std).view(3, 1, 1)  # [3] -> [3, 1, 1]
        self.jitter = float(jitter)
        self.grayscale = float(grayscale)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.jitter <= 0 and self.grayscale <= 0:
            return x
        r = torch.rand(4, generator=g)
        px = x * self.std + self.mean
        if self.jitter > 0:
            brightness, contrast, saturation = (1 + self.jitter * (2 * r[:3] - 1)).tolist()
            px = px * brightness
            grey_mean = px.mean()
            px = (px - grey_mean) * contrast + grey_mean
            grey = (0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2]).unsqueeze(0)  # [H, W] -> [1, H, W]
            px = (px - grey) * saturation + grey
        if self.grayscale > 0 and r[3].item() < self.grayscale:
            px = (0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2]).unsqueeze(0).expand(3, -1, -1)  # [1, H, W] -> [3, H, W]
        return (px.clamp(0, 1) - self.mean) / self.std


@dataclass
class AugmentConfig:
    """Train-time augmentation settings (recipe fields ``aug_*`` and ``caption_head``)."""

    scale: tuple[float, float] = (0.9, 1.0)  # random resized crop area range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: float = 0.0  # brightness/contrast/saturation +- jitter
    grayscale: float = 0.0  # probability of a grey image
    caption_head: float = 0.0  # probability of keeping only the part of a caption before its first ": "
    outline: float = 0.0  # probability of dark outlines along colour edges (kontrast.data.outline)


def caption_variant(caption: str, seed: int, p_head: float) -> str:
    """With probability ``p_head`` (seeded), the caption cut at its first ``": "`` (``"an emoji of a cat:
    animal, pet"`` -> ``"an emoji of a cat"``), so a model also learns the short form prompts use."""
    if p_head <= 0 or ": " not in caption or random.Random(seed).random() >= p_head:
        return caption
    return caption.split(": ", 1)[0]


def sample_seed(seed: int, step: int, position: int) -> int:
    """Seed of the augmentation of the ``position``-th sample of global batch ``step``."""
    return (seed * 1_000_003 + step * 65_537 + position) % (2**62)


class SampleDecoder:
    """Bytes -> augmented, normalised ``[3, S, S]`` tensor, with a seeded private generator."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], augment: AugmentConfig) -> None:
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment
        self._g: torch.Generator | None = None
        self._transform = None
        self._color = ColorAugment(mean, std, augment.jitter, augment.grayscale)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_g"], state["_transform"] = None, None  # rebuilt lazily in each worker
        return state

    def _setup(self) -> None:
        from ..preprocess import TrainTransform

        self._g = torch.Generator()
        self._transform = TrainTransform(self.image_size, scale=tuple(self.augment.scale), ratio=tuple(self.augment.ratio),
                                         mean=self.mean, std=self.std, generator=self._g)

    def __call__(self, data: bytes, seed: int) -> torch.Tensor:
        if self._transform is None:
            self._setup()
        self._g.manual_seed(seed)
        x = self._transform(data)
        if self.augment.outline > 0:  # in pixel space, after the crop: [3, S, S] -> [1, 3, S, S] and back
            px = (x * self._color.std + self._color.mean).unsqueeze(0)
            x = ((random_outlines(px, self.augment.outline, self._g)[0] - self._color.mean) / self._color.std)
        return self._color(x, self._g)


# ---------------------------------------------------------------------------------------------- indexed
def load_records(spec: str | Sequence[str] | Source, caption_key: str | None = None,
                 follow_symlinks: bool = True) -> list[Record]:
    """Every record of a source. Tar shards are read into memory (their bytes); folders and CSV files
    keep only paths (``data`` is None, ``meta["lazy"]``), read when a sample is decoded.
    ``caption_key`` takes the caption from that json/CSV field instead of the txt / caption column.
    Training follows symlinks by default (it reads what the recipe names and serves nothing); a caption
    that is not UTF-8 leaves its record without caption (skipped and counted when sampled)."""
    from .sources import CsvSource, FolderSource, read_caption

    source = spec if isinstance(spec, Source) else open_source(spec, follow_symlinks=follow_symlinks)
    out: list[Record] = []
    if isinstance(source, FolderSource):
        for path in source.files:
            caption, problem = read_caption(path.with_suffix(".txt"), source.root, source.follow_symlinks)
            if problem:
                log.info("no caption for %s: %s", path, problem)
            out.append(Record(path.relative_to(source.root).as_posix(), str(path), None, caption, {"lazy": True},
                              caption_error=problem))
    elif isinstance(source, CsvSource):
        import os

        for row in source.rows:
            rel = row[source.path_column]
            path = rel if os.path.isabs(rel) else str(source.path.parent / rel)
            meta = {k: v for k, v in row.items() if k not in (source.path_column, "caption")} | {"lazy": True}
            out.append(Record(rel, path, None, row.get("caption"), meta))
    else:
        out = list(source)
    if caption_key:
        for record in out:
            value = record.meta.get(caption_key)
            record.caption = value if isinstance(value, str) else record.caption
    return out


def record_bytes(record: Record) -> bytes | None:
    """The image bytes of a record (read from disk for lazy folder / CSV records); None if unreadable."""
    if record.data is not None:
        return record.data
    if record.meta.get("lazy"):
        try:
            with open(record.source, "rb") as f:
                return f.read()
        except OSError as exc:
            log.info("skipping %s: %s", record.source, exc)
    return None


class PairDataset(torch.utils.data.Dataset):
    """Map-style (image, caption) pairs over records; indexed by ``(index, seed)`` pairs from
    :class:`StepBatchSampler`. A bad record is replaced by a deterministic other one and counted."""

    def __init__(self, records: list[Record], decoder: SampleDecoder) -> None:
        if not records:
            raise KontrastError("the training data has no samples")
        self.records = records
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor | None, str, int]:
        index, seed = item
        skipped = 0
        for attempt in range(MAX_RETRIES):
            record = self.records[(index + attempt * 7919) % len(self.records)]
            data = record_bytes(record) if record.caption else None
            if data is not None:
                try:
                    caption = caption_variant(record.caption, seed, self.decoder.augment.caption_head)
                    return self.decoder(data, seed), caption, skipped
                except ImageError as exc:  # a bad image is one skipped sample; other exceptions are bugs
                    log.info("skipping %s: %s", record.source, exc)
            else:
                log.info("skipping %s: %s", record.source, record.error or "no caption")
            skipped += 1
        return None, "", skipped


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps ``start_step .. total_steps - 1``, this rank's ``(index, seed)`` list.

    Global step ``s`` is batch ``s % steps_per_epoch`` of the permutation of epoch ``s // steps_per_epoch``
    (drop-last); rank ``r`` takes positions ``[r*b, (r+1)*b)`` of the ``world_size * b`` global batch.
    """

    def __init__(self, num_samples: int, global_batch: int, seed: int, start_step: int, total_steps: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if global_batch % world_size:
            raise KontrastError(f"batch size {global_batch} must be divisible by the number of processes {world_size}")
        if num_samples < global_batch:
            raise KontrastError(f"the data has {num_samples} samples, fewer than one batch of {global_batch}; lower batch_size")
        self.n, self.batch, self.seed = num_samples, global_batch, seed
        self.start, self.total = start_step, total_steps
        self.rank, self.world = rank, world_size
        self.steps_per_epoch = num_samples // global_batch
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def indices(self, step: int) -> list[tuple[int, int]]:
        epoch, i = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        local = self.batch // self.world
        lo = i * self.batch + self.rank * local
        positions = range(self.rank * local, (self.rank + 1) * local)
        idx = self._perm[1][lo: lo + local].tolist()
        return [(j, sample_seed(self.seed, step, p)) for j, p in zip(idx, positions)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.total):
            yield self.indices(step)


@dataclass
class Batch:
    images: torch.Tensor  # [n, 3, S, S]
    captions: list[str]
    skipped: int = 0  # bad samples replaced or dropped while building this batch
    position: tuple[int, int, int] | None = None  # streaming: (logical worker, pass, raw samples consumed)


def collate(items: list[tuple[torch.Tensor | None, str, int]]) -> Batch:
    """Stack the good samples; count the bad ones."""
    good = [(x, c) for x, c, _ in items if x is not None]
    skipped = sum(s for _, _, s in items)
    if not good:
        raise KontrastError("a whole batch of samples could not be decoded; check the data")
    return Batch(torch.stack([x for x, _ in good]), [c for _, c in good], skipped)


def indexed_loader(records: list[Record], decoder: SampleDecoder, global_batch: int, seed: int, start_step: int,
                   total_steps: int, rank: int = 0, world_size: int = 1, workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader of :class:`Batch` for steps ``start_step..total_steps-1`` of this rank."""
    sampler = StepBatchSampler(len(records), global_batch, seed, start_step, total_steps, rank, world_size)
    return torch.utils.data.DataLoader(PairDataset(records, decoder), batch_sampler=sampler, num_workers=workers,
                                       collate_fn=collate, persistent_workers=False, prefetch_factor=4 if workers else None)


# -------------------------------------------------------------------------------------------- streaming
class _SkipCounter:
    """webdataset error handler: log, count and continue."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, exc: BaseException) -> bool:
        self.count += 1
        log.info("skipping a bad sample: %s", exc)
        return True


class WebDatasetStream(torch.utils.data.IterableDataset):
    """An endless stream of :class:`Batch` from tar shards, built with the ``webdataset`` library.

    Shards go to ranks and DataLoader workers the way ``split_by_node`` / ``split_by_worker`` do (every
    k-th shard of a per-pass shuffled list), or, when there are fewer shards than rank x worker slots,
    every k-th sample. Each pass reshuffles shards and samples (a buffer of ``shuffle_buffer``) with seeds
    from ``(seed, slot, pass)``. Every batch carries its position ``(logical worker, pass, raw samples
    consumed in that pass)``; a resume passes the last positions as ``state`` and the number of batches
    already consumed, so that each worker skips to its position without decoding anything and workers
    keep their turn order (batch ``k`` comes from logical worker ``k % workers``; streams never end).
    """

    def __init__(self, shards: Sequence[str], decoder: SampleDecoder, local_batch: int, seed: int, rank: int = 0,
                 world_size: int = 1, workers: int = 0, shuffle_buffer: int = 1000, consumed_batches: int = 0,
                 caption_key: str | None = None, state: dict[int, tuple[int, int]] | None = None) -> None:
        super().__init__()
        self.shards = list(shards)
        self.decoder, self.batch, self.seed = decoder, local_batch, seed
        self.rank, self.world, self.workers = rank, world_size, max(1, workers)
        self.shuffle_buffer, self.consumed = shuffle_buffer, consumed_batches
        self.caption_key = caption_key
        self.state = {int(k): tuple(v) for k, v in (state or {}).items()}
        self.errors = _SkipCounter()

    def _pass(self, slot: int, n_pass: int) -> Iterator[dict]:
        import webdataset as wds

        slots = self.world * self.workers
        shards = list(self.shards)
        random.Random(self.seed * 1_000_003 + n_pass).shuffle(shards)  # the same order on every slot
        rng = random.Random(self.seed * 1_000_003 + slot * 7_919 + n_pass)
        by_shard = len(shards) >= slots
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(shards[slot::slots] if by_shard else shards),
            wds.tarfile_to_samples(handler=self.errors),
            wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), rng=random.Random(rng.random())),
        )
        for i, sample in enumerate(pipeline):
            if by_shard or i % slots == slot:
                yield sample

    def _caption(self, sample: dict) -> tuple[str | None, str | None]:
        """``(caption, why there is none)`` of a sample: the json field ``caption_key``, else the txt member."""
        if self.caption_key and "json" in sample:
            import json

            try:
                value = json.loads(sample["json"]).get(self.caption_key)
            except (ValueError, AttributeError) as exc:  # not JSON (or not UTF-8), or not an object
                return None, f"unreadable json member: {exc}"
            if isinstance(value, str):
                return value, None
        txt = sample.get("txt")
        if not isinstance(txt, bytes):
            return None, None
        return decode_caption(txt)

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        logical = (worker + self.consumed) % self.workers
        slot = self.rank * self.workers + logical
        n_pass, start = self.state.get(logical, (0, 0))
        images: list[torch.Tensor] = []
        captions: list[str] = []
        skipped = 0
        while True:
            produced = False
            for idx, sample in enumerate(self._pass(slot, n_pass)):
                produced = True
                if idx < start:
                    continue  # resume: consumed before the checkpoint, not decoded
                data = next((sample[k] for k in ("png", "jpg", "jpeg", "webp") if k in sample), None)
                caption, problem = self._caption(sample)
                if data is None or not caption:
                    problem = problem or "no image or no caption"
                else:
                    seed = sample_seed(self.seed, n_pass, slot * 100_000_007 + idx)
                    try:
                        images.append(self.decoder(data, seed))
                        captions.append(caption_variant(caption, seed, self.decoder.augment.caption_head))
                    except ImageError as exc:  # a bad image is skipped and counted; other exceptions are bugs
                        problem = str(exc)
                if problem is not None:
                    skipped += 1
                    log.info("skipping %s: %s", sample.get("__key__"), problem)
                    continue
                if len(images) == self.batch:
                    yield Batch(torch.stack(images), captions, skipped + self.errors.count, (logical, n_pass, idx + 1))
                    self.errors.count = 0
                    images, captions, skipped = [], [], 0
            if not produced and start == 0:
                raise KontrastError(f"no samples for rank {self.rank} in shards {self.shards[:3]}")
            n_pass, start = n_pass + 1, 0


def webdataset_loader(stream: WebDatasetStream, workers: int = 0) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                       prefetch_factor=4 if workers else None)


def count_tar_samples(shards: Sequence[str]) -> int:
    """Number of samples (distinct keys) in tar shards, from the member headers only."""
    import tarfile

    total = 0
    for shard in shards:
        keys = set()
        try:
            with tarfile.open(shard) as tar:
                for member in tar.getmembers():
                    if member.isfile():
                        head, _, base = member.name.rpartition("/")
                        keys.add(head + "/" + base.split(".", 1)[0])
        except (OSError, tarfile.TarError) as exc:
            log.info("cannot count %s: %s", shard, exc)
        total += len(keys)
    return total
