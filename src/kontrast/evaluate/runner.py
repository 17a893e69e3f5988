"""Run an evaluation task end to end: resolve the data, get (cached) features, score, write the report.

```python
from kontrast.evaluate import zeroshot_eval, retrieval_eval, linear_probe_eval, evaluate
zeroshot_eval("default", "shared/data/emoji/emoji-google-val_concepts-000000.tar", label_field="name",
              templates="an emoji of a {}.")  # -> {"top1": ..., "top5": ..., "mean_per_class_recall": ...}
record = evaluate("retrieval", model, "captions.csv", preprocess=preprocess, out_dir="runs/r1")
```
``model`` is a loaded CLIP (then pass ``preprocess``; ``tokenizer`` defaults to the model's) or anything
``kontrast.load`` accepts. ``evaluate`` returns the whole results record (see ``report``); the
``*_eval`` helpers return its ``metrics``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KontrastError
from .classification import label_indices, labelled, run_zeroshot
from .datasets import EvalDataset, has_split, open_dataset, split_subfolders
from .features import Features, default_cache_dir, image_features
from .linear_probe import K_SHOTS, encode_labels, linear_probe
from .report import write_results
from .retrieval import run_retrieval

logger = logging.getLogger(__name__)

TASKS = ("zeroshot", "retrieval", "linear-probe")
Data = str | os.PathLike | Sequence[str | os.PathLike]
Progress = Callable[[str, int], None]


def _resolve_model(
    model: Any, preprocess: Callable | None, tokenizer: Callable | None, model_name: str | None
) -> tuple[Any, Callable, Callable, str]:
    if isinstance(model, (str, os.PathLike)):
        from ..api import load

        name = os.fspath(model)
        model, loaded_pre, loaded_tok = load(name)
        return model, preprocess or loaded_pre, tokenizer or loaded_tok, model_name or name
    if preprocess is None:
        from ..preprocess import Preprocess

        preprocess = Preprocess(model.image_size)
    if tokenizer is None:
        from ..api import get_tokenizer

        tokenizer = get_tokenizer(model)
    name = (
        model_name
        or getattr(model, "checkpoint_path", None)
        or getattr(model.config, "name", None)
        or "model"
    )
    return model, preprocess, tokenizer, str(name)


def _is_split_folder(data: Data) -> bool:
    """A dataset folder made of splits: only split subfolders, or .tar/.csv files at the top."""
    if not isinstance(data, (str, os.PathLike)) or not os.path.isdir(data):
        return False
    root = Path(data)
    return bool(split_subfolders(root)) or any(p.name.endswith((".tar", ".csv")) for p in root.iterdir())


class _Context:
    """What every task needs: the model triple and the feature options."""

    def __init__(
        self, model, preprocess, tokenizer, cache_dir, use_cache, batch_size, workers, progress
    ) -> None:
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.use_cache, self.batch_size, self.workers, self.progress = (
            use_cache,
            batch_size,
            workers,
            progress,
        )

    def features(self, dataset: EvalDataset) -> Features:
        image_progress = (lambda n: self.progress("images", n)) if self.progress else None
        return image_features(
            self.model,
            self.preprocess,
            dataset,
            self.cache_dir,
            self.use_cache,
            self.batch_size,
            self.workers,
            image_progress,
        )

    @property
    def classifier_cache(self) -> str | None:
        return str(self.cache_dir / "zeroshot") if self.cache_dir else None


def _probe_data(
    ctx: _Context,
    data: Data,
    split: str | None,
    train_data: Data | None,
    val_data: Data | None,
    train_split: str | None,
    val_split: str | None,
    fields: dict[str, Any],
):
    split_folder = _is_split_folder(data)
    if split is None and split_folder:
        split = "test" if has_split(data, "test") else "val" if has_split(data, "val") else None
    test = open_dataset(data, split, **fields)
    if train_data is not None:
        train = open_dataset(train_data, train_split, **fields)
    elif split_folder and has_split(data, train_split or "train"):
        train = open_dataset(data, train_split or "train", **fields)
    else:
        raise KontrastError(
            "the linear probe needs training data: pass --train-data (or --data a dataset folder "
            "with a train split)"
        )
    val = None
    if val_data is not None:
        val = open_dataset(val_data, val_split, **fields)
    elif split_folder and (val_split or "val") != split and has_split(data, val_split or "val"):
        val = open_dataset(data, val_split or "val", **fields)
    return test, train, val


def _labels(ctx: _Context, dataset: EvalDataset) -> tuple[np.ndarray, list[str]]:
    feats = ctx.features(dataset)
    rows, labels = labelled(feats, dataset)
    if dataset.classes is not None:
        label_indices(labels, dataset.classes, dataset.spec, "--classnames / class folders")
    return feats.image[rows], labels


def _run_linear_probe(
    ctx: _Context,
    test: EvalDataset,
    train: EvalDataset,
    val: EvalDataset | None,
    k_shots: Sequence[int],
    seed: int,
    out_dir: Path | None,
) -> tuple[dict, dict]:
    x_train, train_labels = _labels(ctx, train)
    x_test, test_labels = _labels(ctx, test)
    x_val, val_labels = _labels(ctx, val) if val is not None else (None, [])
    _classes, (y_train, y_test, y_val) = encode_labels(
        train_labels + val_labels, train_labels, test_labels, val_labels
    )
    step = (lambda msg: ctx.progress(msg, 0)) if ctx.progress else None
    metrics, details = linear_probe(
        x_train,
        y_train,
        x_test,
        y_test,
        x_val,
        y_val if val is not None else None,
        k_shots=k_shots,
        seed=seed,
        progress=step,
    )
    if details["n_test_unseen_class"]:
        logger.warning(
            "%d test images have a class absent from train/val; they count as errors",
            details["n_test_unseen_class"],
        )
    if out_dir is not None:
        from .plots import plot_c_sweep, plot_k_shot

        details["plots"] = [plot_c_sweep(details["c_sweep"], metrics["best_C"], out_dir / "c_sweep.png")]
        if details["k_shot"]:
            details["plots"].append(plot_k_shot(details["k_shot"], metrics["top1"], out_dir / "k_shot.png"))
    return metrics, details


def evaluate(
    task: str,
    model: Any,
    data: Data,
    *,
    preprocess: Callable | None = None,
    tokenizer: Callable | None = None,
    model_name: str | None = None,
    split: str | None = None,
    label_field: str | None = None,
    caption_field: str | None = None,
    classnames: str | os.PathLike | None = None,
    templates: str | Sequence[str] | None = None,
    train_data: Data | None = None,
    val_data: Data | None = None,
    train_split: str | None = None,
    val_split: str | None = None,
    k_shots: Sequence[int] = K_SHOTS,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    workers: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run ``task`` (``zeroshot``, ``retrieval`` or ``linear-probe``) and return the results record.

    With ``out_dir``, writes ``results.json``, ``results.md`` and the plots there. ``progress(stage, n)``
    is called as images / prompts / captions are embedded (``n`` items) and at probe steps (``n = 0``).
    """
    task = task.replace("_", "-")
    if task not in TASKS:
        raise KontrastError(f"unknown task {task!r}; use one of: {', '.join(TASKS)}")
    start = time.time()
    model, preprocess, tokenizer, name = _resolve_model(model, preprocess, tokenizer, model_name)
    model.eval()
    ctx = _Context(model, preprocess, tokenizer, cache_dir, use_cache, batch_size, workers, progress)
    out = Path(out_dir) if out_dir is not None else None
    fields = {"label_field": label_field, "caption_field": caption_field, "classnames": classnames}
    if task == "linear-probe":
        test, train, val = _probe_data(ctx, data, split, train_data, val_data, train_split, val_split, fields)
        metrics, details = _run_linear_probe(ctx, test, train, val, k_shots, seed, out)
        dataset_info = {**test.describe(), "train": train.describe(), "val": val.describe() if val else None}
    else:
        dataset = open_dataset(data, split, need="captions" if task == "retrieval" else "labels", **fields)
        feats = ctx.features(dataset)
        if task == "zeroshot":
            metrics, details = run_zeroshot(
                model, tokenizer, dataset, feats, templates, ctx.classifier_cache, use_cache, progress, out
            )
        else:
            metrics, details = run_retrieval(
                model,
                tokenizer,
                dataset,
                feats,
                str(ctx.cache_dir or default_cache_dir()),
                use_cache,
                progress,
                out,
            )
        details["n_skipped_images"] = feats.skipped
        dataset_info = dataset.describe()
    from .. import __version__
    from ..api import fingerprint

    record = {
        "kontrast_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "task": task,
        "model": name,
        "model_fingerprint": fingerprint(model),
        "dataset": dataset_info,
        "metrics": metrics,
        "details": details,
        "elapsed_s": round(time.time() - start, 2),
    }
    if out is not None:
        write_results(record, out)
    return record


def zeroshot_eval(model: Any, data: Data, **kwargs: Any) -> dict[str, float]:
    """Zero-shot ``top1``, ``top5``, ``mean_per_class_recall`` (kwargs: see ``evaluate``)."""
    return evaluate("zeroshot", model, data, **kwargs)["metrics"]


def retrieval_eval(model: Any, data: Data, **kwargs: Any) -> dict[str, Any]:
    """Retrieval recall@1/5/10 per direction, ``mean_rank`` and ``median_rank`` (kwargs: see ``evaluate``)."""
    return evaluate("retrieval", model, data, **kwargs)["metrics"]


def linear_probe_eval(model: Any, data: Data, **kwargs: Any) -> dict[str, float]:
    """Linear-probe ``top1``, ``best_C`` and ``top1_{k}shot`` (kwargs: see ``evaluate``)."""
    return evaluate("linear-probe", model, data, **kwargs)["metrics"]
