"""Run one evaluation task end to end: resolve the data, get (cached) features, score, write the report.

```python
from kontrast.evaluate import ZeroShotOptions, RunOptions, evaluate, zeroshot_eval
zeroshot_eval("default", "shared/data/emoji/emoji-google-val_concepts-000000.tar",
              ZeroShotOptions(label_field="name", templates="an emoji of a {}."))
record = evaluate("retrieval", model, "captions.csv", preprocess=preprocess, out_dir="runs/r1")
```
``model`` is a loaded CLIP (``preprocess`` / ``tokenizer`` default to the ones its record describes) or anything
``kontrast.load`` accepts. Each task takes its own options object (``options``); what every task shares
(feature cache, batch size, workers, progress) is a ``RunOptions``. ``evaluate`` returns the whole
results record (see ``report``) and leaves the model in the train/eval mode it was given in; the
``*_eval`` helpers return the record's ``metrics``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KontrastError
from .classification import label_indices, labelled, run_zeroshot
from .datasets import EvalDataset, has_split, open_dataset, split_subfolders
from .features import Features, default_cache_dir, image_features
from .linear_probe import encode_labels, linear_probe
from .options import (
    CB_TASK_NAMES,
    OPTIONS_OF_TASK,
    TASKS,
    Data,
    LinearProbeOptions,
    RetrievalOptions,
    RunOptions,
    TaskOptions,
    ZeroShotOptions,
)
from .report import write_results
from .retrieval import run_retrieval

logger = logging.getLogger(__name__)



def normalise_task(task: str) -> str:
    """``zeroshot`` / ``retrieval`` / ``linear-probe`` from kontrast's or CLIP_benchmark's spelling."""
    aliases = {v: k for k, v in CB_TASK_NAMES.items()}
    name = aliases.get(task, task.replace("_", "-"))
    if name not in TASKS:
        raise KontrastError(f"unknown task {task!r}; use one of: {', '.join(TASKS)} (or auto on the CLI)")
    return name


def model_preprocess(model: Any) -> Callable:
    """The eval transform of a loaded model: the one place evaluation builds preprocessing itself.

    Used only when the caller passed a model object without its ``preprocess``: the transform its record
    describes (its own normalisation, interpolation and resize mode).
    """
    from ..record import build_preprocess, record_of

    return build_preprocess(record_of(model))


def _resolve_model(
    model: Any, preprocess: Callable | None, tokenizer: Callable | None, model_name: str | None
) -> tuple[Any, Callable, Callable, str]:
    if isinstance(model, (str, os.PathLike)):
        from ..api import load

        name = os.fspath(model)
        model, loaded_pre, loaded_tok = load(name)
        return model, preprocess or loaded_pre, tokenizer or loaded_tok, model_name or name
    if preprocess is None:
        preprocess = model_preprocess(model)
    if tokenizer is None:
        from ..record import build_tokenizer, record_of

        tokenizer = build_tokenizer(record_of(model))
    name = (
        model_name
        or getattr(model, "checkpoint_path", None)
        or getattr(model.config, "name", None)
        or "model"
    )
    return model, preprocess, tokenizer, str(name)


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Put every submodule in eval mode, and give each its own mode back afterwards (even on error).

    Per module, not ``model.train(flag)``: a fine-tuning loop may keep a locked tower in eval mode
    while the rest trains, and evaluating in between must not change that.
    """
    modes = [(m, m.training) for m in model.modules()] if hasattr(model, "modules") else []
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _is_split_folder(data: Data) -> bool:
    """A dataset folder made of splits: only split subfolders, or .tar/.csv files at the top."""
    if not isinstance(data, (str, os.PathLike)) or not os.path.isdir(data):
        return False
    root = Path(data)
    return bool(split_subfolders(root)) or any(p.name.endswith((".tar", ".csv")) for p in root.iterdir())


