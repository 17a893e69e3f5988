"""Evaluation metrics as pure numpy functions: classification accuracy, confusion, retrieval ranks.

Kept free of models and I/O so each can be checked against a hand computation or a brute-force
reference (see ``tests/test_eval_metrics.py``).

Ties: a rank counts every *incorrect* item whose score is greater than **or equal to** the best
correct item's score as ranked before it (pessimistic). A model whose scores are all equal therefore
gets the worst possible rank, never a perfect one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


# ---- classification --------------------------------------------------------------------------------
def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-sample bool: is the true label among the ``k`` highest scores? ``scores`` [N, C], ``labels`` [N].

    Pessimistic ties: the true class is in the top k when fewer than ``k`` other classes score
    greater than or equal to it.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    true = scores[np.arange(len(labels)), labels][:, None]  # [N] -> [N, 1]
    ahead = (scores >= true).sum(axis=1) - 1  # other classes scoring at least as high as the true one
    return ahead < k


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of samples whose true label is in the top ``k`` (``k`` capped at the class count)."""
    hits = topk_correct(scores, labels, min(k, np.asarray(scores).shape[1]))
    return float(hits.mean()) if hits.size else 0.0


def per_class_recall(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall (accuracy) per class [C]; NaN for classes with no sample in ``labels``."""
    predictions = np.asarray(predictions, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    total = np.bincount(labels, minlength=num_classes).astype(np.float64)
    correct = np.bincount(labels[predictions == labels], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def mean_per_class_recall(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean of the per-class recalls over the classes that have samples (balanced accuracy)."""
    recall = per_class_recall(predictions, labels, num_classes)
    present = ~np.isnan(recall)
    return float(recall[present].mean()) if present.any() else 0.0


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [C, C]: row = true class, column = predicted class."""
    predictions = np.asarray(predictions, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)  # [C*C] -> [C, C]


# ---- retrieval -------------------------------------------------------------------------------------
def _ranks_chunked(
    queries: np.ndarray, items: np.ndarray, pair_query: np.ndarray, pair_item: np.ndarray, chunk: int
) -> np.ndarray:
    """1-based rank of the best correct item for every query (see the module note on ties).

    ``(pair_query[p], pair_item[p])`` lists the correct (query, item) pairs, sorted by query.
    """
    ranks = np.zeros(len(queries), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        sims = queries[start : start + chunk] @ items.T  # [b, M]
        lo, hi = np.searchsorted(pair_query, [start, start + sims.shape[0]])
        mask = np.zeros(sims.shape, dtype=bool)  # [b, M]: correct items of each query
        mask[pair_query[lo:hi] - start, pair_item[lo:hi]] = True
        best = np.where(mask, sims, -np.inf).max(axis=1, keepdims=True)  # [b, 1]
        ahead = ((sims >= best) & ~mask).sum(axis=1)
        ranks[start : start + chunk] = ahead + 1
    return ranks


def _pairs(text_image: np.ndarray | Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """``(text index, image index)`` of every correct pair."""
    if all(isinstance(x, (int, np.integer)) for x in text_image):  # one image per text
        images = np.asarray(text_image, dtype=np.int64)
        return np.arange(len(images), dtype=np.int64), images
    texts = np.asarray([t for t, imgs in enumerate(text_image) for _ in imgs], dtype=np.int64)
    images = np.asarray([i for imgs in text_image for i in imgs], dtype=np.int64)
    return texts, images


def retrieval_ranks(
    image_features: np.ndarray,
    text_features: np.ndarray,
    text_image: np.ndarray | Sequence[Sequence[int]],
    chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks for both directions, with several captions per image (and several images per caption).

    ``image_features`` [N, D] and ``text_features`` [M, D] (normalised: the dot product is the score);
    ``text_image``: for each caption, the index of its image ([M] ints), or the list of images it
    describes (a caption text shared by several images). Returns ``(image_to_text [N'],
    text_to_image [M])``: image->text covers the N' images that have a caption, and its rank is the
    position of the first of its captions in the sorted caption list; text->image is the position of
    the first of the caption's images.
    """
    img = np.asarray(image_features, dtype=np.float32)
    txt = np.asarray(text_features, dtype=np.float32)
    pair_text, pair_image = _pairs(text_image)
    queried = np.unique(pair_image)  # images with at least one caption
    query_of_image = np.full(len(img), -1, dtype=np.int64)
    query_of_image[queried] = np.arange(len(queried))
    by_image = np.argsort(query_of_image[pair_image], kind="stable")
    by_text = np.argsort(pair_text, kind="stable")
    i2t = _ranks_chunked(img[queried], txt, query_of_image[pair_image][by_image], pair_text[by_image], chunk)
    t2i = _ranks_chunked(txt, img, pair_text[by_text], pair_image[by_text], chunk)
    return i2t, t2i


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries whose first correct item is within the top ``k``."""
    ranks = np.asarray(ranks)
    return float((ranks <= k).mean()) if ranks.size else 0.0


def retrieval_metrics(
    image_features: np.ndarray,
    text_features: np.ndarray,
    text_image: np.ndarray | Sequence[Sequence[int]],
    ks: Sequence[int] = (1, 5, 10),
) -> tuple[dict, dict]:
    """``(metrics, ranks)``: recall@k per direction plus mean and median rank (1-based) per direction."""
    i2t, t2i = retrieval_ranks(image_features, text_features, text_image)
    metrics: dict = {}
    for name, ranks in (("image_to_text", i2t), ("text_to_image", t2i)):
        for k in ks:
            metrics[f"{name}_R@{k}"] = recall_at_k(ranks, k)
    metrics["mean_rank"] = {
        "image_to_text": float(i2t.mean()) if i2t.size else 0.0,
        "text_to_image": float(t2i.mean()) if t2i.size else 0.0,
    }
    metrics["median_rank"] = {
        "image_to_text": float(np.median(i2t)) if i2t.size else 0.0,
        "text_to_image": float(np.median(t2i)) if t2i.size else 0.0,
    }
    return metrics, {"image_to_text": i2t, "text_to_image": t2i}


# ---- CLIP_benchmark's definitions (its result files) ---------------------------------------------------
# clip_benchmark 1.6.2 (metrics/zeroshot_classification.py, metrics/zeroshot_retrieval.py) defines its
# metrics slightly differently from the ones above; these reproduce its numbers on the same scores.
# Only ties differ: torch.topk breaks them in an unspecified order, here they count against the model.
def cb_classification_metrics(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """``acc1``, ``acc5`` (NaN below 5 classes, as there) and ``mean_per_class_recall`` (balanced accuracy)."""
    labels = np.asarray(labels, dtype=np.int64)
    acc1 = float(topk_correct(scores, labels, 1).mean())
    acc5 = float(topk_correct(scores, labels, 5).mean()) if num_classes >= 5 else float("nan")
    predictions = np.asarray(scores).argmax(axis=1)
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": mean_per_class_recall(predictions, labels, num_classes)}


def cb_mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Multi-label ``mean_average_precision``: the mean over *all* classes of each class's AP.

    AP of a class: images sorted by that class's score (best first), precision at the rank of every
    positive image, summed and divided by the number of positives (at least 1: a class without
    positives has AP 0 and still counts in the mean).
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets).astype(bool)
    n, num_classes = scores.shape
    ranks = np.arange(1, n + 1, dtype=np.float64)
    ap = np.zeros(num_classes)
    for c in range(num_classes):
        truth = targets[np.argsort(-scores[:, c], kind="stable"), c]
        precision = np.cumsum(truth) / ranks
        ap[c] = precision[truth].sum() / max(int(truth.sum()), 1)
    return float(ap.mean()) if num_classes else 0.0


def _float32_mean(hits: np.ndarray, n: int) -> float:
    """A hit rate rounded through float32, as the torch ``.float().mean().item()`` it mirrors."""
    return float(np.float32(int(np.sum(hits))) / np.float32(n)) if n else 0.0


def cb_retrieval_metrics(
    image_features: np.ndarray, text_features: np.ndarray, text_image: np.ndarray, ks: Sequence[int]
) -> dict[str, float]:
    """``image_retrieval_recall@k`` and ``text_retrieval_recall@k`` for every k (in that order per k).

    ``text_image`` [M]: the image of every caption, captions *not* merged (two equal captions are two
    queries). Image retrieval: a caption is a hit when its image is in the top k. Text retrieval: an
    image is a hit when any of its captions is in the top k; an image without captions is a miss.
    Recalls are float32 means, as there. ``k`` larger than the candidates -> ``ValueError``.
    """
    text_image = np.asarray(text_image, dtype=np.int64)
    n_images, n_texts = len(image_features), len(text_features)
    i2t, t2i = retrieval_ranks(image_features, text_features, text_image)
    out: dict[str, float] = {}
    for k in ks:
        if k > n_images or k > n_texts:
            raise ValueError(f"recall@{k} needs at least {k} images and {k} captions ({n_images} and {n_texts} here)")
        out[f"image_retrieval_recall@{k}"] = _float32_mean(t2i <= k, n_texts)
        out[f"text_retrieval_recall@{k}"] = _float32_mean(i2t <= k, n_images)  # captionless images: misses
    return out
