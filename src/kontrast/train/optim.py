"""AdamW parameter groups and the cosine learning-rate schedule with linear warmup."""

from __future__ import annotations

import math

import torch
from torch import nn


def exclude_from_decay(name: str, param: torch.Tensor) -> bool:
    """Gains, biases, embeddings and the temperature get no weight decay (open_clip's rule)."""
    return param.ndim < 2 or "embedding" in name or "logit_scale" in name or "logit_bias" in name or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: decayed matrices, and the rest without decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if exclude_from_decay(name, p) else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.2, betas: tuple[float, float] = (0.9, 0.98),
                    eps: float = 1e-6) -> torch.optim.AdamW:
    """AdamW with open_clip's defaults for CLIP training (betas 0.9/0.98, eps 1e-6, wd 0.2)."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps)


def cosine_lr(step: int, base_lr: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """Linear warmup from ``base_lr / warmup`` to ``base_lr``, then cosine decay to ``min_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    decay_steps = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base_lr - min_lr)


class CosineSchedule:
    """Sets the optimiser's lr for a step; stateless apart from its settings (resume = same step)."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, warmup: int, total: int, min_lr: float = 0.0) -> None:
        self.optimizer = optimizer
        self.base_lr, self.warmup, self.total, self.min_lr = base_lr, warmup, total, min_lr

    def __call__(self, step: int) -> float:
        lr = cosine_lr(step, self.base_lr, self.warmup, self.total, self.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "warmup": self.warmup, "total": self.total, "min_lr": self.min_lr}

    def load_state_dict(self, state: dict) -> None:
        self.base_lr, self.warmup, self.total, self.min_lr = (state[k] for k in ("base_lr", "warmup", "total", "min_lr"))