class _Context:
    """What every task needs: the model triple and the run options."""

    def __init__(self, model: Any, preprocess: Callable, tokenizer: Callable, run: RunOptions) -> None:
        self.model, self.preprocess, self.tokenizer, self.run = model, preprocess, tokenizer, run
        self.cache_dir = Path(run.cache_dir).expanduser() if run.cache_dir else None

    def progress(self, stage: str) -> Callable[[int], None] | None:
        report = self.run.progress
        return (lambda n: report(stage, n)) if report else None

    def features(self, dataset: EvalDataset) -> Features:
        run = self.run
        return image_features(
            self.model,
            self.preprocess,
            dataset,
            self.cache_dir,
            run.use_cache,
            run.batch_size,
            run.workers,
            self.progress("images"),
        )

    @property
    def classifier_cache(self) -> str | None:
        return str(self.cache_dir / "zeroshot") if self.cache_dir else None

    @property
    def text_cache(self) -> str:
        return str(self.cache_dir or default_cache_dir())


# ---- the three tasks ---------------------------------------------------------------------------------
def _zeroshot(ctx: _Context, data: Data, opts: ZeroShotOptions, out: Path | None) -> dict[str, Any]:
    dataset = open_dataset(
        data, opts.split, label_field=opts.label_field, classnames=opts.classnames, language=opts.language
    )
    feats = ctx.features(dataset)
    metrics, details, cb_metrics = run_zeroshot(
        ctx.model,
        ctx.tokenizer,
        dataset,
        feats,
        opts.templates,
        ctx.classifier_cache,
        ctx.run.use_cache,
        ctx.progress("prompts"),
        out,
        long_text=ctx.run.long_text,
    )
    details["n_skipped_images"] = feats.skipped
    return {"dataset": dataset.describe(), "metrics": metrics, "details": details, "cb_metrics": cb_metrics}


def _retrieval(ctx: _Context, data: Data, opts: RetrievalOptions, out: Path | None) -> dict[str, Any]:
    dataset = open_dataset(data, opts.split, caption_field=opts.caption_field, need="captions")
    feats = ctx.features(dataset)
    metrics, details, cb_metrics = run_retrieval(
        ctx.model,
        ctx.tokenizer,
        dataset,
        feats,
        ctx.text_cache,
        ctx.run.use_cache,
        ctx.progress("captions"),
        out,
        opts.recall_k,
        long_text=ctx.run.long_text,
    )
    details["n_skipped_images"] = feats.skipped
    return {"dataset": dataset.describe(), "metrics": metrics, "details": details, "cb_metrics": cb_metrics}


def _probe_data(data: Data, opts: LinearProbeOptions) -> tuple[EvalDataset, EvalDataset, EvalDataset | None]:
    fields = {"label_field": opts.label_field, "classnames": opts.classnames}
    split, train_split, val_split = opts.split, opts.train_split, opts.val_split
    split_folder = _is_split_folder(data)
    if split is None and split_folder:
        split = "test" if has_split(data, "test") else "val" if has_split(data, "val") else None
    test = open_dataset(data, split, **fields)
    if opts.train_data is not None:
        train = open_dataset(opts.train_data, train_split, **fields)
    elif split_folder and has_split(data, train_split or "train"):
        train = open_dataset(data, train_split or "train", **fields)
    else:
        raise KontrastError(
            "the linear probe needs training data: pass --train-data (or --data a dataset folder "
            "with a train split)"
        )
    val = None
    if opts.val_data is not None:
        val = open_dataset(opts.val_data, val_split, **fields)
    elif split_folder and (val_split or "val") != split and has_split(data, val_split or "val"):
        val = open_dataset(data, val_split or "val", **fields)
    return test, train, val


def _labels(ctx: _Context, dataset: EvalDataset) -> tuple[np.ndarray, list[str]]:
    feats = ctx.features(dataset)
    rows, labels = labelled(feats, dataset)
    if dataset.classes is not None:
        label_indices(labels, dataset.classes, dataset.spec, "--classnames / class folders")
    return feats.image[rows], labels


