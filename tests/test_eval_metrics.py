"""Evaluation metrics against hand computations and brute-force references (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from kontrast.evaluate import metrics as M
from kontrast.evaluate.classification import classification_report, most_confused
from kontrast.evaluate.linear_probe import (
    COARSE_GRID,
    FINE_STEPS,
    linear_probe,
    sample_k_shot,
    stratified_holdout,
)

# 5 samples, 6 classes. True-class rank: 1, 6, 3, 1, 2 (see the comments).
SCORES = np.array(
    [
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0: rank 1
        [0.1, 0.9, 0.5, 0.4, 0.3, 0.2],  # label 0: five classes ahead -> rank 6
        [0.5, 0.2, 0.6, 0.1, 0.0, 0.0],  # label 1: 0.6 and 0.5 ahead -> rank 3
        [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],  # label 2: rank 1
        [0.3, 0.0, 0.2, 0.0, 0.0, 0.0],  # label 2: 0.3 ahead -> rank 2
    ]
)
LABELS = np.array([0, 0, 1, 2, 2])


def test_topk_and_mean_per_class_by_hand():
    assert M.topk_accuracy(SCORES, LABELS, 1) == pytest.approx(2 / 5)
    assert M.topk_accuracy(SCORES, LABELS, 5) == pytest.approx(4 / 5)
    assert M.topk_accuracy(SCORES, LABELS, 6) == pytest.approx(1.0)
    pred = SCORES.argmax(axis=1)  # 0, 1, 2, 2, 0
    # class 0: 1 of 2, class 1: 0 of 1, class 2: 1 of 2; classes 3-5 have no samples and are left out
    assert M.mean_per_class_recall(pred, LABELS, 6) == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    recall = M.per_class_recall(pred, LABELS, 6)
    assert recall[:3].tolist() == [0.5, 0.0, 0.5] and np.isnan(recall[3:]).all()


def test_confusion_and_report_by_hand():
    pred = SCORES.argmax(axis=1)
    cm = M.confusion_matrix(pred, LABELS, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 0, 1], [1, 0, 1]]
    names = ["a", "b", "c", "d", "e", "f"]
    metrics, details = classification_report(SCORES, LABELS, names)
    assert set(metrics) == {"top1", "top5", "mean_per_class_recall"}
    assert metrics["top1"] == pytest.approx(0.4) and metrics["top5"] == pytest.approx(0.8)
    assert [(r["class"], r["n"], r["top1"]) for r in details["per_class"]] == [
        ("a", 2, 0.5),
        ("b", 1, 0.0),
        ("c", 2, 0.5),
    ]
    pairs = {(p["true"], p["predicted"]): p["count"] for p in most_confused(pred, LABELS, names)}
    assert pairs == {("a", "b"): 1, ("b", "c"): 1, ("c", "a"): 1}


def test_ties_are_pessimistic():
    scores = np.ones((4, 3))  # a model that cannot tell anything apart
    assert M.topk_accuracy(scores, np.array([0, 1, 2, 0]), 1) == 0.0
    i2t, t2i = M.retrieval_ranks(np.ones((3, 2)), np.ones((3, 2)), np.arange(3))
    assert i2t.tolist() == [3, 3, 3] and t2i.tolist() == [3, 3, 3]


def test_retrieval_ranks_by_hand():
    # identity image features make sim[i, j] = text_j[i]
    images = np.eye(3, dtype=np.float32)
    texts = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.4, 0.8, 0.6], [0.2, 0.1, 0.7]], dtype=np.float32)
    owner = np.array([0, 0, 1, 2])  # image 0 has two captions
    metrics, ranks = M.retrieval_metrics(images, texts, owner)
    assert ranks["image_to_text"].tolist() == [1, 2, 1]  # image 1: caption 0 (0.9) beats its own (0.8)
    assert ranks["text_to_image"].tolist() == [2, 1, 1, 1]  # caption 0: image 1 (0.9) beats image 0 (0.1)
    assert metrics["image_to_text_R@1"] == pytest.approx(2 / 3)
    assert metrics["text_to_image_R@1"] == pytest.approx(3 / 4)
    assert metrics["image_to_text_R@5"] == 1.0 and metrics["text_to_image_R@10"] == 1.0
    assert metrics["mean_rank"] == {
        "image_to_text": pytest.approx(4 / 3),
        "text_to_image": pytest.approx(5 / 4),
    }
    assert metrics["median_rank"] == {"image_to_text": 1.0, "text_to_image": 1.0}


def _brute_force(images: np.ndarray, texts: np.ndarray, text_images: list[list[int]]) -> tuple[list, list]:
    """Sort every query's candidates and walk down to the first correct one."""
    sims = images @ texts.T
    i2t = []
    for i in range(len(images)):
        if not any(i in imgs for imgs in text_images):
            continue
        order = sorted(range(len(texts)), key=lambda j: -sims[i, j])
        i2t.append(next(pos for pos, j in enumerate(order, start=1) if i in text_images[j]))
    t2i = []
    for j in range(len(texts)):
        order = sorted(range(len(images)), key=lambda i: -sims[i, j])
        t2i.append(next(pos for pos, i in enumerate(order, start=1) if i in text_images[j]))
    return i2t, t2i


