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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KontrastError
from . import metrics as M
from .datasets import EvalDataset
from .features import Features, text_features

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10)
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
    progress: Callable[[str, int], None] | None = None,
    out_dir: Path | None = None,
) -> tuple[dict, dict]:
    """Retrieval metrics and details of ``dataset``; draws the recall@k curves into ``out_dir``."""
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
    text_progress = (lambda n: progress("captions", n)) if progress else None
    txt = text_features(
        model, tokenizer, texts, cache_dir=cache_dir, use_cache=use_cache, progress=text_progress
    )
    metrics, ranks = M.retrieval_metrics(features.image, txt, text_images, RECALL_KS)
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
    return metrics, details
