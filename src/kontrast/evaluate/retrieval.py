"""Image-text retrieval on a captioned dataset: recall@k and ranks in both directions.

Every image is a query for its captions (a hit when *any* of its captions is in the top k) and every
caption is a query for its own image. Images without a caption are still candidates for the
text->image queries but are not image->text queries themselves.

Identical caption texts are merged into one text that describes all their images: the model cannot
tell two equal texts apart, so counting one of them as wrong would cap the score below 1 (the
clip-art val split has 54 such duplicates among 377 captions). A merged caption's query is a hit when
any of its images is in the top k, and it is one candidate, not several, for image->text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KontrastError
from . import metrics as M
from .datasets import EvalDataset
from .features import Features, text_features
from .options import RECALL_KS

logger = logging.getLogger(__name__)

CURVE_KS = (1, 2, 5, 10, 20, 50, 100)


def caption_table(features: Features) -> tuple[list[str], list[list[int]]]:
    """``(texts, text_images)``: the distinct caption texts, and for each the images it describes."""
    index: dict[str, int] = {}
    text_images: list[list[int]] = []
    for i, caps in enumerate(features.captions):
        for cap in caps:
            if cap not in index:
                index[cap] = len(text_images)
                text_images.append([])
            if not text_images[index[cap]] or text_images[index[cap]][-1] != i:
                text_images[index[cap]].append(i)
    return list(index), text_images


def run_retrieval(
    model: Any,
    tokenizer: Callable,
    dataset: EvalDataset,
    features: Features,
    cache_dir: str | None = None,
    use_cache: bool = True,
    progress: Callable[[int], None] | None = None,
    out_dir: Path | None = None,
    recall_k: Sequence[int] = RECALL_KS,
    long_text: str = "truncate",
) -> tuple[dict, dict, dict]:
    """``(metrics, details, CLIP_benchmark metrics)`` of ``dataset``; draws the recall@k curves into ``out_dir``.

    The CLIP_benchmark metrics (``metrics.cb_retrieval_metrics``) count every caption line as its own
    query, unmerged, and images without captions as misses.
    """
    texts, text_images = caption_table(features)
    if not texts:
        raise KontrastError(
            f"no captions in {dataset.spec} (caption field '{dataset.caption_field}'); "
            "pass --caption-field with a field the records have"
        )
    n_without = sum(1 for caps in features.captions if not caps)
    if n_without:
        logger.warning(
            "%d of %d images in %s have no caption (they are candidates only)",
            n_without,
            len(features.captions),
            dataset.spec,
        )
    txt = text_features(model, tokenizer, texts, cache_dir=cache_dir, use_cache=use_cache, progress=progress,
                        long_text=long_text)
    metrics, ranks = M.retrieval_metrics(features.image, txt, text_images, recall_k)
    row_of_text = {t: i for i, t in enumerate(texts)}
    caption_rows = [row_of_text[c] for caps in features.captions for c in caps]  # every caption, unmerged
    caption_image = [i for i, caps in enumerate(features.captions) for _ in caps]
    fits = [k for k in recall_k if k <= min(len(features.image), len(caption_rows))]
    if len(fits) < len(recall_k):  # clip_benchmark itself stops with a torch.topk error there
        logger.warning(
            "recall@k for k > %d (images or captions of %s) is left out of the CLIP_benchmark metrics",
            min(len(features.image), len(caption_rows)),
            dataset.spec,
        )
    cb_metrics = M.cb_retrieval_metrics(features.image, txt[caption_rows], np.asarray(caption_image), fits)
    texts_per_image = np.bincount([i for imgs in text_images for i in imgs])
    texts_per_image = texts_per_image[texts_per_image > 0]  # distinct captions per queried image
    curves = {name: {str(k): M.recall_at_k(r, k) for k in CURVE_KS} for name, r in ranks.items()}
    details: dict[str, Any] = {
        "n_images": len(features.image),
        "n_captions": sum(len(caps) for caps in features.captions),
        "n_distinct_captions": len(texts),
        "n_shared_captions": sum(1 for imgs in text_images if len(imgs) > 1),
        "n_images_without_caption": n_without,
        "recall_curve": curves,
        "chance_R@1": {
            "image_to_text": float(texts_per_image.mean() / len(texts)),
            "text_to_image": float(np.mean([len(imgs) for imgs in text_images]) / len(features.image)),
        },
    }
    if out_dir is not None:
        from .plots import plot_recall_curves

        details["plots"] = [plot_recall_curves(curves, out_dir / "recall_at_k.png")]
    return metrics, details, cb_metrics