@pytest.mark.parametrize("seed", [0, 1])
def test_recall_matches_brute_force_with_several_captions(seed):
    rng = np.random.default_rng(seed)
    n_images, dim = 40, 8
    owner = np.concatenate([rng.integers(0, n_images - 5, size=70), np.arange(n_images - 5)])
    owner = rng.permutation(owner)  # 105 captions; images 35-39 have none
    images = rng.normal(size=(n_images, dim)).astype(np.float32)
    texts = (images[owner] * 0.3 + rng.normal(size=(len(owner), dim))).astype(np.float32)
    i2t_ref, t2i_ref = _brute_force(images, texts, [[int(i)] for i in owner])
    i2t, t2i = M.retrieval_ranks(images, texts, owner, chunk=7)  # odd chunk: exercise the chunking
    assert i2t.tolist() == i2t_ref and t2i.tolist() == t2i_ref
    metrics, _ = M.retrieval_metrics(images, texts, owner)
    for k in (1, 5, 10):
        assert metrics[f"image_to_text_R@{k}"] == pytest.approx(np.mean(np.array(i2t_ref) <= k))
        assert metrics[f"text_to_image_R@{k}"] == pytest.approx(np.mean(np.array(t2i_ref) <= k))
    assert metrics["median_rank"]["text_to_image"] == pytest.approx(float(np.median(t2i_ref)))
    assert metrics["mean_rank"]["image_to_text"] == pytest.approx(float(np.mean(i2t_ref)))


def test_recall_matches_brute_force_with_shared_captions():
    rng = np.random.default_rng(2)
    images = rng.normal(size=(30, 8)).astype(np.float32)
    text_images = [sorted({int(i) for i in rng.integers(0, 28, size=rng.integers(1, 4))}) for _ in range(50)]
    texts = rng.normal(size=(50, 8)).astype(np.float32)
    i2t_ref, t2i_ref = _brute_force(images, texts, text_images)
    i2t, t2i = M.retrieval_ranks(images, texts, text_images, chunk=4)
    assert i2t.tolist() == i2t_ref and t2i.tolist() == t2i_ref


def _clusters(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.eye(4, 16) * 3.0
    y = np.repeat(np.arange(4), n_per_class)
    x = centers[y] + rng.normal(scale=0.3, size=(len(y), 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def test_linear_probe_separable_reaches_one_and_picks_c_from_grid():
    x_train, y_train = _clusters(20, 0)
    x_test, y_test = _clusters(10, 1)
    metrics, details = linear_probe(x_train, y_train, x_test, y_test, k_shots=(1, 4), seed=0)
    assert metrics["top1"] >= 0.97
    coarse = set(COARSE_GRID)
    fine = {c * 10.0**s for c in coarse for s in FINE_STEPS}
    assert any(np.isclose(metrics["best_C"], c) for c in coarse | fine)
    assert {"top1", "best_C", "top1_1shot", "top1_4shot"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("top1", "top1_1shot", "top1_4shot"))
    assert details["n_val"] > 0 and "held out" in details["val_source"]
    assert [p["n_train"] for p in details["k_shot"]] == [4, 16]


def test_holdout_and_k_shot_sampling():
    y = np.array([0] * 10 + [1] * 5 + [2])
    tr, va = stratified_holdout(y, 0.2, seed=3)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(y)))
    assert np.bincount(y[va], minlength=3).tolist() == [
        2,
        1,
        0,
    ]  # the single example of class 2 stays in train
    rows = sample_k_shot(y, 4, seed=0)
    assert np.bincount(y[rows]).tolist() == [4, 4, 1]
    assert rows.tolist() == sample_k_shot(y, 4, seed=0).tolist()  # seeded


# ---- CLIP_benchmark's definitions ----------------------------------------------------------------------
def test_cb_classification_by_hand():
    got = M.cb_classification_metrics(SCORES, LABELS, 6)
    assert got["acc1"] == pytest.approx(2 / 5) and got["acc5"] == pytest.approx(4 / 5)
    assert got["mean_per_class_recall"] == pytest.approx((0.5 + 0.0 + 0.5) / 3)  # balanced accuracy
    few = M.cb_classification_metrics(SCORES[:, :4], LABELS, 4)  # below 5 classes: acc5 is NaN there
    assert np.isnan(few["acc5"]) and list(few) == ["acc1", "acc5", "mean_per_class_recall"]


def test_cb_mean_average_precision_by_hand():
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.2, 0.4], [0.1, 0.9, 0.3]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    # class 0: ranking 0, 1, 2 -> positives at ranks 1 and 3: (1/1 + 2/3) / 2; class 1: ranking 2, 1, 0 ->
    # positive at rank 2: 1/2; class 2: no positive -> AP 0, still in the mean
    expected = ((1 + 2 / 3) / 2 + 1 / 2 + 0) / 3
    assert M.cb_mean_average_precision(scores, targets) == pytest.approx(expected)


def test_cb_retrieval_by_hand():
    img = np.eye(3, dtype=np.float32)  # image i = axis i
    txt = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0, 1]], dtype=np.float32)  # captions of images 0, 1, 2
    got = M.cb_retrieval_metrics(img, txt, np.array([0, 1, 2]), [1, 2])
    assert list(got) == ["image_retrieval_recall@1", "text_retrieval_recall@1",
                         "image_retrieval_recall@2", "text_retrieval_recall@2"]
    # caption 1 ("0.9, 0.1, 0") finds image 0 before its image 1: 2 of 3 at k=1, all at k=2; every image
    # scores its own caption highest (image 1: 0.1 against 0 and 0)
    assert got["image_retrieval_recall@1"] == pytest.approx(2 / 3) and got["image_retrieval_recall@2"] == 1.0
    assert got["text_retrieval_recall@1"] == 1.0
    assert got["image_retrieval_recall@1"] == float(np.float32(2) / np.float32(3))  # a float32 mean, as there
    without = M.cb_retrieval_metrics(img, txt[[0, 2]], np.array([0, 2]), [2])  # image 1 has no caption: a miss
    assert without["text_retrieval_recall@2"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="recall@5"):
        M.cb_retrieval_metrics(img, txt, np.array([0, 1, 2]), [5])
