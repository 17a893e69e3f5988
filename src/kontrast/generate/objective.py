"""The CLIP objective for generation: augmented cutouts, weighted prompts, spherical distance.

CLIP only sees ``image_size`` pixels, and a single view of the image is easy to fool with adversarial
noise. Scoring many random crops (varied sizes, flips, small rotations/shears, a little noise) makes the
image match the prompt at every scale and position, which is what turns adversarial patterns into
recognisable content. All augmentation is one batched ``affine_grid`` + ``grid_sample`` (no torchvision).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import KontrastError

_WEIGHT = re.compile(r"^(?P<text>.*):\s*(?P<w>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Prompt:
    """A text and its weight: positive pulls the image towards it, negative pushes away."""

    text: str
    weight: float = 1.0


def parse_prompt(spec: str, default_weight: float = 1.0) -> Prompt:
    """``"a cat:1"`` -> ``Prompt("a cat", 1.0)``; ``"blurry:-0.5"`` -> weight -0.5. Only a trailing
    ``:number`` is a weight, so ``"photo: a cat"`` stays text (write ``"12:30:1"`` for a text ending in a number)."""
    match = _WEIGHT.match(spec)
    text, weight = (match["text"], float(match["w"])) if match else (spec, default_weight)
    text = text.strip()
    if not text:
        raise KontrastError(f"empty prompt in {spec!r}; write 'text' or 'text:weight'")
    if not math.isfinite(weight):
        raise KontrastError(f"prompt weight in {spec!r} is not a finite number")
    return Prompt(text, weight)


def spherical_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``2 * arcsin(|a - b| / 2) ** 2`` for unit vectors: the squared great-circle angle / 2, which
    (unlike ``1 - cos``) keeps a useful gradient when the vectors are nearly opposite. Broadcasts over
    leading dims; ``a``, ``b`` ``[..., D]`` -> ``[...]``."""
    half_chord = (a - b).norm(dim=-1).div(2).clamp(max=1.0)
    return 2 * torch.arcsin(half_chord) ** 2


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Differentiable bilinear resize with antialiasing (so downscaling does not alias)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


