"""Evaluation datasets: image folders (ImageNet layout), CSV files and webdataset shards.

``open_dataset(data, split=...)`` resolves what the user named into an ``EvalDataset``: a
``kontrast.data`` source to embed, plus how to read each record's label and captions.

* **Image folder** (ImageNet layout): ``DATA/<class>/<image>``; the class is the top-level folder name.
  Optional ``DATA/classnames.txt`` gives display names for the prompts, one per line in *sorted
  folder order*, or ``folder<TAB>name`` lines (then a listed folder that does not exist is named in
  the error). Without it, the folder name is used with ``_`` read as a space. An optional
  ``DATA/templates.txt`` (one prompt per line, with ``{}``) becomes the default zero-shot templates.
  Captions for retrieval come from a same-name ``.txt`` next to each image, one caption per line.
* **CSV**: a ``filepath`` column (relative to the CSV's folder) and a ``label`` and/or ``caption``
  column (other names with ``label_field`` / ``caption_field``). Several captions per image: repeat
  the filepath on several rows, and/or separate captions with ``|`` in one field.
* **webdataset shards**: the label is a json field (``label_field``; default ``label``, which also
  covers ``.cls`` members, else ``name`` when the records have no ``label``: for the emoji and clip-art
  shards the class is the ``name``). Captions are the ``.txt`` (one per line; ``caption_field``
  ``caption``) or any json field (a list gives several captions).

``split`` picks a part of a dataset folder: the subfolder ``DATA/<split>/`` if there is one, else the
``.tar``/``.csv`` files in ``DATA`` whose name has ``<split>`` as a ``-``/``.``-separated token (if
none has, a ``_``-separated one: ``val`` then also picks ``val_concepts`` and ``val_style``), e.g.
``--data shared/data/clipart --split val`` -> ``clipart-val-000000.tar``.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.sources import FOLDER_CHUNK, IMAGE_EXTS, FolderSource, Record, Source, TarSource, expand_paths
from ..errors import KontrastError
from . import cb_layout as cb
from .cb_layout import is_clip_benchmark_dir

logger = logging.getLogger(__name__)

SPLIT_NAMES = {"train", "val", "valid", "validation", "test", "dev"}
CAPTION_SEP = "|"


@dataclass
class EvalDataset:
    """A resolved evaluation dataset: the records to embed and how to read labels and captions."""

    spec: str  # what the user named, with the split: "DATA [split]"
    paths: list[str]  # resolved files / folders (feed the cache key)
    kind: str  # "folder" | "csv" | "webdataset"
    source: Source
    label_field: str = "label"
    caption_field: str = "caption"
    split: str | None = None
    classes: list[str] | None = (
        None  # class ids in index order (folders / given class list); None: from labels
    )
    classnames: list[str] | None = None  # display names for the prompts, aligned with ``classes``
    templates: list[str] | None = None  # from templates.txt
    info: dict[str, Any] = field(default_factory=dict)
    decode_rgb_first: bool = False  # CLIP_benchmark folders: convert("RGB") before the transform

    def wrap_preprocess(self, preprocess: Any) -> Any:
        """The transform that images of this dataset go through (see ``cb_layout.DecodeRGBFirst``)."""
        if not self.decode_rgb_first:
            return preprocess
        from .cb_layout import DecodeRGBFirst

        return DecodeRGBFirst(preprocess)

    def describe(self) -> dict[str, Any]:
        """The JSON-able description that goes into results.json."""
        return {
            "spec": self.spec,
            "paths": self.paths,
            "kind": self.kind,
            "split": self.split,
            "label_field": self.label_field,
            "caption_field": self.caption_field,
            **self.info,
        }


# ---- split / path resolution -----------------------------------------------------------------------
def _split_tokens(name: str, separators: str) -> list[str]:
    stem = name[:-4] if name.lower().endswith(".csv") else name.split(".", 1)[0]
    return re.split(f"[{separators}]", stem)


def _split_files(root: Path, split: str) -> list[str]:
    """``.tar``/``.csv`` files in ``root`` named with ``split`` as a ``-``/``.`` (else ``_``) token."""
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith((".tar", ".csv")))
    for separators in ("-.", "-._"):
        matches = [str(p) for p in files if split in _split_tokens(p.name, separators)]
        if matches:
            return matches
    return []


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_EXTS for p in folder.rglob("*"))


def resolve_paths(
    data: str | os.PathLike | Sequence[str | os.PathLike], split: str | None = None
) -> list[str]:
    """Files / folders that make up ``data`` (restricted to ``split``); empty split -> ``KontrastError``."""
    paths = expand_paths(data)
    if split is None:
        return paths
    if len(paths) != 1 or not os.path.isdir(paths[0]):
        raise KontrastError(
            f"--split {split} needs --data to be one dataset folder (got {' '.join(paths)}); "
            "or drop --split and name the files"
        )
    root = Path(paths[0])
    sub = root / split
    if sub.is_dir():
        if not _has_images(sub) and not any(p.suffix in (".tar", ".csv") for p in sub.iterdir()):
            raise KontrastError(f"empty split: {sub} has no images; check --split {split}")
        inner = sorted(str(p) for p in sub.iterdir() if p.name.endswith((".tar", ".csv")))
        if inner and not _has_images(sub):
            return inner
        return [str(sub)]
    files = _split_files(root, split)
    if not files:
        found = sorted({p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")})
        raise KontrastError(
            f"empty split: {root} has no '{split}' subfolder and no .tar/.csv file named like "
            f"'*-{split}-*' (subfolders: {', '.join(found) or 'none'}); check --split"
        )
    csvs = [f for f in files if f.endswith(".csv")]
    if csvs and len(files) > 1:
        raise KontrastError(
            f"--split {split} matches several files in {root} ({', '.join(Path(f).name for f in files)}); "
            "name the one to use with --data"
        )
    return files


def split_subfolders(data: str | os.PathLike) -> list[str]:
    """The split subfolders (train/val/test...) of a dataset folder, if all its subfolders are splits."""
    root = Path(data)
    if not root.is_dir():
        return []
    subs = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(subs) if subs and all(s.lower() in SPLIT_NAMES for s in subs) else []


def has_split(data: str | os.PathLike, split: str) -> bool:
    """Whether ``data`` is a folder with a ``split`` part (subfolder or matching files)."""
    try:
        resolve_paths(data, split)
    except KontrastError:
        return False
    return True


# ---- class lists ------------------------------------------------------------------------------------
def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a UTF-8 text file (stripped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise KontrastError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def _folder_classnames(root: Path, folders: list[str], names_file: Path) -> list[str]:
    lines = read_lines(names_file)
    if lines and all("\t" in line for line in lines):
        mapping = dict(line.split("\t", 1) for line in lines)
        missing = [f for f in mapping if f not in folders]
        if missing:
            raise KontrastError(
                f"missing class folder: {names_file} lists '{missing[0]}' but {root / missing[0]} "
                "does not exist; add the folder or remove the line"
            )
        return [mapping.get(f, f.replace("_", " ")).strip() for f in folders]
    if len(lines) == len(folders):
        return lines
    if len(lines) > len(folders):
        extra = [line for line in lines if line not in folders]
        named = f" (no folder for '{extra[0]}')" if len(extra) == len(lines) - len(folders) else ""
        raise KontrastError(
            f"missing class folder: {names_file} lists {len(lines)} classes but {root} has "
            f"{len(folders)} class folders{named}; add the folders or fix {names_file.name}"
        )
    raise KontrastError(
        f"{names_file} lists {len(lines)} names for {len(folders)} class folders in {root}; "
        "write one name per folder, in sorted folder order"
    )


def _open_folder(root: Path, need_labels: bool, classnames_file: str | None) -> tuple[Source, dict]:
    source = FolderSource(root)
    info: dict[str, Any] = {}
    if not need_labels:
        return source, info
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise KontrastError(
            f"missing class folders: {root} has no class subfolders (expected {root}/<class>/<image>); "
            "for a flat folder, use a CSV with filepath,label"
        )
    splits = split_subfolders(root)
    if splits:
        raise KontrastError(
            f"{root} has split subfolders ({', '.join(splits)}), not classes; pass --split {splits[0]}"
        )
    source.files = [f for f in source.files if f.parent != root]  # loose files in the root have no class
    counts = {f: 0 for f in folders}
    for path in source.files:
        counts[path.relative_to(root).parts[0]] += 1
    empty = [f for f, n in counts.items() if n == 0]
    if empty:
        logger.warning("%d class folder(s) in %s have no images (e.g. %s)", len(empty), root, empty[0])
    names_file = Path(classnames_file) if classnames_file else root / "classnames.txt"
    names = (
        _folder_classnames(root, folders, names_file)
        if names_file.is_file()
        else [f.replace("_", " ") for f in folders]
    )
    info.update(classes=folders, classnames=names)
    if (root / "templates.txt").is_file():
        info["templates"] = read_lines(root / "templates.txt")
    return source, info


# ---- CSV ----------------------------------------------------------------------------------------------
class EvalCsvSource(Source):
    """CSV rows grouped by image: one record per distinct ``filepath``, with its label and all its captions.

    Record meta: ``label`` (first row's value) and ``captions`` (list, ``|``-separated fields split).
    """

    kind = "csv"

    def __init__(
        self,
        path: str | os.PathLike,
        label_field: str = "label",
        caption_field: str = "caption",
        path_column: str = "filepath",
    ) -> None:
        self.path = Path(path)
        try:
            with self.path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                columns = reader.fieldnames or []
                rows = list(reader)
        except OSError as exc:
            raise KontrastError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        if path_column not in columns:
            raise KontrastError(
                f"{self.path}: no {path_column!r} column (found {columns}); "
                "expected a header like filepath,label or filepath,caption"
            )
        self.columns = columns
        self.label_field = label_field if label_field in columns else None
        self.caption_field = caption_field if caption_field in columns else None
        self.items: list[dict[str, Any]] = []  # {"filepath", "label", "captions", "row"}
        index: dict[str, int] = {}
        for row_number, row in enumerate(rows, start=2):
            rel = (row.get(path_column) or "").strip()
            if not rel:
                continue
            if rel not in index:
                index[rel] = len(self.items)
                label = row.get(self.label_field) if self.label_field else None
                self.items.append(
                    {
                        "filepath": rel,
                        "label": label.strip() if label else None,
                        "captions": [],
                        "row": row_number,
                    }
                )
            if self.caption_field and row.get(self.caption_field):
                caps = [c.strip() for c in row[self.caption_field].split(CAPTION_SEP) if c.strip()]
                self.items[index[rel]]["captions"].extend(caps)

    def units(self) -> list[tuple[int, int]]:
        return [(i, min(i + FOLDER_CHUNK, len(self.items))) for i in range(0, len(self.items), FOLDER_CHUNK)]

    def unit_name(self, unit: tuple[int, int]) -> str:
        return f"{self.path}[{unit[0]}:{unit[1]}]"

    def image_path(self, item: dict[str, Any]) -> Path:
        rel = item["filepath"]
        return Path(rel) if os.path.isabs(rel) else self.path.parent / rel

    def iter_unit(self, unit: tuple[int, int]) -> Iterator[Record]:
        for item in self.items[unit[0] : unit[1]]:
            path = self.image_path(item)
            try:
                data, error = path.read_bytes(), None
            except OSError as exc:
                data, error = None, f"{type(exc).__name__}: {exc.strerror or exc}"
            meta = {"label": item["label"], "captions": list(item["captions"])}
            yield Record(item["filepath"], str(path), data, None, meta, error)


def _check_csv_labels(source: EvalCsvSource, classes: list[str], names_file: str) -> None:
    allowed = set(classes)
    for item in source.items:
        if item["label"] is not None and item["label"] not in allowed:
            raise KontrastError(
                f"{source.path} row {item['row']}: label '{item['label']}' is not in the class list "
                f"({names_file}); add it there or fix the row"
            )


# ---- entry point --------------------------------------------------------------------------------------
def open_dataset(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    split: str | None = None,
    label_field: str | None = None,
    caption_field: str | None = None,
    classnames: str | os.PathLike | None = None,
    need: str = "labels",
    language: str = "en",
) -> EvalDataset:
    """Resolve ``data`` (+ ``split``) into an ``EvalDataset``.

    ``need`` is ``"labels"`` (zero-shot, linear probe: class folders are required) or ``"captions"``.
    ``classnames``: a file with the class list (CSV / shards: the allowed labels, one per line; folders:
    display names, like ``classnames.txt``). A folder in CLIP_benchmark's layout (see ``cb_layout``) is
    read as such; ``language`` picks its ``classnames_{language}.txt``.
    """
    if isinstance(data, (str, os.PathLike)) and is_clip_benchmark_dir(data):
        return open_clip_benchmark(data, split, need, language, classnames)
    if language != "en":
        raise KontrastError(
            f"--language {language}: only CLIP_benchmark dataset folders (classnames_{language}.txt) have "
            "class names in several languages; translate the names with --classnames instead"
        )
    paths = resolve_paths(data, split)
    spec = " ".join(os.fspath(d) for d in ([data] if isinstance(data, (str, os.PathLike)) else data))
    if split:
        spec += f" [{split}]"
    need_labels = need == "labels"
    explicit_label = label_field is not None
    label_field = label_field or "label"
    caption_field = caption_field or "caption"
    if len(paths) == 1 and os.path.isdir(paths[0]):
        root = Path(paths[0])
        shards = sorted(str(p) for p in root.iterdir() if p.name.endswith((".tar", ".tar.gz", ".tgz")))
        if shards and not _has_images(root):
            paths = shards  # a folder of shards
        else:
            if need_labels and split is None and split_subfolders(root):
                subs = split_subfolders(root)
                raise KontrastError(
                    f"{root} has split subfolders ({', '.join(subs)}); pass --split {subs[0]}"
                )
            source, info = _open_folder(root, need_labels, os.fspath(classnames) if classnames else None)
            if not source.files:
                raise KontrastError(f"empty split: no images under {root}")
            templates = info.pop("templates", None)
            classes, names = info.pop("classes", None), info.pop("classnames", None)
            return EvalDataset(
                spec,
                paths,
                "folder",
                source,
                "label",
                caption_field,
                split,
                classes,
                names,
                templates,
                {"n_classes": len(classes)} if classes else {},
            )
    if len(paths) == 1 and paths[0].lower().endswith(".csv"):
        source = EvalCsvSource(paths[0], label_field, caption_field)
        if not source.items:
            raise KontrastError(f"empty split: {paths[0]} has no rows")
        if need_labels and source.label_field is None:
            raise KontrastError(
                f"{paths[0]}: no {label_field!r} column (found {source.columns}); "
                "pass --label-field or add a label column"
            )
        if not need_labels and source.caption_field is None:
            raise KontrastError(
                f"{paths[0]}: no {caption_field!r} column (found {source.columns}); "
                "pass --caption-field or add a caption column"
            )
        classes = None
        if classnames and need_labels:
            classes = read_lines(classnames)
            _check_csv_labels(source, classes, os.fspath(classnames))
        return EvalDataset(spec, paths, "csv", source, label_field, caption_field, split, classes, classes)
    bad = [p for p in paths if not p.endswith((".tar", ".tar.gz", ".tgz"))]
    if bad:
        raise KontrastError(f"{bad[0]}: not an image folder, a .csv file or a .tar shard")
    classes = read_lines(classnames) if classnames and need_labels else None
    source = TarSource(paths)
    if not explicit_label:  # also for retrieval, so both tasks share one feature cache entry
        label_field = _peek_label_field(source)
    return EvalDataset(spec, paths, "webdataset", source, label_field, caption_field, split, classes, classes)


def open_clip_benchmark(
    data: str | os.PathLike,
    split: str | None,
    need: str,
    language: str,
    classnames_file: str | os.PathLike | None = None,
) -> EvalDataset:
    """An ``EvalDataset`` over one split of a CLIP_benchmark folder (see ``cb_layout``)."""
    root = Path(data)
    kind = cb.dataset_type(root)
    split, shards = cb.split_shards(root, split)
    if need == "captions" and kind != "retrieval":
        raise KontrastError(
            f"{root} is a {kind} dataset (dataset_type.txt), not a retrieval one; use --task zeroshot or auto"
        )
    if need == "labels" and kind == "retrieval":
        raise KontrastError(f"{root} is a retrieval dataset (dataset_type.txt); use --task retrieval or auto")
    classes = names = templates = None
    if kind != "retrieval":
        names = read_lines(classnames_file) if classnames_file else cb.classnames(root, language)
        classes = [str(i) for i in range(len(names))]
        templates = cb.templates(root, language)
    info = {"clip_benchmark": True, "dataset_type": kind, "language": language}
    if names is not None:
        info["n_classes"] = len(names)
    return EvalDataset(
        f"{os.fspath(data)} [{split}]",
        shards,
        "clip_benchmark",
        cb.ClipBenchmarkSource(shards, kind),
        "label",
        "captions",
        split,
        classes,
        names,
        templates,
        info,
        decode_rgb_first=True,
    )


# ---- reading labels and captions from embedded records ----------------------------------------------
def record_label(dataset: EvalDataset, meta: dict[str, Any]) -> str | None:
    """The raw label of one embedded record (pipeline meta dict), or None when it has none."""
    fields = meta.get("meta") or {}
    if dataset.kind == "folder":
        label = fields.get("label")
        return label.split("/", 1)[0] if label else None
    value = fields.get(dataset.label_field)
    if value is None or value == "":
        return None
    return " ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def record_captions(dataset: EvalDataset, meta: dict[str, Any]) -> list[str]:
    """All captions of one embedded record (see the module docstring for where they come from)."""
    fields = meta.get("meta") or {}
    if dataset.kind in ("csv", "clip_benchmark"):
        return list(fields.get("captions") or [])
    if dataset.caption_field in ("caption", "txt") and meta.get("caption"):
        return [line.strip() for line in str(meta["caption"]).splitlines() if line.strip()]
    value = fields.get(dataset.caption_field)
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [str(value).strip()] if value not in (None, "") else []


def _peek_label_field(source: Source) -> str:
    """``label`` if the first record has one (json field or ``.cls``), else ``name`` if it has that."""
    units = source.units()
    first = next(iter(source.iter_unit(units[0])), None) if units else None
    fields = first.meta if first is not None else {}
    if fields.get("label") in (None, "") and fields.get("name") not in (None, ""):
        logger.info("no 'label' field in the records; using the json field 'name' as the class")
        return "name"
    return "label"
