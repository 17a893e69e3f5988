"""``model.locate(...)`` for every two-tower model class (CLIP, SigLIP): one method, defined once."""

from __future__ import annotations


class LocateMixin:
    """Adds ``locate``; the work is in ``kontrast.locate`` (imported on first use: it sits above the models)."""

    def locate(self, images, texts, method: str | None = None, size: int | None = None, **kwargs):
        """Where each text is in each image: similarity maps over the patch grid ``[N, T, gh, gw]`` and at the input's
        pixels ``[N, T, H, W]`` (a ``kontrast.locate.Localisation``). ``images``: pixels ``[N, 3, H, W]``, or images /
        paths preprocessed with this model's record at ``size``; ``texts``: strings, token ids or text features.
        ``method``: ``"clearclip"`` (default), ``"maskclip"``, ``"tokens"`` or ``"crops"`` (``kontrast.models.dense``)."""
        from ..locate.core import locate

        if method is not None:
            kwargs["method"] = method
        return locate(self, images, texts, size=size, **kwargs)
