"""Image parameterisations for CLIP-guided generation: what the optimiser actually changes.

Every parameterisation is an ``nn.Module`` whose ``forward()`` returns the current image ``[1, 3, H, W]``
in [0, 1]. The choice matters because CLIP gradients on raw pixels are dominated by high-frequency
patterns; reparameterising the image changes which directions plain Adam steps favour:

- ``PixelImage``: a logit per pixel (``sigmoid`` keeps values in range). Simple, noisy results.
- ``FourierImage``: a spectrum scaled by ``1/frequency`` plus a colour-decorrelation matrix, so every
  frequency and every decorrelated colour channel gets roughly the same step size (as in lucid's
  feature-visualisation work). Smoother, more natural images.
- ``VQGANImage``: a VQGAN latent decoded through a frozen decoder with a straight-through codebook.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import KontrastError
from .vqgan import VQGANDecoder

PARAMETERISATIONS = ("pixels", "fourier", "vqgan")

# Square root of the RGB colour covariance of natural images (ImageNet), as published with lucid's
# feature visualisations. Multiplying decorrelated channels by it yields correlated RGB.
_COLOR_SQRT_COV = torch.tensor([[0.26, 0.09, 0.02],
                                [0.27, 0.00, -0.05],
                                [0.27, -0.09, 0.03]])
_EPS = 1e-4  # keeps logit() finite for init images with pure black or white pixels


def _logit(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(_EPS, 1 - _EPS)
    return torch.log(x) - torch.log1p(-x)


class ImageParam(nn.Module):
    """Base class: ``forward() -> [1, 3, H, W]`` in [0, 1]; ``default_lr`` suits Adam on it."""

    default_lr: float = 0.05

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the image ``forward`` returns."""
        raise NotImplementedError


class PixelImage(ImageParam):
    """One free logit per pixel and channel: ``image = sigmoid(logits)``."""

    default_lr = 0.05

    def __init__(self, height: int, width: int, init: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, std: float = 0.1) -> None:
        super().__init__()
        if init is not None:
            logits = _logit(init.detach().float().reshape(1, 3, height, width))
        else:
            logits = torch.randn(1, 3, height, width, generator=generator) * std
        self.logits = nn.Parameter(logits)

    @property
    def size(self) -> tuple[int, int]:
        return self.logits.shape[-2], self.logits.shape[-1]

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)


