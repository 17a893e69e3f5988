"""Training data decoded once into a compact cache, augmented on the fly in whole batches (``data_mode: cached``).

Decoding and resizing PNGs costs more than a small model's training step on a CPU. Here every image is
decoded once (composited on white, shorter side resized to ``cache_size`` with bicubic filtering and
centre-cropped) into one ``uint8`` array ``[N, C, C, 3]`` kept in memory and on disk, keyed by the shards'
paths, sizes and modification times. Each step then augments its whole batch at once with tensor ops:

* random resized crop (area ``aug_scale``, aspect ``aug_ratio``) as one ``affine_grid`` + ``grid_sample``; an area
  above 1 zooms out (the whole picture, smaller, on white), as pictures drawn small in their frame look;
* horizontal flips with probability 0.5, only for samples whose json says ``"flip": true`` (the data build
  forbids it for text, arrows, flags, letters, clocks, ...);
* optional dark outlines along colour edges (``aug_outline``, :mod:`kontrast.data.outline`), drawn after the crop;
* brightness / contrast / saturation jitter and a rare grey image; no hue change (a red heart stays red), and
  black-and-white icons stay black on white because jitter is applied around the white background.

A sample may carry several captions (json field ``captions``); each step draws one per sample, so an image
is seen with another wording each epoch. Everything random is seeded by ``(seed, step)``: the batch of step
``s`` is the same whether the run was resumed or not, and does not depend on ranks (each rank takes its slice).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.outline import random_outlines
from ..data.stream import Batch, caption_variant

log = logging.getLogger(__name__)


@dataclass
class CachedPairs:
    """Decoded images ``[N, C, C, 3]`` uint8, caption choices per sample, and whether each may be mirrored."""

    images: torch.Tensor
    captions: list[list[str]]
    flip: torch.Tensor  # [N] bool

    def __len__(self) -> int:
        return self.images.shape[0]


def cache_dir() -> Path:
    """``$KONTRAST_CACHE/train``, else ``~/.cache/kontrast/train`` (next to the evaluation feature cache)."""
    from ..evaluate.features import default_cache_dir

    return default_cache_dir().parent / "train"


def _decode(data: bytes, side: int) -> np.ndarray:
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im = im.convert("RGBA")
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    bg.alpha_composite(im)
    im = bg.convert("RGB")
    scale = side / min(im.size)
    w, h = max(side, round(im.width * scale)), max(side, round(im.height * scale))
    im = im.resize((w, h), Image.BICUBIC)
    left, top = (w - side) // 2, (h - side) // 2
    return np.asarray(im.crop((left, top, left + side, top + side)), dtype=np.uint8)


def _captions(rec, caption_key: str | None) -> list[str]:
    meta = rec.meta or {}
    key = caption_key or "captions"
    value = meta.get(key)
    if isinstance(value, list) and value:
        return [str(v) for v in value]
    if isinstance(value, str) and value:
        return [value]
    return [rec.caption] if rec.caption else []


def load_cached_pairs(train_data, cache_size: int, caption_key: str | None = None,
                      folder: Path | None = None) -> tuple[CachedPairs, int]:
    """The cache for ``train_data`` at ``cache_size`` px; returns it and the number of samples skipped
    (undecodable image or no caption). Each tar shard (or a folder / CSV source as a whole) is cached on its own,
    keyed by path, size and modification time, so another mix of the same shards reuses their caches; a shard
    listed twice is used twice (a way to weight a source)."""
    from ..data.sources import TarSource, open_source

    source = open_source(train_data)
    parts = [_cached_part([f], f, cache_size, caption_key, folder) for f in source.shards] \
        if isinstance(source, TarSource) else [_cached_part(train_data, str(train_data), cache_size, caption_key, folder)]
    images = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]  # [N, C, C, 3]
    captions = [c for p in parts for c in p[1]]
    flips = torch.cat([p[2] for p in parts])
    return CachedPairs(images, captions, flips), sum(p[3] for p in parts)


def _cached_part(spec, ident_path: str, cache_size: int, caption_key: str | None,
                 folder: Path | None) -> tuple[torch.Tensor, list[list[str]], torch.Tensor, int]:
    """``(images, captions, flip, skipped)`` of one shard or source, decoded on first use and kept on disk."""
    from PIL import UnidentifiedImageError

    from ..data.stream import load_records

    st = os.stat(ident_path)
    ident = json.dumps([os.path.abspath(ident_path), st.st_size, int(st.st_mtime), cache_size, caption_key or ""])
    root = (folder or cache_dir()) / hashlib.sha256(ident.encode()).hexdigest()[:16]
    if (root / "meta.json").is_file():
        meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
        images = torch.from_numpy(np.load(root / "images.npy"))
        return images, meta["captions"], torch.tensor(meta["flip"], dtype=torch.bool), meta["skipped"]
    arrays, captions, flips, skipped = [], [], [], 0
    for rec in load_records(spec, caption_key):
        caps = _captions(rec, caption_key)
        if rec.data is None or not caps:
            skipped += 1
            continue
        try:
            arrays.append(_decode(rec.data, cache_size))
        except (OSError, UnidentifiedImageError, ValueError) as exc:  # one bad image: skipped and counted
            log.warning("skipping %s: %s", rec.source, exc)
            skipped += 1
            continue
        captions.append(caps)
        flips.append(bool((rec.meta or {}).get("flip", False)))
    images = np.stack(arrays) if arrays else np.zeros((0, cache_size, cache_size, 3), np.uint8)  # [N, C, C, 3]
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / "images.npy.tmp"
    with open(tmp, "wb") as f:
        np.save(f, images)
    os.replace(tmp, root / "images.npy")
    tmp = root / "meta.json.tmp"
    tmp.write_text(json.dumps({"captions": captions, "flip": flips, "skipped": skipped}), encoding="utf-8")
    os.replace(tmp, root / "meta.json")
    return torch.from_numpy(images), captions, torch.tensor(flips, dtype=torch.bool), skipped


@dataclass
class BatchAugment:
    """Batched augmentation settings (the recipe's ``aug_*`` fields)."""

    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    scale: tuple[float, float] = (0.6, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: float = 0.2
    grayscale: float = 0.05
    outline: float = 0.0  # probability of dark outlines along colour edges (kontrast.data.outline)

    def __call__(self, images: torch.Tensor, flip_ok: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """uint8 ``[n, C, C, 3]`` -> normalised float ``[n, 3, S, S]``."""
        n = images.shape[0]
        x = images.permute(0, 3, 1, 2).float().div_(255)  # [n, C, C, 3] -> [n, 3, C, C]
        area = torch.empty(n).uniform_(*self.scale, generator=g)
        log_r = torch.empty(n).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]), generator=g)
        # window size as a fraction of the image: below 1 a crop inside it, above 1 (area > 1) a zoom-out that
        # shows the whole picture smaller on white, somewhere in the frame
        w = (area * log_r.exp()).sqrt().clamp(max=1.0) if self.scale[1] <= 1 else (area * log_r.exp()).sqrt()
        h = (area / log_r.exp()).sqrt().clamp(max=1.0) if self.scale[1] <= 1 else (area / log_r.exp()).sqrt()
        cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - w).abs()  # window centre in [-1, 1] coordinates
        cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - h).abs()
        mirror = (torch.rand(n, generator=g) < 0.5) & flip_ok
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = torch.where(mirror, -w, w)
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = h
        theta[:, 1, 2] = cy
        grid = F.affine_grid(theta, [n, 3, self.image_size, self.image_size], align_corners=False)  # [n, S, S, 2]
        if self.scale[1] <= 1:
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)  # [n, 3, S, S]
        else:  # outside the picture is white: sample the inverted image with zero padding
            x = 1 - F.grid_sample(1 - x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x = random_outlines(x, self.outline, g)
        if self.jitter > 0:
            r = (1 + self.jitter * (2 * torch.rand(n, 3, generator=g) - 1)).view(n, 3, 1, 1)  # [n, 3] -> [n, 3, 1, 1]
            # brightness and contrast pivot on white, so a white background stays white and black lines stay dark
            x = 1 - (1 - x) * r[:, 0:1] * r[:, 1:2]
            grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])  # [n, 1, S, S]
            x = (x - grey) * r[:, 2:3] + grey
        if self.grayscale > 0:
            to_grey = (torch.rand(n, generator=g) < self.grayscale).view(n, 1, 1, 1)  # [n] -> [n, 1, 1, 1]
            grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand(-1, 3, -1, -1)
            x = torch.where(to_grey, grey, x)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)  # [3] -> [1, 3, 1, 1]
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x.clamp_(0, 1) - mean) / std


