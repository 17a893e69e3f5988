"""Writing one run's results (``results.json``, ``results.md``) and merging runs into a comparison table.

``results.json`` holds ``kontrast_version``, ``date`` (UTC, ISO 8601), ``task``, ``model``,
``model_fingerprint``, ``dataset`` (spec, resolved paths, kind, split, fields), ``metrics`` and
``details`` (per-class table, confusions, C sweep, curves, ...). Metric keys, by task:

* zeroshot: ``top1``, ``top5``, ``mean_per_class_recall``
* retrieval: ``image_to_text_R@{1,5,10}``, ``text_to_image_R@{1,5,10}``, and ``mean_rank`` /
  ``median_rank`` as ``{"image_to_text": x, "text_to_image": y}`` (1-based rank of the first correct item)
* linear-probe: ``top1``, ``best_C``, ``top1_{k}shot`` for each k

Accuracies and recalls are fractions in [0, 1].
"""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import KontrastError

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PER_CLASS_ROWS_MD = 50


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return "" if value is None else str(value)


def _cell(text: Any) -> str:
    return _fmt(text).replace("|", "\\|").replace("\n", " ")


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """``{"mean_rank": {"image_to_text": 3}}`` -> ``{"mean_rank.image_to_text": 3}``; scalars unchanged."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    return flat


def _table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None
) -> list[str]:
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def results_markdown(record: dict[str, Any]) -> str:
    """A markdown page for one run: what was evaluated, the metrics, and the task's tables and plots."""
    ds = record["dataset"]
    lines = [f"# kontrast eval: {record['task']}", ""]
    lines += _table(
        ["", ""],
        [
            ("model", record["model"]),
            ("fingerprint", record["model_fingerprint"]),
            ("dataset", ds["spec"]),
            ("kontrast", record["kontrast_version"]),
            ("date", record["date"]),
        ],
    )
    lines += ["", "## Metrics", ""]
    lines += _table(["metric", "value"], flatten_metrics(record["metrics"]).items(), ["---", "---:"])
    details = record.get("details", {})
    if details.get("per_class"):
        rows = sorted(details["per_class"], key=lambda r: (r["top1"], r["class"]))
        title = "## Per-class top-1" + (
            f" (worst {PER_CLASS_ROWS_MD} of {len(rows)}; all in per_class.csv)"
            if len(rows) > PER_CLASS_ROWS_MD
            else " (worst first)"
        )
        lines += ["", title, ""]
        lines += _table(
            ["class", "n", "top-1"],
            [(r["class"], r["n"], r["top1"]) for r in rows[:PER_CLASS_ROWS_MD]],
            ["---", "---:", "---:"],
        )
    if details.get("most_confused"):
        lines += ["", "## Most confused pairs", ""]
        lines += _table(
            ["true", "predicted", "count", "share of true class"],
            [(p["true"], p["predicted"], p["count"], p["fraction"]) for p in details["most_confused"]],
            ["---", "---", "---:", "---:"],
        )
    if details.get("k_shot"):
        lines += ["", "## k-shot", ""]
        lines += _table(
            ["k", "train samples", "C", "top-1"],
            [(p["k"], p["n_train"], f"{p['C']:.3g}", p["top1"]) for p in details["k_shot"]],
            ["---:"] * 4,
        )
    if details.get("c_sweep"):
        lines += ["", f"## C sweep (validation: {details.get('val_source', '')})", ""]
        lines += _table(
            ["C", "val top-1"],
            [(f"{p['C']:.3g}", p["val_top1"]) for p in details["c_sweep"]],
            ["---:", "---:"],
        )
    if details.get("recall_curve"):
        curve = details["recall_curve"]
        ks = list(next(iter(curve.values())))
        lines += ["", "## Recall@k", ""]
        lines += _table(
            ["direction", *[f"R@{k}" for k in ks]],
            [(d, *[c[k] for k in ks]) for d, c in curve.items()],
            ["---"] + ["---:"] * len(ks),
        )
    for plot in details.get("plots", []):
        lines += ["", f"![{Path(plot).stem}]({plot})"]
    return "\n".join(lines) + "\n"


