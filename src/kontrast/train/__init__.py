"""Contrastive training: losses, the loop (single process or torchrun), recipes, checkpoints, metrics."""

from .config import TrainConfig, apply_overrides, load_recipe
from .loop import Trainer, train
from .losses import ClipLoss, SigLipLoss, build_loss

__all__ = ["ClipLoss", "SigLipLoss", "TrainConfig", "Trainer", "apply_overrides", "build_loss", "load_recipe", "train"]