class CachedBatches:
    """Endless :class:`Batch` es from ``start_step`` on: step ``s`` takes slice ``s mod epoch`` of a permutation
    seeded by ``(seed, epoch)``; this rank keeps its contiguous part of the global batch."""

    def __init__(self, pairs: CachedPairs, augment: BatchAugment, global_batch: int, seed: int, start_step: int,
                 rank: int = 0, world_size: int = 1, caption_head: float = 0.0) -> None:
        self.pairs, self.augment = pairs, augment
        self.global_batch, self.seed, self.step = global_batch, seed, start_step
        self.rank, self.world_size, self.caption_head = rank, world_size, caption_head
        self.per_epoch = max(1, len(pairs) // global_batch)
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def all_captions(self) -> list[str]:
        """Every distinct caption the batches can draw (to precompute a locked text tower's features)."""
        return list(dict.fromkeys(c for caps in self.pairs.captions for c in caps))

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        step, seed = self.step, self.seed
        epoch = step // self.per_epoch
        if epoch != self._perm_epoch:
            self._perm = torch.randperm(len(self.pairs), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
            self._perm_epoch = epoch
        local = self.global_batch // self.world_size
        start = (step % self.per_epoch) * self.global_batch + self.rank * local
        idx = self._perm[start: start + local]
        g = torch.Generator().manual_seed((seed * 1_000_003 + step * 65_537 + self.rank) % (2 ** 62))
        choice = torch.rand(len(idx), generator=g)
        caps = []
        for j, i in enumerate(idx.tolist()):
            options = self.pairs.captions[i]
            text = options[min(int(choice[j] * len(options)), len(options) - 1)]
            caps.append(caption_variant(text, seed * 31 + step * 8191 + j, self.caption_head))
        images = self.augment(self.pairs.images[idx], self.pairs.flip[idx], g)
        self.step += 1
        return Batch(images, caps)
