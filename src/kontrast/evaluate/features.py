"""Frozen features of an evaluation dataset, computed once and cached on disk.

Image features are keyed by (model fingerprint, preprocessing, dataset kind + resolved paths + the
size and mtime of every file read, split, label / caption fields), so editing, adding or removing a
file invalidates the entry. Caption features are keyed by (model fingerprint, the caption texts).
Entries are plain ``.npz`` files (no pickles) under ``cache_dir``: ``--cache-dir``, else
``$KONTRAST_CACHE/features``, else ``~/.cache/kontrast/features``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KontrastError
from ..pipeline import embed_units
from .datasets import EvalCsvSource, EvalDataset, record_captions, record_label

logger = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass
class Features:
    """Normalised image features of a dataset, with each image's label and captions (source order)."""

    image: np.ndarray  # [N, D] float32, L2-normalised
    keys: list[str]
    labels: list[str | None]
    captions: list[list[str]]
    skipped: int = 0  # records that could not be decoded
    cached: bool = False  # True when read from the cache


def default_cache_dir() -> Path:
    """``$KONTRAST_CACHE/features`` if set, else ``~/.cache/kontrast/features``."""
    root = os.environ.get("KONTRAST_CACHE")
    return Path(root).expanduser() / "features" if root else Path.home() / ".cache" / "kontrast" / "features"


def _file_stats(dataset: EvalDataset) -> list[tuple[str, int, int]]:
    files: list[Path] = []
    source = dataset.source
    if isinstance(source, EvalCsvSource):
        files = [source.path] + [source.image_path(item) for item in source.items]
    elif hasattr(source, "files"):
        root = Path(dataset.paths[0])
        files = list(source.files) + [
            p for p in (root / "classnames.txt", root / "templates.txt") if p.is_file()
        ]
        files += [f.with_suffix(".txt") for f in source.files if f.with_suffix(".txt").is_file()]
    else:
        files = [Path(p) for p in dataset.paths]
    stats = []
    for path in files:
        try:
            st = path.stat()
            stats.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((str(path), -1, -1))
    return stats


