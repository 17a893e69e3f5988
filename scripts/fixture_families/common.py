"""Shared helpers of the reference-fixture families (see ``scripts/make_reference_fixtures.py``).

Each module of this package registers its families with ``@family("name")``; the main script imports every
module here, so a new family is a new function (or a new module) and touches nothing else.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
if not SHARED.is_dir():
    SHARED = Path("/work/shared")
PREPROCESS_DIR = SHARED / "fixtures" / "preprocess"
# Shared test images (PNG only: bit-exact targets); their modes cover RGB, RGBA, L and P.
IMAGE_NAMES = ["rgb_300x200", "rgb_97x311", "rgba_161x160", "gray_200x203", "palette_130x170", "rgb_64x64"]
# Texts every family tokenizes (row order of ``tokens`` in each expected.safetensors).
TEXTS = [
    "a photo of a cat",
    "A DIAGRAM of a neural-network!",
    "it's a café in Zürich, 1999",
    "two  people\triding bikes_at sunset...",
    "",
    "a very long caption " + " ".join(f"word{i}" for i in range(80)),
]

# ---- shared helpers ---------------------------------------------------------------------------------
def import_open_clip():
    """``open_clip`` with torchvision's two C ops declared when its extension cannot load (CUDA wheel on CPU)."""
    try:
        import open_clip

        return open_clip
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    for name in [m for m in sys.modules if m.startswith(("torchvision", "open_clip", "timm"))]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import_open_clip.lib = lib  # keep the library object alive
    import open_clip

    return open_clip


def reinit_(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """Redraw every floating tensor (parameters and buffers) of ``module`` from a seeded generator.

    LayerNorm weights are drawn around 1 and everything else around 0, so no tensor keeps its default and the
    activations stay in a sane range through a couple of blocks.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict(keep_vars=True).items()):
            if not tensor.is_floating_point() or "logit_" in name:
                continue
            noise = torch.randn(tensor.shape, generator=gen) * std
            is_norm_weight = tensor.dim() == 1 and name.endswith("weight") and ("norm" in name or "ln" in name)
            tensor.copy_((1.0 + noise) if is_norm_weight else noise)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(path))


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


@dataclass
class FamilyContext:
    """What every family function gets: where to write, the shared texts and images, a place for cross-checks."""

    out: Path  # this family's folder (created, emptied of stale files by the caller)
    texts: list[str] = field(default_factory=lambda: list(TEXTS))
    image_names: list[str] = field(default_factory=lambda: list(IMAGE_NAMES))

    def images(self) -> dict[str, Image.Image]:
        """The shared PNGs, opened as a user would (mode preserved: RGB, RGBA, L, P)."""
        return {n: Image.open(PREPROCESS_DIR / f"{n}.png") for n in self.image_names}

    def copy_images_note(self) -> str:
        return f"images: {', '.join(self.image_names)} from shared/fixtures/preprocess (not copied)"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for mod in ("open_clip", "transformers", "timm", "tokenizers", "sentencepiece", "safetensors", "PIL"):
        try:
            if mod == "open_clip":
                out[mod] = import_open_clip().__version__
            else:
                out[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 - a version table: record why a package is missing
            out[mod] = f"unavailable ({type(exc).__name__})"
    return out


# ---- families ----------------------------------------------------------------------------------------
# name -> function(ctx) -> manifest entry; filled by ``@family`` in the modules of this package.
FAMILIES: dict[str, Callable[[FamilyContext], dict[str, Any]]] = {}


def family(name: str):
    """Register ``make_<name>`` under ``name`` in ``FAMILIES``."""

    def register(fn):
        FAMILIES[name] = fn
        return fn

    return register