@dataclass
class Cutouts:
    """Random square crops of an image, resized to ``cut_size``, with flips, small affine jitter and noise.

    ``min_scale``: smallest crop side as a fraction of the image's shorter side; sizes are drawn as
    ``min + (1 - min) * u ** size_power`` (``size_power > 1`` favours small, detailed crops).
    """

    cut_size: tuple[int, int]
    count: int = 32
    min_scale: float = 0.3
    size_power: float = 1.0
    flip: float = 0.5
    max_rotate: float = 10.0  # degrees
    max_shear: float = 0.1
    noise: float = 0.05  # max std of the Gaussian noise added per cutout

    @torch.no_grad()
    def score(self, image: torch.Tensor) -> float:
        """Cosine similarity of the whole image ``[1, 3, H, W]`` to the main prompt."""
        emb = self.encode(resize(image, self.cutouts.cut_size))  # [1, D]
        return float(emb[0] @ self.text[self.main].to(emb.device))

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[1, 3, H, W]`` -> ``[count, 3, ch, cw]``."""
        n = self.count
        _, c, h, w = image.shape

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator)

        frac = self.min_scale + (1 - self.min_scale) * rand(n) ** self.size_power  # crop side / shorter side
        side = frac * min(h, w)  # pixels
        sx, sy = side / w, side / h  # half-extent in normalised [-1, 1] coordinates
        cx, cy = (2 * rand(n) - 1) * (1 - sx), (2 * rand(n) - 1) * (1 - sy)
        mirror = torch.where(rand(n) < self.flip, -1.0, 1.0)
        angle = (2 * rand(n) - 1) * math.radians(self.max_rotate)
        shear = (2 * rand(n) - 1) * self.max_shear
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([
            torch.stack([sx * cos * mirror, sx * (shear - sin), cx], dim=1),
            torch.stack([sy * sin * mirror, sy * cos, cy], dim=1),
        ], dim=1).to(image)  # [n, 2, 3]: output grid -> input coordinates
        # sample at up to 4x the cut size, then average-pool: an antialiased downscale of big crops
        over = int(min(4, max(1, math.ceil(float(side.max()) / min(self.cut_size)))))
        out_hw = (self.cut_size[0] * over, self.cut_size[1] * over)
        grid = F.affine_grid(theta, [n, c, *out_hw], align_corners=False)  # [n, oh, ow, 2]
        crops = F.grid_sample(image.expand(n, -1, -1, -1), grid, mode="bilinear",
                              padding_mode="reflection", align_corners=False)  # [n, 3, oh, ow]
        if over > 1:
            crops = F.avg_pool2d(crops, over)
        if self.noise > 0:
            sigma = rand(n).to(image)[:, None, None, None] * self.noise
            crops = crops + sigma * torch.randn(crops.shape, generator=generator).to(image)
        return crops


class ClipObjective:
    """``loss(image) = sum_i w_i * mean_cutouts spherical_dist(clip(cutout), prompt_i)`` (+ init MSE, + TV).

    The model's own mean/std normalisation is applied to every view before ``encode_image``. Besides
    the cutouts, one plain view of the whole image is encoded in the same batch (it gets no loss): its
    cosine similarity to the main prompt is the ``score`` reported while optimising.
    """

    def __init__(self, model: torch.nn.Module, text_features: torch.Tensor, weights: Sequence[float],
                 cutouts: Cutouts, mean: Sequence[float], std: Sequence[float], main: int = 0,
                 init_image: torch.Tensor | None = None, init_weight: float = 0.0, tv_weight: float = 0.0) -> None:
        self.model = model
        self.text = F.normalize(text_features.float(), dim=-1)  # [P, D]
        self.weights = torch.tensor([float(w) for w in weights])  # [P]
        self.cutouts = cutouts
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1)  # [3] -> [1, 3, 1, 1]
        self.std = torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1)
        self.main = main
        self.init_image = init_image
        self.init_weight = float(init_weight)
        self.tv_weight = float(tv_weight)
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device

    def encode(self, views: torch.Tensor) -> torch.Tensor:
        """Normalised CLIP embeddings of ``[N, 3, h, w]`` views in [0, 1] -> ``[N, D]`` float32."""
        x = (views - self.mean.to(views)) / self.std.to(views)
        emb = self.model.encode_image(x.to(self.device, self.dtype))
        return F.normalize(emb.float(), dim=-1)

    @torch.no_grad()
    def score(self, image: torch.Tensor) -> float:
        """Cosine similarity of the whole image ``[1, 3, H, W]`` to the main prompt."""
        emb = self.encode(resize(image, self.cutouts.cut_size))  # [1, D]
        return float(emb[0] @ self.text[self.main].to(emb.device))

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """``(loss, stats)`` for ``image`` ``[1, 3, H, W]`` in [0, 1]; stats: ``score`` (whole-image cosine
        to the main prompt), ``clip_loss``, and ``init_loss`` / ``tv_loss`` when those terms are on."""
        cuts = self.cutouts(image, generator)  # [n, 3, ch, cw]
        whole = resize(image, self.cutouts.cut_size)  # [1, 3, ch, cw]
        emb = self.encode(torch.cat([whole, cuts]))  # [1 + n, D]
        text = self.text.to(emb.device)
        dist = spherical_dist(emb[1:, None, :], text[None, :, :])  # [n, 1, D] vs [1, P, D] -> [n, P]
        clip_loss = (dist.mean(dim=0) * self.weights.to(dist.device)).sum()
        loss = clip_loss
        stats = {"score": float(emb[0].detach() @ text[self.main]), "clip_loss": float(clip_loss.detach())}
        if self.init_image is not None and self.init_weight != 0:
            init_loss = F.mse_loss(image, self.init_image.to(image))
            loss = loss + self.init_weight * init_loss
            stats["init_loss"] = float(init_loss.detach())
        if self.tv_weight != 0:
            tv = total_variation(image)
            loss = loss + self.tv_weight * tv
            stats["tv_loss"] = float(tv.detach())
        return loss, stats


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels: a smoothness prior for raw pixels."""
    dy = image[..., 1:, :] - image[..., :-1, :]
    dx = image[..., :, 1:] - image[..., :, :-1]
    return dy.pow(2).mean() + dx.pow(2).mean()


@torch.no_grad()
def similarity_matrix(model: torch.nn.Module, images: torch.Tensor, text_features: torch.Tensor,
                      mean: Sequence[float], std: Sequence[float], image_size: tuple[int, int]) -> torch.Tensor:
    """Cosine similarities ``[N_images, N_texts]`` of whole images ``[N, 3, H, W]`` in [0, 1] (resized to
    ``image_size``) with ``text_features`` ``[T, D]``: the confusion-matrix check of a generated set."""
    cut = Cutouts(image_size, count=1)
    objective = ClipObjective(model, text_features, [1.0] * len(text_features), cut, mean, std)
    emb = objective.encode(resize(images.float(), image_size))  # [N, D]
    return emb @ objective.text.to(emb.device).T


__all__ = [
    "ClipObjective",
    "Cutouts",
    "Prompt",
    "parse_prompt",
    "resize",
    "similarity_matrix",
    "spherical_dist",
    "total_variation",
]
