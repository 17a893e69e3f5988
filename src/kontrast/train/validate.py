"""Validation during training: contrastive loss and image<->text retrieval recall on held-out pairs.

Images are preprocessed as the model's record says (its normalisation, interpolation and resize mode), the
loss is the one the run trains with (CLIP's softmax loss, or SigLIP's sigmoid loss with the model's logit
bias), and every tensor of the metric lives on the device of the logits.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.stream import load_records, record_bytes
from ..errors import ImageError
from .losses import build_loss


def _val_set(trainer: Any, spec) -> tuple[torch.Tensor, list[str]]:
    """Eval-preprocessed images and captions of ``spec``, cached on the trainer (unreadable images skipped)."""
    cached = getattr(trainer, "_val_cache", None)
    if cached is not None:
        return cached
    from ..record import build_preprocess

    pre = build_preprocess(trainer.model.record)
    images, captions = [], []
    for r in load_records(spec, trainer.cfg.caption_key):
        if not r.caption:
            continue
        data = record_bytes(r)
        if data is None:
            continue
        try:
            images.append(pre(data))
        except ImageError:  # an unreadable validation image is skipped; anything else is a bug
            continue
        captions.append(r.caption)
    trainer._val_cache = (torch.stack(images), captions)
    return trainer._val_cache


def pairwise_metrics(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                     captions: list[str], loss: str) -> dict[str, torch.Tensor]:
    """0-dim tensors on the features' device: ``val_loss`` (``loss`` = the run's "clip" or "siglip" loss, with the
    model's ``scale`` = exp(logit_scale) and ``bias``), and recall@1/5 in both directions over normalised
    features ``img``/``txt`` ``[N, E]`` whose row i is a pair."""
    out = {"val_loss": build_loss(loss)(img, txt, scale, bias)}  # single-process loss over the whole set
    logits = scale * img @ txt.T  # [N, N]; a logit bias would not change any ranking
    n = logits.shape[0]
    # captions may repeat (same name): a retrieval counts if the top item has the same caption / image
    same = torch.tensor([[a == b for b in captions] for a in captions]).to(logits.device)  # [N, N]
    for name, scores in (("i2t", logits), ("t2i", logits.T)):
        top = scores.topk(min(5, n), dim=1).indices  # [N, 5]
        hits = same.gather(1, top)  # [N, 5]
        out[f"val_{name}_r1"] = hits[:, 0].float().mean()
        out[f"val_{name}_r5"] = hits.any(1).float().mean()
    return out


@torch.no_grad()
def contrastive_metrics(trainer: Any, spec, batch: int = 256) -> dict[str, float]:
    """``val_loss`` (the training loss over the whole set), ``val_i2t_r1``/``_r5``, ``val_t2i_r1``/``_r5``."""
    images, captions = _val_set(trainer, spec)
    feats_i, feats_t = [], []
    for i in range(0, len(captions), batch):
        img, txt = trainer.encode(images[i: i + batch].to(trainer.device), captions[i: i + batch], grad=False)
        feats_i.append(img)
        feats_t.append(txt)
    model = trainer.model
    bias = None if model.logit_bias is None else model.logit_bias.float()
    metrics = pairwise_metrics(torch.cat(feats_i), torch.cat(feats_t), model.logit_scale.exp().float(), bias,
                               captions, trainer.cfg.loss)
    return {k: float(v) for k, v in metrics.items()}
