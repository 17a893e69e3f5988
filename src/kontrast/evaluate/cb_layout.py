"""CLIP_benchmark's webdataset dataset folders, read without CLIP_benchmark (or torchvision).

The layout (what ``clip_benchmark``'s ``build_wds_dataset`` reads, and what its export tool writes)::

    DATA/
      dataset_type.txt                        classification (default) | multilabel | retrieval
      classnames.txt                          line i = the name of class i (classification, multilabel)
      classnames_{lang}.txt                   the same names in another language (``language=``)
      zeroshot_classification_templates.txt   one prompt per line, ``{c}`` where the class name goes
      {split}/nshards.txt                     N: the split is {split}/0.tar .. {split}/{N-1}.tar
      {split}/0.tar ...

A sample is ``<key>.webp`` / ``.png`` / ``.jpg`` / ``.jpeg`` (the first of these, in that order) with
``<key>.cls`` (a 0-based class index), ``<key>.npy`` (multilabel: a 0/1 vector over the classes) or
``<key>.txt`` (retrieval: one caption per line, every line a caption, as ``str.splitlines`` gives them).

Images are decoded the way CLIP_benchmark's loader decodes them: ``convert("RGB")`` *before* the
model's transform (``DecodeRGBFirst``), so an RGBA or palette image gives the same pixels as there. That
drops alpha without compositing; it is not ``Preprocess(rgb_first=True)``, which composites onto white as
Hugging Face processors do (a model with that setting then receives an RGB image, as in CLIP_benchmark).
Languages: ``classnames_{lang}.txt`` (``en`` reads ``classnames.txt``) and, when present,
``zeroshot_classification_templates_{lang}.txt``; CLIP_benchmark 1.6.2 itself reads only the English
files of a webdataset folder, so other languages are kontrast's extension of the same layout.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data.sources import Record, TarSource
from ..errors import KontrastError

logger = logging.getLogger(__name__)

DATASET_TYPES = ("classification", "multilabel", "retrieval")
IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")  # CLIP_benchmark's order of preference
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
DEFAULT_SPLIT = "test"  # clip_benchmark eval --split default
MULTILABEL_PREFIX = "ml:"  # label string of a multilabel sample: "ml:<n classes>:<i>,<j>,..."


def is_clip_benchmark_dir(path: str | os.PathLike) -> bool:
    """A folder in CLIP_benchmark's layout: ``dataset_type.txt``, the templates file, or a ``*/nshards.txt``."""
    root = Path(path)
    if not root.is_dir():
        return False
    if (root / "dataset_type.txt").is_file() or (root / TEMPLATES_FILE).is_file():
        return True
    return any((p / "nshards.txt").is_file() for p in root.iterdir() if p.is_dir())


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KontrastError(f"cannot read {path}: {exc}; it must be a UTF-8 text file") from exc


def dataset_type(root: str | os.PathLike) -> str:
    """``classification`` (also when ``dataset_type.txt`` is missing), ``multilabel`` or ``retrieval``."""
    path = Path(root) / "dataset_type.txt"
    if not path.is_file():
        return "classification"
    value = _read(path).strip().lower()
    if value not in DATASET_TYPES:
        raise KontrastError(f"{path} says {value!r}; write one of: {', '.join(DATASET_TYPES)}")
    return value


def task_of(root: str | os.PathLike) -> str:
    """The kontrast task a CLIP_benchmark folder is for (``clip_benchmark eval --task auto`` + its type file)."""
    return "retrieval" if dataset_type(root) == "retrieval" else "zeroshot"


def splits(root: str | os.PathLike) -> list[str]:
    """The split folders (those with an ``nshards.txt``)."""
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and (p / "nshards.txt").is_file())


