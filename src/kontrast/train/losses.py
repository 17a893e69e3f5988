"""Contrastive losses: CLIP's symmetric softmax loss and SigLIP's pairwise sigmoid loss.

Both follow open_clip's distributed semantics. Each rank holds ``n`` local image/text features; the
features of all ranks are all-gathered so that every image is contrasted with every text of the
*global* batch. ``gather_with_grad`` gathers through ``torch.distributed.nn.functional.all_gather``
(gradients flow back to the rank that produced a feature); otherwise a plain ``all_gather`` is used and
only the local slice keeps its gradient. ``local_loss`` computes the loss only for the local rows
(local images vs all texts, local texts vs all images), with labels offset by ``rank * n``.

Gradient reduction across ranks (see :mod:`kontrast.train.distributed`): ranks average their gradients.
With ``gather_with_grad`` that average equals the single-process gradient of the global batch. Without
it, each rank's gradient only covers its own features, so :meth:`ClipLoss.grad_multiplier` tells the
loop to scale the backward pass by ``world_size`` to obtain the same gradient for everything reached
through the features (the temperature, shared by all ranks, is not scaled; open_clip leaves this
1/world_size factor in; the reported loss value is not affected).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = math.log(100.0)  # exp(logit_scale) is clamped to 100, as in CLIP
SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)
SIGLIP_INIT_LOGIT_BIAS = -10.0


def gather_features(
    features: torch.Tensor, rank: int, world_size: int, gather_with_grad: bool = False, keep_local_grad: bool = True
) -> torch.Tensor:
    """All ranks' ``[n, E]`` features concatenated in rank order -> ``[world_size * n, E]``.

    ``gather_with_grad`` back-propagates into every rank's features; otherwise the gathered copies are
    constants and, if ``keep_local_grad``, the local slice is replaced by the local tensor itself.
    """
    if world_size == 1:
        return features
    if gather_with_grad:
        from torch.distributed.nn.functional import all_gather as all_gather_with_grad

        return torch.cat(all_gather_with_grad(features), dim=0)
    parts = [torch.zeros_like(features) for _ in range(world_size)]
    dist.all_gather(parts, features.detach().contiguous())
    if keep_local_grad:
        parts[rank] = features
    return torch.cat(parts, dim=0)


class ClipLoss(nn.Module):
    """Symmetric cross-entropy over image->text and text->image logits (CLIP, open_clip's ``ClipLoss``)."""

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.rank = rank
        self.world_size = world_size

    @property
    def grad_multiplier(self) -> float:
        """Factor for the backward pass so that rank-averaged gradients equal the single-process ones."""
        if self.world_size > 1 and not self.gather_with_grad and not self.local_loss:
            return float(self.world_size)
        return 1.0

    def get_logits(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_image, logits_per_text)``: local rows vs global columns, or global vs global."""
        if self.world_size == 1:
            logits_per_image = logit_scale * image_features @ text_features.T  # [n, n]
            return logits_per_image, logits_per_image.T
        all_images = gather_features(image_features, self.rank, self.world_size, self.gather_with_grad)
        all_texts = gather_features(text_features, self.rank, self.world_size, self.gather_with_grad)
        if self.local_loss:
            logits_per_image = logit_scale * image_features @ all_texts.T  # [n, W*n]
            logits_per_text = logit_scale * text_features @ all_images.T  # [n, W*n]
            return logits_per_image, logits_per_text
        logits_per_image = logit_scale * all_images @ all_texts.T  # [W*n, W*n]
        return logits_per_image, logits_per_image.T

    def labels(self, num_rows: int, device: torch.device) -> torch.Tensor:
        """Index of the matching column of each row (offset by ``rank * n`` for ``local_loss``)."""
        labels = torch.arange(num_rows, device=device, dtype=torch.long)
        if self.world_size > 1 and self.local_loss:
            labels = labels + num_rows * self.rank
        return labels

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean of the two cross-entropies. ``logit_scale`` is already exponentiated (as ``model(...)[2]``)."""
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, logit_scale)
        if logit_bias is not None:
            logits_per_image, logits_per_text = logits_per_image + logit_bias, logits_per_text + logit_bias
        labels = self.labels(logits_per_image.shape[0], image_features.device)
        return (F.cross_entropy(logits_per_image.float(), labels) + F.cross_entropy(logits_per_text.float(), labels)) / 2


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss (SigLIP, Zhai et al. 2023): every image-text pair is a binary problem.

    ``loss = -sum_ij log sigmoid(z_ij * (scale * <x_i, y_j> + bias)) / n`` with ``z_ij = 1`` for matching
    pairs and ``-1`` otherwise, normalised by the number of local images. Distributed: the local images
    are scored against the all-gathered texts (gathered with gradients), the simple variant of the paper's
    chunked exchange; averaging the ranks' gradients then equals the single-process gradient.
    """

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.rank = rank
        self.world_size = world_size

    grad_multiplier = 1.0

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if logit_bias is None:
            raise ValueError("SigLipLoss needs a logit_bias (create the model with init_logit_bias)")
        n = image_features.shape[0]
        all_texts = gather_features(text_features, self.rank, self.world_size, gather_with_grad=True)
        logits = logit_scale * image_features @ all_texts.T + logit_bias  # [n, W*n]
        signs = -torch.ones_like(logits)
        offset = n * self.rank if self.world_size > 1 else 0
        idx = torch.arange(n, device=logits.device)
        signs[idx, idx + offset] = 1.0
        return -F.logsigmoid(signs * logits).float().sum() / n


def build_loss(name: str, local_loss: bool = False, gather_with_grad: bool = False, rank: int = 0,
               world_size: int = 1) -> nn.Module:
    """``"clip"`` -> :class:`ClipLoss`, ``"siglip"`` -> :class:`SigLipLoss`."""
    if name == "clip":
        return ClipLoss(local_loss, gather_with_grad, rank, world_size)
    if name == "siglip":
        return SigLipLoss(rank, world_size)
    from ..errors import KontrastError

    raise KontrastError(f"loss {name!r} is not one of: clip, siglip")


@torch.no_grad()
def clamp_logit_scale(model: nn.Module, max_value: float = MAX_LOGIT_SCALE) -> None:
    """Keep ``exp(logit_scale)`` in [1, 100] after each optimiser step (open_clip clamps the parameter)."""
    scale = getattr(model, "logit_scale", None)
    if scale is not None:
        scale.clamp_(0, max_value)
