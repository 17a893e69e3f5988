"""The optimisation loop of CLIP-guided generation, frames and GIFs.

``generate(model, tokenizer, prompts, ...)`` encodes the prompts once, builds the image
parameterisation, and runs Adam (linear warm-up, then cosine or step decay) on the CLIP objective.
Determinism: every random draw (initial image, cutouts, noise) comes from ``torch.Generator``s seeded
with ``config.seed``, and deterministic algorithms are switched on for the run (restored afterwards).
Progress goes to a callback; this module never prints.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..errors import KontrastError
from .objective import ClipObjective, Cutouts, Prompt, parse_prompt, resize
from .params import ImageParam, make_param
from .vqgan import VQGANDecoder

SCHEDULES = ("cosine", "step", "constant")


@dataclass
class GenerateConfig:
    """Knobs of one generation run (the CLI flags map onto these one to one)."""

    steps: int = 300
    size: tuple[int, int] = (224, 224)  # (height, width) of the output image
    param: str = "fourier"  # pixels | fourier | vqgan
    lr: float | None = None  # None: the parameterisation's default_lr
    schedule: str = "cosine"  # cosine | step | constant, after warm-up
    warmup: float = 0.05  # fraction of the steps with a linear learning-rate warm-up
    final_lr_ratio: float = 0.1  # cosine decays to lr * this
    cutouts: int = 32
    cut_min_scale: float | None = None  # smallest crop side / shorter image side; None: auto_min_scale
    cut_power: float = 1.0  # > 1 favours small crops
    noise: float = 0.05
    seed: int = 0
    init_weight: float = 0.0  # MSE pull towards the init image (the only use of --init for vqgan)
    tv_weight: float = 0.0  # total-variation smoothness prior
    frame_every: int = 0  # keep a frame every N steps (0: none)


@dataclass
class StepInfo:
    """What the progress callback receives after every step."""

    step: int  # 1-based
    steps: int
    loss: float
    score: float  # cosine similarity of the whole image to the main prompt (before this step's update)
    lr: float
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class GenerateResult:
    image: Image.Image
    tensor: torch.Tensor  # [3, H, W] in [0, 1]
    scores: list[float]  # score before each step
    final_score: float  # score of the final image
    losses: list[float]
    frames: list[Image.Image]
    prompts: list[Prompt]


def lr_at(step: int, steps: int, base: float, schedule: str = "cosine", warmup: float = 0.05,
          final_ratio: float = 0.1) -> float:
    """Learning rate for 0-based ``step``: linear warm-up over ``warmup * steps`` steps, then
    ``cosine`` (down to ``final_ratio * base``), ``step`` (x0.3 at each third) or ``constant``."""
    if schedule not in SCHEDULES:
        raise KontrastError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    warm = max(1, round(warmup * steps)) if warmup > 0 else 0
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)  # 0 .. 1 after warm-up
    if schedule == "cosine":
        return base * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
    if schedule == "step":
        return base * 0.3 ** min(2, int(t * 3))
    return base  # constant


def auto_min_scale(image_size: tuple[int, int], cut_size: tuple[int, int]) -> float:
    """Smallest crop side as a fraction of the image: crops down to the model's input size (so CLIP
    rarely sees upsampled pixels), kept within [0.25, 0.7] so there is always some zoom variety
    and no crop covers less than 1/16 of the image."""
    return min(0.7, max(0.25, min(cut_size) / min(image_size)))


def to_pil(image: torch.Tensor) -> Image.Image:
    """``[1, 3, H, W]`` or ``[3, H, W]`` in [0, 1] -> RGB PIL image."""
    x = image.detach().float().reshape(-1, *image.shape[-2:])  # [.., 3, H, W] -> [3, H, W]
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()  # -> [H, W, 3]
    return Image.fromarray(arr, "RGB")


def load_init_image(path: str | os.PathLike | Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """An init image as ``[1, 3, H, W]`` in [0, 1]: centre-cropped to the aspect of ``size``, then resized."""
    from ..preprocess import load_image

    img = load_image(path).convert("RGB")
    h, w = size
    scale = min(img.width / w, img.height / h)
    cw, ch = round(w * scale), round(h * scale)
    left, top = (img.width - cw) // 2, (img.height - ch) // 2
    img = img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(h, w, 3)
    return x.permute(2, 0, 1)[None].float() / 255  # [H, W, 3] -> [1, 3, H, W]


@contextlib.contextmanager
def _frozen(model: torch.nn.Module, deterministic: bool = True) -> Iterator[None]:
    """Eval mode, no parameter gradients and deterministic algorithms for the run; all restored after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_det = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_det, warn_only=was_warn)
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _image_size(model: torch.nn.Module) -> tuple[int, int]:
    size = getattr(model, "image_size", 224)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _normalisation(model: torch.nn.Module) -> tuple[Sequence[float], Sequence[float]]:
    """The model's own mean / std (its record), OpenAI's for objects without a config."""
    from ..record import OPENAI_MEAN, OPENAI_STD, record_of

    if getattr(model, "config", None) is None:
        return OPENAI_MEAN, OPENAI_STD
    pre = record_of(model).preprocess
    return pre.mean, pre.std