def write_results(record: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``results.json``, ``results.md`` (and ``per_class.csv`` for zero-shot) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_JSON).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / RESULTS_MD).write_text(results_markdown(record), encoding="utf-8")
    per_class = record.get("details", {}).get("per_class")
    if per_class:
        with (out / "per_class.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["class", "n", "top1"])
            writer.writeheader()
            writer.writerows(per_class)
    return out / RESULTS_JSON


# ---- comparison of several runs ------------------------------------------------------------------------
def load_results(paths: Sequence[str | Path], required: bool = True) -> list[dict[str, Any]]:
    """Records from run folders (or ``results.json`` files); folders are searched recursively.

    ``required=False``: a folder without ``results.json`` (or another JSON file) is passed over.
    """
    records = []
    for p in paths:
        path = Path(p)
        files = [path] if path.is_file() else sorted(path.rglob(RESULTS_JSON)) if path.is_dir() else []
        if not required:
            files = [f for f in files if f.name == RESULTS_JSON]
        if not files:
            if not required:
                continue
            raise KontrastError(f"no {RESULTS_JSON} in {path}; pass folders written by 'kontrast eval --out'")
        for f in files:
            try:
                record = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise KontrastError(f"cannot read {f}: {exc}; is it a kontrast results.json?") from exc
            if not isinstance(record, dict) or "metrics" not in record or "task" not in record:
                raise KontrastError(f"{f} is not a kontrast results.json (no 'task' / 'metrics')")
            record["_path"] = str(f.parent)
            records.append(record)
    return records


def _metric_columns(records: Sequence[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in records:
        for key in flatten_metrics(r["metrics"]):
            if key not in seen:
                seen.append(key)
    shots = sorted(
        (k for k in seen if k.startswith("top1_") and k.endswith("shot")),
        key=lambda k: int(k[5:-4]) if k[5:-4].isdigit() else 0,
    )
    return [k for k in seen if k not in shots] + shots


def comparison_tables(records: Sequence[dict[str, Any]]) -> list[tuple[str, list[str], list[list[Any]]]]:
    """One ``(task, header, rows)`` table per task, a row per run (``run`` = the run folder's name)."""
    tables = []
    for task in dict.fromkeys(r["task"] for r in records):
        runs = [r for r in records if r["task"] == task]
        columns = _metric_columns(runs)
        header = ["run", "model", "fingerprint", "dataset", *columns]
        rows = [
            [
                Path(r.get("_path", "")).name,
                r.get("model", ""),
                r.get("model_fingerprint", ""),
                r.get("dataset", {}).get("spec", ""),
                *[flatten_metrics(r["metrics"]).get(c) for c in columns],
            ]
            for r in runs
        ]
        tables.append((task, header, rows))
    return tables


def comparison_markdown(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: a heading and a table per task."""
    lines: list[str] = []
    for task, header, rows in comparison_tables(records):
        lines += [f"## {task}", ""]
        lines += _table(header, rows, ["---"] * 4 + ["---:"] * (len(header) - 4))
        lines.append("")
    return "\n".join(lines)


def comparison_html(records: Sequence[dict[str, Any]]) -> str:
    """A standalone HTML page with a table per task."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>kontrast eval report</title>",
        (
            "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin-bottom:2em}"
            "td,th{border:1px solid #ccc;padding:4px 8px}td.n{text-align:right}</style></head><body>"
        ),
        "<h1>kontrast eval report</h1>",
    ]
    for task, header, rows in comparison_tables(records):
        parts.append(
            f"<h2>{html.escape(task)}</h2><table><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in header)
            + "</tr>"
        )
        for row in rows:
            cells = "".join(
                f"<td class='n'>{html.escape(_fmt(v))}</td>" if i >= 4 else f"<td>{html.escape(_fmt(v))}</td>"
                for i, v in enumerate(row)
            )
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
