"""Evaluation of CLIP models on any dataset: zero-shot accuracy, retrieval recall@k, linear probes.

The counterpart of LAION's CLIP_benchmark for every model ``kontrast.load`` reads. ``evaluate(task,
model, data, options)`` returns a results record and writes ``results.json`` / ``results.md`` / plots;
``zeroshot_eval``, ``retrieval_eval`` and ``linear_probe_eval`` return just the metrics. Each task has
its own options object (``options``). Datasets are described in ``datasets`` (CLIP_benchmark's folders
in ``cb_layout``), metric keys in ``report``, the feature cache in ``features``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .options import TASKS, LinearProbeOptions, RetrievalOptions, RunOptions, ZeroShotOptions

# The rest loads on first use (PEP 562), so that the CLI can read ``options`` without importing torch.
_LAZY = {
    "EvalDataset": "datasets",
    "open_dataset": "datasets",
    "Features": "features",
    "default_cache_dir": "features",
    "image_features": "features",
    "text_features": "features",
    "comparison_html": "report",
    "comparison_markdown": "report",
    "load_results": "report",
    "write_results": "report",
    "evaluate": "runner",
    "linear_probe_eval": "runner",
    "retrieval_eval": "runner",
    "zeroshot_eval": "runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in ("features", "datasets", "report", "runner", "metrics"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "TASKS",
    "EvalDataset",
    "Features",
    "LinearProbeOptions",
    "RetrievalOptions",
    "RunOptions",
    "ZeroShotOptions",
    "comparison_html",
    "comparison_markdown",
    "default_cache_dir",
    "evaluate",
    "image_features",
    "linear_probe_eval",
    "load_results",
    "open_dataset",
    "retrieval_eval",
    "text_features",
    "write_results",
    "zeroshot_eval",
]
