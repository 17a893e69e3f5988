"""Zero-shot localisation: where in an image a text is (similarity maps, boxes, overlay pictures)."""

from ..models.dense import METHODS
from .boxes import Box, boxes_from_map
from .core import Localisation, locate
from .render import overlay

__all__ = ["METHODS", "Box", "Localisation", "boxes_from_map", "locate", "overlay"]