def dataset_key(dataset: EvalDataset) -> str:
    """A digest of everything about the dataset that changes its records (files, sizes, mtimes, fields)."""
    h = hashlib.sha256()
    head = {
        "kind": dataset.kind,
        "paths": [os.path.abspath(p) for p in dataset.paths],
        "split": dataset.split,
        "label_field": dataset.label_field,
        "caption_field": dataset.caption_field,
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    for name, size, mtime in _file_stats(dataset):
        h.update(f"{name}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:24]


def _preprocess_id(preprocess: Any) -> str:
    text = repr(preprocess)
    return type(preprocess).__name__ if " at 0x" in text else text


def _save_npz(path: Path, **arrays: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("ignoring unreadable feature cache %s (%s)", path, exc)
        return None


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _pack(feats: Features) -> dict[str, Any]:
    """``Features`` as plain arrays for an ``.npz`` (no pickles)."""
    flat = [c for caps in feats.captions for c in caps]
    offsets = np.cumsum([0] + [len(c) for c in feats.captions]).astype(np.int64)
    return {
        "image": feats.image,
        "keys": np.array(feats.keys, dtype=str),
        "labels": np.array([lab or "" for lab in feats.labels], dtype=str),
        "has_label": np.array([lab is not None for lab in feats.labels], dtype=bool),
        "captions": np.array(flat, dtype=str),
        "caption_offsets": offsets,
        "skipped": np.int64(feats.skipped),
    }


def _unpack(z: dict[str, np.ndarray], cached: bool) -> Features:
    offsets = z["caption_offsets"]
    flat = z["captions"].tolist()
    captions = [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    labels = [lab if has else None for lab, has in zip(z["labels"].tolist(), z["has_label"].tolist())]
    image = z["image"].reshape(len(labels), -1) if len(labels) else z["image"]
    return Features(image, z["keys"].tolist(), labels, captions, int(z["skipped"]), cached=cached)


def _concat(parts: Sequence[Features], dim: int) -> Features:
    image = np.concatenate([p.image for p in parts]) if parts else np.zeros((0, dim), np.float32)
    return Features(
        image.astype(np.float32, copy=False),
        [k for p in parts for k in p.keys],
        [lab for p in parts for lab in p.labels],
        [caps for p in parts for caps in p.captions],
        sum(p.skipped for p in parts),
    )


def image_features(
    model: Any,
    preprocess: Callable,
    dataset: EvalDataset,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Features:
    """Normalised image features of every readable record of ``dataset`` (from the cache when possible).

    With the cache on, every finished unit (a shard, a chunk of files) is saved at once under
    ``img-<key>.parts/``, so a run that is killed resumes at the first unfinished unit; the parts are
    merged into ``img-<key>.npz`` at the end. Unreadable images are skipped and counted; a damaged
    shard (part of it unreadable) is not cached, so the next run reads it again. A dataset with no
    readable image raises ``KontrastError``.
    """
    from ..record import fingerprint

    preprocess = dataset.wrap_preprocess(preprocess)
    key = hashlib.sha256(
        json.dumps(
            [CACHE_VERSION, fingerprint(model), _preprocess_id(preprocess), dataset_key(dataset)]
        ).encode()
    ).hexdigest()[:32]
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = root / f"img-{key}.npz"
    parts_dir = root / f"img-{key}.parts"
    if use_cache and path.is_file():
        z = _load_npz(path)
        if z is not None:
            logger.info("image features of %s read from %s", dataset.spec, path)
            return _unpack(z, cached=True)

    units = dataset.source.units()
    done: dict[int, Features] = {}
    if use_cache and parts_dir.is_dir():
        for i in range(len(units)):
            part = parts_dir / f"unit-{i:06d}.npz"
            z = _load_npz(part) if part.is_file() else None
            if z is not None:
                done[i] = _unpack(z, cached=True)
        if done:
            logger.info("resuming %s: %d of %d units already embedded", dataset.spec, len(done), len(units))
    todo = [i for i in range(len(units)) if i not in done]
    first_skip: list[Any] = []
    damaged = False
    results = embed_units(
        model,
        preprocess,
        dataset.source,
        units=[units[i] for i in todo],
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        normalize=True,
    )
    for result in results:
        index = todo[result.index]
        part = Features(
            _normalise(np.asarray(result.image_embeddings, dtype=np.float32)),
            [m["key"] for m in result.metas],
            [record_label(dataset, m) for m in result.metas],
            [record_captions(dataset, m) for m in result.metas],
            len(result.skipped),
        )
        first_skip.extend(result.skipped[:1])
        done[index] = part
        damaged = damaged or bool(result.damaged)
        if use_cache and not result.damaged:  # a damaged shard is read again next time, not cached
            _save_npz(parts_dir / f"unit-{index:06d}.npz", **_pack(part))
    feats = _concat([done[i] for i in range(len(units))], model.embed_dim)
    if feats.skipped:
        example = f" (first: {first_skip[0].source}: {first_skip[0].reason})" if first_skip else ""
        logger.warning(
            "%d of %d images in %s could not be read and were skipped%s",
            feats.skipped,
            feats.skipped + len(feats.keys),
            dataset.spec,
            example,
        )
    if not feats.keys:
        raise KontrastError(
            f"empty split: no readable image in {dataset.spec}"
            + (f" ({feats.skipped} unreadable)" if feats.skipped else "")
        )
    if use_cache and not damaged:
        _save_npz(path, **_pack(feats))
        shutil.rmtree(parts_dir, ignore_errors=True)
    return feats


def text_features(
    model: Any,
    tokenizer: Callable,
    texts: Sequence[str],
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    long_text: str = "truncate",
) -> np.ndarray:
    """Normalised text features [M, D] of ``texts`` (cached by model fingerprint, the texts and ``long_text``)."""
    from ..record import fingerprint
    from ..text_features import encode_texts

    key = [CACHE_VERSION, fingerprint(model)] + ([long_text] if long_text != "truncate" else [])  # old keys stay valid
    h = hashlib.sha256(json.dumps(key).encode())
    for text in texts:
        h.update(text.encode("utf-8") + b"\0")
    path = (
        Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    ) / f"txt-{h.hexdigest()[:32]}.npz"
    if use_cache and path.is_file():
        z = _load_npz(path)
        if z is not None and len(z["text"]) == len(texts):
            return z["text"]
    if texts:
        emb = encode_texts(model, tokenizer, list(texts), long_text=long_text, batch_size=batch_size, progress=progress)
        out = _normalise(emb.float().cpu().numpy())
    else:
        out = np.zeros((0, model.embed_dim), np.float32)
    if use_cache:
        _save_npz(path, text=out)
    return out
