"""Checkpoint formats (detect, read, write), converters and the pretrained registry."""

from .formats import Checkpoint, detect, read

__all__ = ["Checkpoint", "detect", "read"]
