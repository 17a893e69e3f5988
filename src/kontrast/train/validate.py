"""Validation during training: contrastive loss and image<->text retrieval recall on held-out pairs."""

from __future__ import annotations

from typing import Any

import torch

from ..data.stream import load_records, record_bytes


def _val_set(trainer: Any, spec) -> tuple[torch.Tensor, list[str]]:
    """Eval-preprocessed images and captions of ``spec``, cached on the trainer (bad samples skipped)."""
    cached = getattr(trainer, "_val_cache", None)
    if cached is not None:
        return cached
    from ..errors import ImageError
    from ..preprocess import Preprocess

    v = trainer.model.config.vision
    pre = Preprocess(trainer.model.image_size, mean=v.mean, std=v.std)
    images, captions = [], []
    for r in load_records(spec, trainer.cfg.caption_key):
        if not r.caption:
            continue
        data = record_bytes(r)
        if data is None:
            continue
        try:
            images.append(pre(data))
        except ImageError:  # a bad validation image is skipped; other exceptions are bugs
            continue
        captions.append(r.caption)
    trainer._val_cache = (torch.stack(images), captions)
    return trainer._val_cache


@torch.no_grad()
def contrastive_metrics(trainer: Any, spec, batch: int = 256) -> dict[str, float]:
    """``val_loss`` (CLIP loss over the whole set), ``val_i2t_r1``, ``val_t2i_r1``, ``val_t2i_r5``."""
    images, captions = _val_set(trainer, spec)
    feats_i, feats_t = [], []
    for i in range(0, len(captions), batch):
        img, txt = trainer.encode(images[i: i + batch].to(trainer.device), captions[i: i + batch], grad=False)
        feats_i.append(img)
        feats_t.append(txt)
    img, txt = torch.cat(feats_i), torch.cat(feats_t)
    logits = trainer.model.logit_scale.exp().float() * img @ txt.T  # [N, N]
    n = logits.shape[0]
    labels = torch.arange(n)
    loss = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    # captions may repeat (same name): a retrieval counts if the top item has the same caption / image
    same = torch.tensor([[a == b for b in captions] for a in captions])  # [N, N]
    out = {"val_loss": float(loss)}
    for name, scores in (("i2t", logits), ("t2i", logits.T)):
        top = scores.topk(min(5, n), dim=1).indices  # [N, 5]
        hits = same.gather(1, top)  # [N, 5]
        out[f"val_{name}_r1"] = float(hits[:, 0].float().mean())
        out[f"val_{name}_r5"] = float(hits.any(1).float().mean())
    return out
