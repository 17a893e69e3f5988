"""Linear probes: logistic regression on frozen, L2-normalised image features (scikit-learn).

As in the CLIP paper, the inverse regularisation strength ``C`` is chosen on a validation split by a
log-space sweep: a coarse grid (1e-6 .. 1e6, every two decades), then a finer grid (half and whole
decades) around the coarse best. The model is refit with the best ``C`` on train + val and scored on
test. Without a validation split, a stratified 20% of train is held out (classes with a single
example stay in train; if every class has one, a random 20%).

k-shot probes sample ``k`` examples per class from train (fewer where a class has fewer; seeded),
choose ``C`` on the same validation split with the coarse grid only, fit on the k-shot sample alone
and score on test.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import KontrastError
from .options import K_SHOTS

logger = logging.getLogger(__name__)

COARSE_GRID = tuple(10.0**e for e in range(-6, 7, 2))  # 1e-6 .. 1e6
FINE_STEPS = (-1.0, -0.5, 0.5, 1.0)  # decades around the coarse best
HOLDOUT = 0.2
MAX_ITER = 1000


def fit_predict(
    C: float, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, max_iter: int = MAX_ITER
) -> np.ndarray:
    """Predicted labels of ``x_test`` after fitting a logistic regression on ``(x, y)``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    classes = np.unique(y)
    if len(classes) < 2:  # nothing to learn: always the one class seen
        return np.full(len(x_test), classes[0] if len(classes) else -1, dtype=np.int64)
    clf = LogisticRegression(C=C, max_iter=max_iter)
    # One BLAS thread: these problems are small, and on a busy CPU multi-threaded BLAS ran 50-300x slower.
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
        return clf.predict(x_test)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Fraction of equal entries (0 for no samples)."""
    return float((np.asarray(pred) == np.asarray(y)).mean()) if len(y) else 0.0


def sweep_C(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    grid: Sequence[float] = COARSE_GRID,
    refine: bool = True,
    max_iter: int = MAX_ITER,
) -> tuple[float, list[dict[str, float]]]:
    """``(best C, [{"C", "val_top1"}...])``: coarse log grid, then finer steps around the best.

    Ties go to the smaller ``C`` (the stronger regularisation).
    """
    scores: dict[float, float] = {}

    def score(c: float) -> None:
        if c not in scores:
            scores[c] = accuracy(fit_predict(c, x_train, y_train, x_val, max_iter), y_val)

    for c in grid:
        score(float(c))
    best = max(sorted(scores), key=lambda c: scores[c])
    if refine:
        for step in FINE_STEPS:
            score(float(best * 10.0**step))
        best = max(sorted(scores), key=lambda c: scores[c])
    return best, [{"C": c, "val_top1": scores[c]} for c in sorted(scores)]


def stratified_holdout(
    y: np.ndarray, fraction: float = HOLDOUT, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(train rows, val rows)``: about ``fraction`` of every class with 2+ samples goes to val."""
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        if len(rows) >= 2:
            n = max(1, round(fraction * len(rows)))
            val.extend(rng.choice(rows, size=min(n, len(rows) - 1), replace=False).tolist())
    if not val:  # every class has one sample: a plain random holdout
        n = max(1, round(fraction * len(y))) if len(y) > 1 else 0
        val = rng.choice(len(y), size=n, replace=False).tolist()
    val_rows = np.sort(np.asarray(val, dtype=np.int64))
    train_rows = np.setdiff1d(np.arange(len(y)), val_rows)
    return train_rows, val_rows


def sample_k_shot(y: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Rows with ``k`` samples per class (all of a class's samples when it has fewer), seeded."""
    rng = np.random.default_rng([seed, k])
    rows = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rows.extend(rng.choice(members, size=min(k, len(members)), replace=False).tolist())
    return np.sort(np.asarray(rows, dtype=np.int64))


def encode_labels(known: Sequence[str], *label_lists: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
    """``(classes, [index arrays])``: classes are the sorted ``known`` labels; other labels get -1."""
    classes = sorted(set(known))
    index = {c: i for i, c in enumerate(classes)}
    arrays = [np.asarray([index.get(lab, -1) for lab in labels], dtype=np.int64) for labels in label_lists]
    return classes, arrays


def linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    k_shots: Sequence[int] = K_SHOTS,
    seed: int = 0,
    grid: Sequence[float] = COARSE_GRID,
    refine: bool = True,
    max_iter: int = MAX_ITER,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics, details)`` of a full linear probe plus k-shot probes (integer class labels)."""
    if len(np.unique(y_train)) < 2:
        raise KontrastError("the linear probe needs at least 2 classes in the training data")
    if len(x_test) == 0:
        raise KontrastError("empty split: no test images for the linear probe")
    val_source = "given"
    if x_val is None or y_val is None or len(x_val) == 0:
        tr, va = stratified_holdout(y_train, HOLDOUT, seed)
        x_val, y_val = x_train[va], y_train[va]
        x_train, y_train = x_train[tr], y_train[tr]
        val_source = f"held out {len(va)} of {len(tr) + len(va)} train samples (stratified)"
    if progress:
        progress("sweeping C")
    best_c, sweep = sweep_C(x_train, y_train, x_val, y_val, grid, refine, max_iter)
    if progress:
        progress(f"refitting with C={best_c:.3g}")
    x_all = np.concatenate([x_train, x_val])
    y_all = np.concatenate([y_train, y_val])
    metrics: dict[str, Any] = {
        "top1": accuracy(fit_predict(best_c, x_all, y_all, x_test, max_iter), y_test),
        "best_C": best_c,
    }
    kshot: list[dict[str, Any]] = []
    for k in k_shots:
        if progress:
            progress(f"{k}-shot")
        rows = sample_k_shot(y_train, int(k), seed)
        c_k, _ = sweep_C(x_train[rows], y_train[rows], x_val, y_val, grid, refine=False, max_iter=max_iter)
        top1 = accuracy(fit_predict(c_k, x_train[rows], y_train[rows], x_test, max_iter), y_test)
        metrics[f"top1_{k}shot"] = top1
        kshot.append({"k": int(k), "n_train": len(rows), "C": c_k, "top1": top1})
    details = {
        "n_train": len(x_train),
        "n_val": len(x_val),
        "n_test": len(x_test),
        "n_classes": len(np.unique(y_train)),
        "val_source": val_source,
        "c_sweep": sweep,
        "k_shot": kshot,
        "n_test_unseen_class": int((y_test < 0).sum()),
    }
    return metrics, details