def split_shards(root: str | os.PathLike, split: str | None) -> tuple[str, list[str]]:
    """``(split, shard paths)``: ``{split}/0.tar .. {N-1}.tar`` with N from ``{split}/nshards.txt``.

    Without ``split``: ``test`` as in CLIP_benchmark, or the only split the folder has.
    """
    root = Path(root)
    found = splits(root)
    if split is None:
        split = DEFAULT_SPLIT if DEFAULT_SPLIT in found or len(found) != 1 else found[0]
    folder = root / split
    nshards_file = folder / "nshards.txt"
    if not nshards_file.is_file():
        hint = f"splits here: {', '.join(found)}" if found else "no split folder has an nshards.txt"
        what = f"{folder} has no nshards.txt" if folder.is_dir() else f"no split folder {folder}"
        raise KontrastError(f"{what} ({hint}); pass --split, or write the shard count into {nshards_file}")
    text = _read(nshards_file).strip()
    try:
        n = int(text)
    except ValueError:
        raise KontrastError(f"{nshards_file} says {text!r}; write the number of .tar shards, e.g. 1") from None
    if n < 1:
        raise KontrastError(f"{nshards_file} says {n}; a split needs at least one shard (0.tar)")
    shards = [folder / f"{i}.tar" for i in range(n)]
    missing = [p for p in shards if not p.is_file()]
    if missing:
        raise KontrastError(
            f"{missing[0]} is missing ({nshards_file} says {n} shards: 0.tar .. {n - 1}.tar); "
            "fix nshards.txt or add the shard"
        )
    return split, [str(p) for p in shards]


def _language_file(root: Path, stem: str, language: str) -> Path | None:
    """``{stem}_{language}.txt``, or for English ``{stem}.txt`` (then ``{stem}_en.txt``)."""
    names = [f"{stem}.txt", f"{stem}_en.txt"] if language == "en" else [f"{stem}_{language}.txt"]
    return next((root / n for n in names if (root / n).is_file()), None)


def _lines(path: Path, what: str) -> list[str]:
    """Stripped lines of a names/templates file; an empty line is an error (it would be a class or prompt)."""
    lines = [line.strip() for line in _read(path).splitlines()]
    for number, line in enumerate(lines, start=1):
        if not line:
            raise KontrastError(f"{path} line {number} is empty; write one {what} per line, no blank lines")
    if not lines:
        raise KontrastError(f"{path} is empty; write one {what} per line")
    return lines


def languages(root: str | os.PathLike) -> list[str]:
    """Languages the folder has class names in: ``en`` for ``classnames.txt``, ``xx`` for ``classnames_xx.txt``."""
    root = Path(root)
    found = {p.stem[len("classnames_"):] for p in root.glob("classnames_*.txt")}
    if (root / "classnames.txt").is_file():
        found.add("en")
    return sorted(found)


def classnames(root: str | os.PathLike, language: str = "en") -> list[str]:
    """Class names by index: ``classnames.txt`` (English) or ``classnames_{language}.txt``."""
    root = Path(root)
    path = _language_file(root, "classnames", language)
    if path is None:
        available = sorted(p.name for p in root.glob("classnames*.txt"))
        raise KontrastError(
            f"no class names for language {language!r} in {root} (expected "
            f"{'classnames.txt' if language == 'en' else f'classnames_{language}.txt'}; found: "
            f"{', '.join(available) or 'none'}); line i names class i"
        )
    return _lines(path, "class name")


def templates(root: str | os.PathLike, language: str = "en") -> list[str] | None:
    """The prompt templates in kontrast's ``{}`` form, or None when the folder has none.

    CLIP_benchmark fills a template with ``template.format(c=name)``; ``format(c="{}")`` turns it into
    the same text with ``{}`` where the name goes (``{{``/``}}`` become single braces, as there).
    """
    root = Path(root)
    path = _language_file(root, TEMPLATES_FILE[:-4], language)
    if path is None and language != "en":
        path = _language_file(root, TEMPLATES_FILE[:-4], "en")
        if path is not None:
            logger.warning("no %s templates in %s; using the English ones from %s", language, root, path.name)
    if path is None:
        return None
    out = []
    for number, line in enumerate(_lines(path, "template"), start=1):
        try:
            converted = line.format(c="{}")
        except (KeyError, IndexError, ValueError) as exc:
            raise KontrastError(
                f"{path} line {number}: {line!r} is not a CLIP_benchmark template ({exc}); "
                "write {c} where the class name goes and double other braces"
            ) from None
        if "{}" not in converted:
            raise KontrastError(f"{path} line {number}: {line!r} has no {{c}} where the class name goes")
        out.append(converted)
    return out