class FourierImage(ImageParam):
    """A real 2-D spectrum per decorrelated colour channel, scaled by ``1 / |f| ** decay_power``.

    ``image = sigmoid(C @ irfft2(scale * spectrum))`` with ``C`` the colour square-root covariance
    (columns normalised). With an init image the spectrum is set so ``forward()`` reproduces it.
    """

    default_lr = 0.05

    def __init__(self, height: int, width: int, init: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, std: float = 0.01, decay_power: float = 1.0) -> None:
        super().__init__()
        self.height, self.width = height, width
        fy = torch.fft.fftfreq(height)[:, None]  # [H, 1], cycles per pixel
        fx = torch.fft.rfftfreq(width)[None, :]  # [1, W//2+1]
        freq = torch.sqrt(fx ** 2 + fy ** 2).clamp(min=1.0 / max(height, width))
        self.register_buffer("scale", freq ** -decay_power, persistent=False)  # [H, W//2+1]
        color = _COLOR_SQRT_COV / _COLOR_SQRT_COV.norm(dim=0).max()
        self.register_buffer("color", color, persistent=False)
        if init is not None:
            spectrum = self._spectrum_of(init.detach().float().reshape(1, 3, height, width))
        else:
            spectrum = torch.randn(3, height, width // 2 + 1, 2, generator=generator) * std
        self.spectrum = nn.Parameter(spectrum)  # [3, H, W//2+1, (real, imag)]

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def _spectrum_of(self, image: torch.Tensor) -> torch.Tensor:
        """The parameter that makes ``forward()`` return ``image`` (up to the logit clamp)."""
        logits = _logit(image[0])  # [3, H, W]
        # undo the colour mixing: logits = color @ decorrelated  (per pixel)
        decorrelated = torch.linalg.solve(self.color, logits.reshape(3, -1)).reshape(3, self.height, self.width)
        spectrum = torch.fft.rfft2(decorrelated, norm="ortho") / self.scale  # [3, H, W//2+1] complex
        return torch.view_as_real(spectrum).contiguous()  # -> [3, H, W//2+1, 2]

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale  # [3, H, W//2+1, 2] -> complex [3, H, W//2+1]
        decorrelated = torch.fft.irfft2(spectrum, s=(self.height, self.width), norm="ortho")  # [3, H, W]
        rgb = (self.color @ decorrelated.reshape(3, -1)).reshape(1, 3, self.height, self.width)  # [3, H*W] -> [1, 3, H, W]
        return torch.sigmoid(rgb)


class VQGANImage(ImageParam):
    """A continuous VQGAN latent ``[1, embed_dim, h, w]``, snapped to the codebook (straight-through)
    and decoded by a frozen ``VQGANDecoder``. Starts from random codebook entries.

    Without the VQGAN encoder an init image cannot be encoded; ``generate`` instead adds an MSE term
    pulling the decoded image towards the init image (``init_weight``).
    """

    default_lr = 0.1

    def __init__(self, decoder: VQGANDecoder, height: int, width: int,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        f = decoder.config.downsample
        if height < f or width < f:
            raise KontrastError(f"image size {height}x{width} is below the VQGAN's {f} pixels per latent cell; "
                                f"use --size {f} or more")
        decoder.requires_grad_(False)
        self.decoder = decoder.eval()
        self.latent = nn.Parameter(decoder.random_latent(height, width, generator=generator))

    @property
    def size(self) -> tuple[int, int]:
        f = self.decoder.config.downsample
        return self.latent.shape[-2] * f, self.latent.shape[-1] * f

    def forward(self) -> torch.Tensor:
        return self.decoder.decode(self.latent, quantize=True)


def make_param(kind: str, height: int, width: int, *, init: torch.Tensor | None = None,
               generator: torch.Generator | None = None, vqgan: VQGANDecoder | None = None) -> ImageParam:
    """The parameterisation named ``kind`` (``pixels``, ``fourier`` or ``vqgan``) for an image of
    ``height x width`` (a VQGAN rounds down to whole latent cells). ``init`` is ``[1, 3, H, W]`` in [0, 1]."""
    if kind == "pixels":
        return PixelImage(height, width, init=init, generator=generator)
    if kind == "fourier":
        return FourierImage(height, width, init=init, generator=generator)
    if kind == "vqgan":
        if vqgan is None:
            raise KontrastError("--param vqgan needs a VQGAN: pass --vqgan-checkpoint CKPT --vqgan-config YAML")
        return VQGANImage(vqgan, height, width, generator=generator)
    raise KontrastError(f"unknown parameterisation {kind!r}; use one of {', '.join(PARAMETERISATIONS)}")


def frequency_energy(image: torch.Tensor) -> float:
    """Share of the (mean-removed) spectral energy above a quarter of the Nyquist frequency:
    a rough "noisiness" number for comparing parameterisations."""
    x = image.detach().float().mean(dim=-3)  # [..., 3, H, W] -> [..., H, W] (grey)
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.rfft2(x).abs() ** 2
    h, w = x.shape[-2:]
    freq = torch.sqrt(torch.fft.rfftfreq(w)[None, :] ** 2 + torch.fft.fftfreq(h)[:, None] ** 2)
    total = power.sum()
    return float(power[..., freq > 0.125].sum() / total) if total > 0 else 0.0


__all__ = [
    "PARAMETERISATIONS",
    "FourierImage",
    "ImageParam",
    "PixelImage",
    "VQGANImage",
    "frequency_energy",
    "make_param",
]
