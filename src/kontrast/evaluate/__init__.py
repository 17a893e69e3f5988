"""Evaluation of CLIP models on any dataset: zero-shot accuracy, retrieval recall@k, linear probes.

The counterpart of LAION's CLIP_benchmark for every model ``kontrast.load`` reads. ``evaluate(task,
model, data, options)`` returns a results record and writes ``results.json`` / ``results.md`` / plots;
``zeroshot_eval``, ``retrieval_eval`` and ``linear_probe_eval`` return just the metrics. Each task has
its own options object (``options``). Datasets are described in ``datasets`` (CLIP_benchmark's folders
in ``cb_layout``), metric keys in ``report``, the feature cache in ``features``.
"""

from __future__ import annotations

from .datasets import EvalDataset, open_dataset
from .features import Features, default_cache_dir, image_features, text_features
from .options import LinearProbeOptions, RetrievalOptions, RunOptions, ZeroShotOptions
from .report import comparison_html, comparison_markdown, load_results, write_results
from .runner import TASKS, evaluate, linear_probe_eval, retrieval_eval, zeroshot_eval

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
