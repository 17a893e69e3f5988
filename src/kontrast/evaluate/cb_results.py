"""CLIP_benchmark's result files: one JSON per (dataset, model, task, language), and the CSV of many.

What ``clip_benchmark eval`` (1.6.2) writes, and so what scripts that read its results expect:

* the file ``{dataset}_{pretrained}_{model}_{language}_{task}.json`` (its default ``--output``), where
  ``dataset`` drops a ``wds/`` prefix and turns ``/`` into ``_``, and ``pretrained`` is the file name
  when it is a checkpoint file (kontrast: also the folder name of a checkpoint folder, and ``/`` in a
  model name becomes ``_``, where CLIP_benchmark would write into a subfolder that does not exist);
* its content ``{"dataset", "model", "pretrained", "task", "metrics", "language"}`` in that order, written
  by ``json.dump`` (``NaN`` for ``acc5`` below 5 classes), with ``task`` ``zeroshot_classification`` or
  ``zeroshot_retrieval`` and the metric keys of ``metrics.cb_*``.

``build_csv`` is ``clip_benchmark build``: a row per file, the metrics and the other fields as columns,
plus ``model_fullname`` = ``"{model} {pretrained}"``; kontrast orders the columns (CLIP_benchmark takes
a set's order, which changes from run to run).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import KontrastError

FIELDS = ("dataset", "model", "pretrained", "task", "metrics", "language")
FIRST_COLUMNS = ("dataset", "model", "pretrained", "model_fullname", "task", "language")


def result_name(dataset: str, model: str, pretrained: str, language: str, task: str) -> str:
    """The file name ``clip_benchmark eval`` gives this run's results (its default ``--output``)."""
    dataset_slug = (dataset.removeprefix("wds/")).replace("/", "_")
    path = os.path.expanduser(pretrained)
    pretrained_slug = os.path.basename(path.rstrip("/")) if os.path.exists(path) else pretrained
    pretrained_slug = pretrained_slug.replace("/", "_")
    return f"{dataset_slug}_{pretrained_slug}_{model.replace('/', '_')}_{language}_{task}.json"


def result_record(
    dataset: str, model: str, pretrained: str, task: str, metrics: dict[str, float], language: str
) -> dict[str, Any]:
    """The JSON object, with CLIP_benchmark's keys in its order."""
    return {
        "dataset": dataset,
        "model": model,
        "pretrained": pretrained,
        "task": task,
        "metrics": dict(metrics),
        "language": language,
    }


def write_result(record: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``record`` as ``json.dump`` does there (same separators, ``NaN`` allowed), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f)
    os.replace(tmp, path)
    return path


def is_result(data: Any) -> bool:
    """Whether a parsed JSON object is a CLIP_benchmark result (has its six keys)."""
    return isinstance(data, dict) and all(k in data for k in FIELDS) and isinstance(data["metrics"], dict)


def find_results(paths: Sequence[str | os.PathLike]) -> list[tuple[Path, dict[str, Any]]]:
    """CLIP_benchmark result files among ``paths`` (files, or folders searched recursively), sorted by path.

    Other JSON files (kontrast's ``results.json``, unrelated files) in a folder are passed over; a file
    named explicitly must be a result.
    """
    found: list[tuple[Path, dict[str, Any]]] = []
    for p in paths:
        path = Path(p)
        explicit = path.is_file()
        files = [path] if explicit else sorted(path.rglob("*.json")) if path.is_dir() else []
        if not explicit and not path.is_dir():
            raise KontrastError(f"no such file or folder: {path}")
        for f in files:
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                if explicit:
                    raise KontrastError(f"cannot read {f}: {exc}") from exc
                continue
            if is_result(data):
                found.append((f, data))
            elif explicit:
                raise KontrastError(f"{f} is not a CLIP_benchmark result (keys {', '.join(FIELDS)})")
    return found


def csv_rows(results: Sequence[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """``(columns, rows)`` of ``clip_benchmark build``: metrics and fields flattened, plus ``model_fullname``."""
    rows, seen = [], {}
    for data in results:
        row: dict[str, Any] = dict(data["metrics"])
        row.update({k: v for k, v in data.items() if k != "metrics"})
        row["model_fullname"] = f"{row['model']} {row['pretrained']}"
        rows.append(row)
        seen.update(dict.fromkeys(row))
    columns = [c for c in FIRST_COLUMNS if c in seen] + [c for c in seen if c not in FIRST_COLUMNS]
    return columns, rows


def build_csv(results: Sequence[dict[str, Any]], out: str | os.PathLike) -> Path:
    """Write the CSV ``clip_benchmark build`` writes for these results (same columns and cells)."""
    columns, rows = csv_rows(results)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return out
