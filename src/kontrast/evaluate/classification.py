"""Zero-shot classification of a labelled dataset: accuracy, per-class recall, confusions.

The class list is the dataset's (class folders, ``--classnames``) or else the sorted distinct labels.
Every class gets a prompt-ensemble classifier from ``kontrast.zeroshot.build_classifier``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KontrastError
from . import metrics as M
from .datasets import EvalDataset
from .features import Features

logger = logging.getLogger(__name__)

CONFUSION_PLOT_MAX = 50  # classes; above that, the most-confused pairs are listed instead
MOST_CONFUSED = 20


def labelled(features: Features, dataset: EvalDataset) -> tuple[np.ndarray, list[str]]:
    """Rows of ``features`` that have a label, and those labels; none at all -> ``KontrastError``."""
    rows = [i for i, lab in enumerate(features.labels) if lab is not None]
    if not rows:
        raise KontrastError(
            f"no record in {dataset.spec} has the label field '{dataset.label_field}'; "
            "pass --label-field with a field the records have"
        )
    if len(rows) < len(features.labels):
        logger.warning(
            "%d of %d records in %s have no '%s' and are left out",
            len(features.labels) - len(rows),
            len(features.labels),
            dataset.spec,
            dataset.label_field,
        )
    return np.asarray(rows, dtype=np.int64), [features.labels[i] for i in rows]


def class_list(dataset: EvalDataset, labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(class ids, display names)``: the dataset's class list, or the sorted distinct labels."""
    if dataset.classes is not None:
        return list(dataset.classes), list(dataset.classnames or dataset.classes)
    classes = sorted(set(labels))
    return classes, classes


def label_indices(labels: Sequence[str], classes: Sequence[str], where: str, class_source: str) -> np.ndarray:
    """Class index of every label; a label outside the class list -> ``KontrastError`` naming it."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(labels), dtype=np.int64)
    for n, lab in enumerate(labels):
        if lab not in index:
            raise KontrastError(
                f"label '{lab}' in {where} is not in the class list ({class_source}); "
                "add it there or fix the data"
            )
        out[n] = index[lab]
    return out


def most_confused(
    predictions: np.ndarray, labels: np.ndarray, names: Sequence[str], top: int = MOST_CONFUSED
) -> list[dict[str, Any]]:
    """The most frequent (true, predicted) mistakes, without building a C x C matrix."""
    totals = Counter(labels.tolist())
    pairs = Counter((int(t), int(p)) for t, p in zip(labels, predictions) if t != p)
    return [
        {"true": names[t], "predicted": names[p], "count": n, "fraction": n / totals[t]}
        for (t, p), n in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    ]


def classification_report(scores: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> tuple[dict, dict]:
    """``(metrics, details)`` from class scores [N, C] and true class indices [N]."""
    num_classes = len(names)
    predictions = scores.argmax(axis=1)
    metrics = {
        "top1": M.topk_accuracy(scores, labels, 1),
        "top5": M.topk_accuracy(scores, labels, 5),
        "mean_per_class_recall": M.mean_per_class_recall(predictions, labels, num_classes),
    }
    recall = M.per_class_recall(predictions, labels, num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    per_class = [
        {"class": names[c], "n": int(counts[c]), "top1": float(recall[c])}
        for c in range(num_classes)
        if counts[c] > 0
    ]
    details: dict[str, Any] = {
        "n_images": len(labels),
        "n_classes": num_classes,
        "n_classes_with_images": int((counts > 0).sum()),
        "per_class": per_class,
        "most_confused": most_confused(predictions, labels, names),
    }
    if num_classes <= CONFUSION_PLOT_MAX:
        details["confusion_matrix"] = M.confusion_matrix(predictions, labels, num_classes).tolist()
    return metrics, details


def multilabel_targets(labels: Sequence[str], num_classes: int, where: str) -> np.ndarray:
    """0/1 targets [N, C] from ``cb_layout`` multilabel strings; a vector of another length -> ``KontrastError``."""
    from .cb_layout import decode_multilabel

    targets = np.zeros((len(labels), num_classes), dtype=bool)
    for row, label in enumerate(labels):
        n, positives = decode_multilabel(label)
        if n != num_classes:
            raise KontrastError(
                f"a .npy label in {where} has {n} entries but there are {num_classes} class names; "
                "the vector needs one 0/1 entry per line of classnames.txt"
            )
        targets[row, positives] = True
    return targets


def multilabel_report(scores: np.ndarray, targets: np.ndarray, names: Sequence[str]) -> tuple[dict, dict]:
    """``(metrics, details)`` of a multi-label set: ``mean_average_precision`` and the AP of each class."""
    per_class = []
    for c, name in enumerate(names):
        ap = M.cb_mean_average_precision(scores[:, c : c + 1], targets[:, c : c + 1])
        per_class.append({"class": name, "n": int(targets[:, c].sum()), "average_precision": ap})
    metrics = {"mean_average_precision": M.cb_mean_average_precision(scores, targets)}
    details: dict[str, Any] = {
        "n_images": len(targets),
        "n_classes": len(names),
        "n_classes_without_positives": int((targets.sum(axis=0) == 0).sum()),
        "per_class_ap": per_class,
    }
    return metrics, details


def run_zeroshot(
    model: Any,
    tokenizer: Callable,
    dataset: EvalDataset,
    features: Features,
    templates: str | Sequence[str] | None = None,
    classifier_cache_dir: str | None = None,
    use_cache: bool = True,
    progress: Callable[[int], None] | None = None,
    out_dir: Path | None = None,
    long_text: str = "truncate",
) -> tuple[dict, dict, dict]:
    """``(metrics, details, CLIP_benchmark metrics)`` of ``dataset``; draws the confusion matrix into ``out_dir``.

    Scores are the cosine similarities of image and class embeddings: rankings (top-k, average
    precision) need nothing else, and unlike softmax probabilities they never underflow into ties.
    """
    import torch

    from .. import zeroshot

    rows, labels = labelled(features, dataset)
    classes, names = class_list(dataset, labels)
    spec = templates if templates is not None else (dataset.templates or "imagenet")
    template_list = zeroshot.load_templates(spec)
    classifier = zeroshot.build_classifier(
        model,
        tokenizer,
        names,
        template_list,
        cache_dir=classifier_cache_dir,
        progress=progress,
        cache=use_cache,
        long_text=long_text,
    )
    image = torch.from_numpy(features.image[rows]).float()
    scores = (image @ classifier.float().cpu().T).numpy()  # [N, C] cosine similarities
    if dataset.info.get("dataset_type") == "multilabel":
        targets = multilabel_targets(labels, len(names), dataset.spec)
        metrics, details = multilabel_report(scores, targets, names)
        cb_metrics = dict(metrics)
    else:
        source = "--classnames / class folders" if dataset.classes is not None else "distinct labels"
        y = label_indices(labels, classes, dataset.spec, source)
        metrics, details = classification_report(scores, y, names)
        cb_metrics = M.cb_classification_metrics(scores, y, len(names))
    details["templates"] = (
        template_list if len(template_list) <= 10 else (spec if isinstance(spec, str) else template_list)
    )
    details["n_templates"] = len(template_list)
    if out_dir is not None and "confusion_matrix" in details:
        from .plots import plot_confusion

        details["plots"] = [
            plot_confusion(np.asarray(details["confusion_matrix"]), names, out_dir / "confusion_matrix.png")
        ]
    return metrics, details, cb_metrics