# ---- labels -------------------------------------------------------------------------------------------
def encode_multilabel(vector: np.ndarray) -> str:
    """``"ml:<n>:<i>,<j>"`` from a 0/1 vector (the positive classes), so it fits a string label column."""
    positives = ",".join(str(int(i)) for i in np.flatnonzero(vector))
    return f"{MULTILABEL_PREFIX}{vector.shape[0]}:{positives}"


def decode_multilabel(label: str) -> tuple[int, list[int]]:
    """``(n classes, positive class indices)`` of an ``encode_multilabel`` string."""
    n, _, positives = label[len(MULTILABEL_PREFIX):].partition(":")
    return int(n), [int(i) for i in positives.split(",") if i]


def _parse_npy(data: bytes) -> tuple[str | None, str | None]:
    """``(label, error)`` of a ``.npy`` multilabel member."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        return None, f"unreadable .npy label: {exc}"
    if arr.ndim != 1 or not np.isin(arr, (0, 1)).all():
        return None, f"the .npy label must be a 0/1 vector over the classes (got shape {arr.shape})"
    return encode_multilabel(arr), None


class ClipBenchmarkSource(TarSource):
    """Shards of one CLIP_benchmark split; record meta: ``label`` (class index / multilabel) or ``captions``.

    A sample without its image or its label member is skipped and counted, with the reason.
    """

    kind = "clip_benchmark"

    def __init__(self, shards: list[str], kind_of_data: str) -> None:
        super().__init__(shards)
        self.dataset_type = kind_of_data

    def _record(self, shard: str, shard_name: str, key: str, group: dict[str, Any]) -> Record:
        record_key, where = f"{shard_name}/{key}", f"{shard}:{key}"
        image_ext = next((e for e in IMAGE_KEYS if e in group), None)
        meta: dict[str, Any] = {}
        error = group.get("__error__")
        if self.dataset_type == "retrieval":
            if "txt" in group:
                meta["captions"] = group["txt"][1].decode("utf-8", "replace").splitlines()
            else:
                error = error or "no .txt captions member"
        elif self.dataset_type == "multilabel":
            label, bad = _parse_npy(group["npy"][1]) if "npy" in group else (None, "no .npy label member")
            meta["label"], error = label, error or bad
        else:
            text = group["cls"][1].decode("utf-8", "replace").strip() if "cls" in group else ""
            if text.lstrip("-").isdigit():
                meta["label"] = str(int(text))
            else:
                error = error or ("no .cls label member" if "cls" not in group else f".cls label {text!r} is not an integer")
        if image_ext is None:
            return Record(record_key, where, None, None, meta, error or "no image member (.webp/.png/.jpg/.jpeg)")
        member, data = group[image_ext]
        if error:
            return Record(record_key, f"{shard}:{member}", None, None, meta, error)
        return Record(record_key, f"{shard}:{member}", data, None, meta, None)


class DecodeRGBFirst:
    """Wrap a preprocess: ``convert("RGB")`` the decoded image first, as CLIP_benchmark's loader does.

    Picklable (for DataLoader workers); its ``repr`` names the wrapped transform, so feature caches
    tell it apart from the plain one.
    """

    def __init__(self, preprocess: Any) -> None:
        self.preprocess = preprocess

    def __call__(self, image: Any) -> Any:
        from ..preprocess import load_image

        return self.preprocess(load_image(image).convert("RGB"))

    def __repr__(self) -> str:
        return f"DecodeRGBFirst({self.preprocess!r})"
