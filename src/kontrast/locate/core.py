"""``locate(model, images, texts)``: where in each image each text is, as similarity maps over the patch grid.

The dense features come from ``kontrast.models.dense`` (``"maskclip"``: the last pooling step's value path per
patch; ``"clearclip"``: the same after query-query attention, the default; ``"tokens"``: the naive last-layer
tokens; ``"crops"``: sliding-window crops embedded as images). The map
of text ``t`` over image ``i`` is the cosine similarity between the text embedding and each patch's feature,
``grid[i, t]`` ``[gh, gw]``, and the same upsampled bilinearly to the input's pixels, ``maps[i, t]`` ``[H, W]``.

Images may be given as pixels (already preprocessed, any square size that is a multiple of the patch size) or as
PIL images / paths / bytes, which are preprocessed with the model's own record at ``size`` pixels (default: the
model's image size). A larger ``size`` gives a finer grid: the position embeddings are interpolated, and objects
that are small in the picture appear at the scale the model was trained on.

``relative=True`` (several texts) turns each patch's similarities into a softmax over the texts, scaled by the
model's temperature: each map then says how much more a patch matches its text than the OTHER texts given (the
per-pixel classification MaskCLIP segments with). A patch every prompt likes (a common bias of small models)
no longer wins every map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..models.dense import DEFAULT_METHOD, METHODS, crop_scores, dense_features


@dataclass
class Localisation:
    """Similarity maps of ``texts`` over images (cosine similarity, not normalised per map)."""

    texts: list[str]
    method: str
    grid: torch.Tensor  # [N, T, gh, gw]
    maps: torch.Tensor  # [N, T, H, W], bilinear upsampling of ``grid`` to the input pixels
    regions: list[tuple[float, float, float, float]] = field(default_factory=list)  # per image: input area in source px
    relative: bool = False  # maps are softmax probabilities over the texts, not cosine similarities

    def peak(self, image: int, text: int) -> tuple[int, int]:
        """``(x, y)`` of the maximum of ``maps[image, text]`` in input pixels."""
        m = self.maps[image, text]
        flat = int(torch.argmax(m))
        return flat % m.shape[1], flat // m.shape[1]

    def peak_in_source(self, image: int, text: int) -> tuple[float, float]:
        """The peak in the source image's pixels (needs ``regions``: images given as files or PIL images)."""
        x, y = self.peak(image, text)
        x0, y0, x1, y1 = self.regions[image]
        h, w = self.maps.shape[-2:]
        return x0 + (x + 0.5) * (x1 - x0) / w, y0 + (y + 0.5) * (y1 - y0) / h

    def heat(self, image: int, text: int) -> np.ndarray:
        """``maps[image, text]`` as a float64 array."""
        return self.maps[image, text].double().numpy()


def _text_features(model: torch.nn.Module, texts, tokenizer: Callable | None) -> tuple[torch.Tensor, list[str]]:
    """Unit text embeddings ``[T, E]`` from strings, token ids or ready features."""
    if isinstance(texts, torch.Tensor):
        if texts.is_floating_point():
            return F.normalize(texts.float(), dim=-1), [f"text {i}" for i in range(texts.shape[0])]
        return F.normalize(model.encode_text(texts).float(), dim=-1), [f"text {i}" for i in range(texts.shape[0])]
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("locate needs at least one text")
    if tokenizer is None:
        from ..record import build_tokenizer, record_of

        tokenizer = build_tokenizer(record_of(model))
    return F.normalize(model.encode_text(tokenizer(texts)).float(), dim=-1), texts


def _pixels(model: torch.nn.Module, images, size: int | None, preprocess: Callable | None):
    """``(pixels [N, 3, S, S], regions)``: tensors pass through; files and PIL images are preprocessed."""
    if isinstance(images, torch.Tensor):
        pixels = images if images.dim() == 4 else images[None]
        return pixels, []
    images = [images] if not isinstance(images, Sequence) or isinstance(images, (str, bytes)) else list(images)
    if preprocess is None:
        from ..preprocess import Preprocess
        from ..record import record_of

        preprocess = Preprocess.from_config(record_of(model).preprocess, size or model.image_size)
    from ..preprocess import load_image

    loaded = [load_image(im) for im in images]
    regions = [preprocess.input_region(*im.size) for im in loaded]
    return torch.stack([preprocess(im) for im in loaded]), regions


@torch.no_grad()
def locate(
    model: torch.nn.Module,
    images,
    texts: Sequence[str] | str | torch.Tensor,
    method: str = DEFAULT_METHOD,
    size: int | None = None,
    tokenizer: Callable | None = None,
    preprocess: Callable | None = None,
    relative: bool = False,
) -> Localisation:
    """Similarity maps of each text over each image (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    if relative and isinstance(texts, str):
        raise ValueError("relative=True compares several texts with each other; give at least two")
    was_training = model.training
    model.eval()
    try:
        text_features, names = _text_features(model, texts, tokenizer)
        pixels, regions = _pixels(model, images, size, preprocess)
        pixels = pixels.to(next(model.parameters()).device)
        if method == "crops":
            grid = crop_scores(model, pixels, text_features.to(pixels.device))  # [N, T, gh, gw]
        else:
            dense = F.normalize(dense_features(model.visual, pixels, method).float(), dim=-1)  # [N, gh, gw, E]
            grid = torch.einsum("nhwe,te->nthw", dense, text_features.to(dense.device))  # [N, T, gh, gw]
        if relative:
            if grid.shape[1] < 2:
                raise ValueError("relative=True compares several texts with each other; give at least two")
            grid = (_temperature(model) * grid).softmax(dim=1)  # [N, T, gh, gw], each cell sums to 1 over texts
        maps = F.interpolate(grid, size=pixels.shape[-2:], mode="bilinear", align_corners=False)  # [N, T, H, W]
    finally:
        model.train(was_training)
    return Localisation(names, method, grid.cpu(), maps.cpu(), regions, relative)


def _temperature(model: torch.nn.Module) -> float:
    """``exp(logit_scale)`` of a model that has one (100, CLIP's cap, otherwise)."""
    scale = getattr(model, "logit_scale", None)  # a one-tower model has none (its error is an AttributeError)
    return float(scale.detach().float().exp()) if isinstance(scale, torch.Tensor) else 100.0