def encode_prompts(model: torch.nn.Module, tokenizer: Callable, prompts: Sequence[Prompt]) -> torch.Tensor:
    """Normalised text embeddings ``[P, D]`` (float32) of the prompts' texts."""
    with torch.no_grad():
        ids = tokenizer([p.text for p in prompts])
        device = next(model.parameters()).device
        return torch.nn.functional.normalize(model.encode_text(ids.to(device)).float(), dim=-1)


def generate(model: torch.nn.Module, tokenizer: Callable, prompts: Sequence[Prompt | str],
             config: GenerateConfig | None = None, *, init_image: torch.Tensor | None = None,
             vqgan: VQGANDecoder | None = None, param: ImageParam | None = None,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             progress: Callable[[StepInfo], None] | None = None) -> GenerateResult:
    """Optimise an image so its CLIP embedding matches the weighted ``prompts`` (strings may carry
    ``":weight"``). ``init_image``: ``[1, 3, H, W]`` in [0, 1] at ``config.size`` (see ``load_init_image``)
    — the starting image for pixels/fourier, and the target of the ``init_weight`` MSE term for all.
    ``param`` overrides the parameterisation built from ``config.param``. ``mean``/``std`` default to
    the model config's preprocessing normalisation."""
    cfg = config or GenerateConfig()
    prompts = [p if isinstance(p, Prompt) else parse_prompt(p) for p in prompts]
    check_config(cfg, prompts)
    main = next(i for i, p in enumerate(prompts) if p.weight > 0)
    if mean is None or std is None:
        mean, std = _normalisation(model)
    init_gen = torch.Generator().manual_seed(cfg.seed)
    cut_gen = torch.Generator().manual_seed(cfg.seed + 1)
    if param is None:
        param = make_param(cfg.param, *cfg.size, init=init_image if cfg.param != "vqgan" else None,
                           generator=init_gen, vqgan=vqgan)
    device = next(model.parameters()).device
    param = param.to(device)
    target = None
    if init_image is not None and cfg.init_weight != 0:
        target = resize(init_image.float(), param.size).to(device)  # a VQGAN may have rounded the size down
    cut_size = _image_size(model)
    min_scale = cfg.cut_min_scale if cfg.cut_min_scale is not None else auto_min_scale(param.size, cut_size)
    cutouts = Cutouts(cut_size, count=cfg.cutouts, min_scale=min_scale,
                      size_power=cfg.cut_power, noise=cfg.noise)
    base_lr = cfg.lr if cfg.lr is not None else param.default_lr
    params = [p for p in param.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=base_lr)
    scores: list[float] = []
    losses: list[float] = []
    frames: list[Image.Image] = []
    with _frozen(model):
        objective = ClipObjective(model, encode_prompts(model, tokenizer, prompts), [p.weight for p in prompts],
                                  cutouts, mean, std, main=main, init_image=target,
                                  init_weight=cfg.init_weight, tv_weight=cfg.tv_weight)
        for step in range(cfg.steps):
            lr = lr_at(step, cfg.steps, base_lr, cfg.schedule, cfg.warmup, cfg.final_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            image = param()
            if cfg.frame_every and step % cfg.frame_every == 0:
                frames.append(to_pil(image))
            loss, stats = objective(image, cut_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scores.append(stats["score"])
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(StepInfo(step + 1, cfg.steps, losses[-1], stats["score"], lr, stats))
        with torch.no_grad():
            final = param().detach()
        final_score = objective.score(final)
    if cfg.frame_every:
        frames.append(to_pil(final))
    return GenerateResult(to_pil(final), final[0].float().cpu().clamp(0, 1), scores, final_score, losses, frames,
                          list(prompts))


def check_config(cfg: GenerateConfig, prompts: Sequence[Prompt]) -> None:
    """Raise a one-line ``KontrastError`` for settings ``generate`` cannot run with."""
    if not prompts:
        raise KontrastError("no prompt: give at least one text, e.g. kontrast generate \"a red heart\"")
    if not any(p.weight > 0 for p in prompts):
        raise KontrastError("every prompt has a weight <= 0; give at least one positive prompt to move towards")
    if cfg.steps < 1:
        raise KontrastError(f"--steps must be at least 1, got {cfg.steps}")
    if cfg.cutouts < 1:
        raise KontrastError(f"--cutouts must be at least 1, got {cfg.cutouts}")
    if min(cfg.size) < 8:
        raise KontrastError(f"--size must be at least 8 pixels, got {cfg.size[1]}x{cfg.size[0]}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise KontrastError(f"--lr must be positive, got {cfg.lr}")
    if cfg.cut_min_scale is not None and not 0 < cfg.cut_min_scale <= 1:
        raise KontrastError(f"cut_min_scale must be in (0, 1], got {cfg.cut_min_scale}")
    if cfg.frame_every < 0:
        raise KontrastError(f"--frame-every must be >= 0, got {cfg.frame_every}")
    lr_at(0, cfg.steps, 1.0, cfg.schedule)  # validates the schedule name


def save_frames(frames: Sequence[Image.Image], folder: str | os.PathLike) -> list[Path]:
    """Write ``frame_00000.png``, ... into ``folder`` (created); returns the paths."""
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"frame_{i:05d}.png" for i in range(len(frames))]
        for frame, path in zip(frames, paths):
            frame.save(path)
    except OSError as exc:
        raise KontrastError(f"cannot write frames to {folder}: {exc.strerror or exc}; pass a writable --frames DIR") from exc
    return paths


def save_gif(frames: Sequence[Image.Image], path: str | os.PathLike, duration_ms: int = 80,
             hold_last_ms: int = 1000) -> Path:
    """An animated, looping GIF of the frames (the last one held ``hold_last_ms``)."""
    if not frames:
        raise KontrastError(f"no frames for {path}: frames are kept every --frame-every steps")
    durations = [duration_ms] * (len(frames) - 1) + [hold_last_ms]
    try:
        frames[0].save(path, save_all=True, append_images=list(frames[1:]), duration=durations, loop=0,
                       optimize=True, disposal=1)
    except OSError as exc:
        raise KontrastError(f"cannot write GIF {path}: {exc.strerror or exc}") from exc
    return Path(path)


__all__ = [
    "SCHEDULES",
    "GenerateConfig",
    "GenerateResult",
    "StepInfo",
    "auto_min_scale",
    "check_config",
    "encode_prompts",
    "generate",
    "load_init_image",
    "lr_at",
    "save_frames",
    "save_gif",
    "to_pil",
]