def _linear_probe(ctx: _Context, data: Data, opts: LinearProbeOptions, out: Path | None) -> dict[str, Any]:
    test, train, val = _probe_data(data, opts)
    x_train, train_labels = _labels(ctx, train)
    x_test, test_labels = _labels(ctx, test)
    x_val, val_labels = _labels(ctx, val) if val is not None else (None, [])
    _classes, (y_train, y_test, y_val) = encode_labels(
        train_labels + val_labels, train_labels, test_labels, val_labels
    )
    report = ctx.run.progress
    metrics, details = linear_probe(
        x_train,
        y_train,
        x_test,
        y_test,
        x_val,
        y_val if val is not None else None,
        k_shots=opts.k_shots,
        seed=opts.seed,
        progress=(lambda msg: report(msg, 0)) if report else None,
    )
    if details["n_test_unseen_class"]:
        logger.warning(
            "%d test images have a class absent from train/val; they count as errors",
            details["n_test_unseen_class"],
        )
    if out is not None:
        from .plots import plot_c_sweep, plot_k_shot

        details["plots"] = [plot_c_sweep(details["c_sweep"], metrics["best_C"], out / "c_sweep.png")]
        if details["k_shot"]:
            details["plots"].append(plot_k_shot(details["k_shot"], metrics["top1"], out / "k_shot.png"))
    dataset = {**test.describe(), "train": train.describe(), "val": val.describe() if val else None}
    return {"dataset": dataset, "metrics": metrics, "details": details, "cb_metrics": None}


_RUNNERS = {"zeroshot": _zeroshot, "retrieval": _retrieval, "linear-probe": _linear_probe}


def evaluate(
    task: str,
    model: Any,
    data: Data,
    options: TaskOptions | None = None,
    *,
    preprocess: Callable | None = None,
    tokenizer: Callable | None = None,
    model_name: str | None = None,
    run: RunOptions | None = None,
    out_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run ``task`` (``zeroshot``, ``retrieval`` or ``linear-probe``) and return the results record.

    ``options`` is the task's options object (``ZeroShotOptions``, ``RetrievalOptions``,
    ``LinearProbeOptions``; default: its defaults). With ``out_dir``, writes ``results.json``,
    ``results.md`` and the plots there. The model's train/eval mode is restored afterwards.
    """
    task = normalise_task(task)
    expected = OPTIONS_OF_TASK[task]
    if options is None:
        options = expected()
    elif not isinstance(options, expected):
        raise KontrastError(
            f"task {task!r} takes {expected.__name__}, not {type(options).__name__}; "
            "each task has its own options object"
        )
    start = time.time()
    model, preprocess, tokenizer, name = _resolve_model(model, preprocess, tokenizer, model_name)
    out = Path(out_dir) if out_dir is not None else None
    with eval_mode(model):
        ctx = _Context(model, preprocess, tokenizer, run or RunOptions())
        result = _RUNNERS[task](ctx, data, options, out)
    from .. import __version__
    from ..record import fingerprint

    record = {
        "kontrast_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "task": task,
        "model": name,
        "model_fingerprint": fingerprint(model),
        "dataset": result["dataset"],
        "metrics": result["metrics"],
        "details": result["details"],
        "elapsed_s": round(time.time() - start, 2),
    }
    if result["cb_metrics"] is not None:
        record["clip_benchmark"] = {"task": CB_TASK_NAMES[task], "metrics": result["cb_metrics"]}
    if out is not None:
        write_results(record, out)
    return record


def zeroshot_eval(model: Any, data: Data, options: ZeroShotOptions | None = None, **kwargs: Any) -> dict[str, float]:
    """Zero-shot ``top1``, ``top5``, ``mean_per_class_recall`` (kwargs: ``evaluate``'s keywords)."""
    return evaluate("zeroshot", model, data, options, **kwargs)["metrics"]


def retrieval_eval(model: Any, data: Data, options: RetrievalOptions | None = None, **kwargs: Any) -> dict[str, Any]:
    """Retrieval recall@k per direction, ``mean_rank`` and ``median_rank`` (kwargs: ``evaluate``'s keywords)."""
    return evaluate("retrieval", model, data, options, **kwargs)["metrics"]


def linear_probe_eval(
    model: Any, data: Data, options: LinearProbeOptions | None = None, **kwargs: Any
) -> dict[str, float]:
    """Linear-probe ``top1``, ``best_C`` and ``top1_{k}shot`` (kwargs: ``evaluate``'s keywords)."""
    return evaluate("linear-probe", model, data, options, **kwargs)["metrics"]
