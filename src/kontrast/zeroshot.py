"""Zero-shot classification: one text embedding per class from prompt templates, then a softmax (CLIP) or a sigmoid
per class (SigLIP).

The classifier of a class is the CLIP paper's prompt ensemble: embed ``template.replace("{}", name)``
for every template, L2-normalise each embedding, average them, and renormalise. Images are classified
with ``softmax(exp(logit_scale) * normalize(image) @ classifier.T)`` over the classes, or, for models trained with
the sigmoid loss, ``sigmoid(exp(logit_scale) * cos + logit_bias)`` per class (``probabilities``).

Template sets are data files in ``kontrast/zeroshot_templates/`` (one template per line, ``{}`` marks
the class name, blank lines and lines starting with ``"# "`` are ignored):

- ``imagenet``: OpenAI's 80 ImageNet prompts ("a bad photo of a {}.", "itap of my {}.", ...).
- ``simple``: 7 generic prompts for photos, pictures, emoji, clip art and drawings, plus the bare name.
  Articles are not adapted to the name ("a photo of a apple."); CLIP does not mind much.

Built classifiers are cached in memory and on disk (``cache_dir``, default ``$KONTRAST_CACHE/zeroshot``
or ``~/.cache/kontrast/zeroshot``) under ``sha256(model fingerprint, class names, templates, long-text
policy)``, so a second run with the same model and labels skips the text tower.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import KontrastError
from .text_features import LONG_TEXT_MODES, LongTextWarning, encode_texts

__all__ = [
    "LONG_TEXT_MODES",
    "TEMPLATE_SETS",
    "LongTextWarning",
    "ZeroShotClassifier",
    "build_classifier",
    "classify",
    "clear_memory_cache",
    "default_cache_dir",
    "encode_texts",
    "fill_template",
    "load_templates",
    "probabilities",
    "top_k",
    "uses_sigmoid",
]

log = logging.getLogger(__name__)

TEMPLATE_SETS = ("imagenet", "simple")
_MEMORY_CACHE_SIZE = 16
_memory_cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # key -> [C, D] float32 on CPU


# ---- templates --------------------------------------------------------------------------------------
def _parse_template_lines(text: str) -> list[str]:
    return [line.rstrip("\r\n") for line in text.splitlines() if line.strip() and not line.startswith("# ")]


def load_templates(spec: str | os.PathLike | Sequence[str] | None = "imagenet") -> list[str]:
    """Prompt templates from a set name (``"imagenet"``, ``"simple"``), a file (one per line), or a list.

    ``None`` means ``"imagenet"``. A string that is neither a set name nor a file but contains ``{}``
    is one template. Every template must contain ``{}`` (where the class name goes).
    """
    origin = "templates"
    if spec is None:
        spec = "imagenet"
    if isinstance(spec, (str, os.PathLike)):
        name = os.fspath(spec)
        if name in TEMPLATE_SETS:
            origin = f"template set {name!r}"
            text = (resources.files("kontrast") / "zeroshot_templates" / f"{name}.txt").read_text(encoding="utf-8")
            templates = _parse_template_lines(text)
        elif Path(name).expanduser().is_file():
            origin = f"template file {name}"
            try:
                templates = _parse_template_lines(Path(name).expanduser().read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                raise KontrastError(f"cannot read template file {name}: {exc}; give a UTF-8 text file") from exc
        elif "{}" in name:
            templates = [name]
        else:
            raise KontrastError(
                f"templates {name!r}: not a template set ({', '.join(TEMPLATE_SETS)}), not a file, and no '{{}}' in it"
            )
    else:
        templates = list(spec)
        for t in templates:
            if not isinstance(t, str):
                raise KontrastError(f"template {t!r} is a {type(t).__name__}, not a str")
    if not templates:
        raise KontrastError(f"{origin}: no templates (give at least one line with '{{}}' for the class name)")
    for t in templates:
        if "{}" not in t:
            raise KontrastError(
                f"{origin}: template {t!r} has no '{{}}' where the class name goes; add it, e.g. 'a photo of a {{}}.'"
            )
    return templates


def fill_template(template: str, name: str) -> str:
    """``template`` with every ``{}`` replaced by ``name``. Templates are data: no ``str.format`` (which would
    interpret ``{0.__class__}`` or ``{:>10000000}``); every other brace stays as it is."""
    return template.replace("{}", name)


# ---- classifier -------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$KONTRAST_CACHE/zeroshot`` or ``~/.cache/kontrast/zeroshot``."""
    root = os.environ.get("KONTRAST_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "kontrast") / "zeroshot"


def clear_memory_cache() -> None:
    """Forget the classifiers cached in memory (the disk cache is kept)."""
    _memory_cache.clear()


def _cache_key(model: torch.nn.Module, classnames: Sequence[str], templates: Sequence[str], long_text: str) -> str:
    from .record import fingerprint

    payload = json.dumps({"model": fingerprint(model), "classnames": list(classnames), "templates": list(templates),
                          "long_text": long_text, "version": 1}, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _read_disk_cache(path: Path, n_classes: int) -> torch.Tensor | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable zero-shot cache file %s (%s)", path, exc)
        return None
    if arr.ndim != 2 or arr.shape[0] != n_classes:
        log.warning("ignoring zero-shot cache file %s with shape %s", path, arr.shape)
        return None
    return torch.from_numpy(arr.astype(np.float32, copy=False))


def _write_disk_cache(path: Path, weights: torch.Tensor) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, weights.numpy())
        os.replace(tmp, path)  # atomic: readers never see half a file
    except OSError as exc:  # a read-only cache must not break classification
        log.warning("could not write zero-shot cache %s (%s)", path, exc)


def build_classifier(
    model: torch.nn.Module,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: str | os.PathLike | Sequence[str] | None = "imagenet",
    batch_size: int = 256,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[int], None] | None = None,
    long_text: str = "truncate",
    cache: bool = True,
) -> torch.Tensor:
    """Class embeddings ``[C, D]`` (float32, unit rows, on the model's device) for ``classnames``.

    Row ``c`` is ``normalize(mean_t normalize(encode_text(template_t with classnames[c])))``. Results
    are cached in memory and in ``cache_dir`` (see the module docstring) unless ``cache=False``.
    ``progress(n)`` is called with the number of prompts embedded after each batch.
    """
    classnames = [str(c) for c in classnames]
    if not classnames:
        raise KontrastError("no class names given; pass at least one label")
    dupes = sorted({c for c in classnames if classnames.count(c) > 1})
    if dupes:
        raise KontrastError(f"class name {dupes[0]!r} is given more than once; give each label once")
    templates = load_templates(templates)
    device = next(model.parameters()).device
    key = path = None
    if cache:
        key = _cache_key(model, classnames, templates, long_text)
        if key in _memory_cache:
            _memory_cache.move_to_end(key)
            return _memory_cache[key].clone().to(device)
        path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        path = path / f"{key}.npy"
        if path.is_file():
            weights = _read_disk_cache(path, len(classnames))
            if weights is not None:
                _remember(key, weights)
                return weights.clone().to(device)

    prompts = [fill_template(t, name) for name in classnames for t in templates]  # class-major: [C * T]
    emb = encode_texts(model, tokenizer, prompts, long_text=long_text, batch_size=batch_size, progress=progress)
    emb = emb.reshape(len(classnames), len(templates), -1)  # [C*T, D] -> [C, T, D]
    weights = F.normalize(emb.mean(dim=1), dim=-1)  # [C, D]

    if cache:
        cpu = weights.detach().cpu().contiguous()
        _remember(key, cpu)
        _write_disk_cache(path, cpu)
    return weights


def _remember(key: str, weights: torch.Tensor) -> None:
    _memory_cache[key] = weights.clone()
    _memory_cache.move_to_end(key)
    while len(_memory_cache) > _MEMORY_CACHE_SIZE:
        _memory_cache.popitem(last=False)


def uses_sigmoid(model: Any) -> bool:
    """Whether ``model``'s probabilities are a sigmoid per label: SigLIP models, and CLIP models trained with the
    SigLIP loss (they have a ``logit_bias``); ``model.sigmoid`` says so."""
    return bool(getattr(model, "sigmoid", False))


@torch.no_grad()
def probabilities(model: Any, cosines: torch.Tensor) -> torch.Tensor:
    """Probabilities ``[..., C]`` from cosine similarities ``[..., C]`` of images and labels (float32).

    CLIP models: ``softmax(exp(logit_scale) * cos)`` over the labels. SigLIP models (``uses_sigmoid``, trained with a
    sigmoid per pair): ``sigmoid(exp(logit_scale) * cos + logit_bias)`` for each label on its own, so a row need not
    sum to 1 and an image that fits no label gets low probabilities everywhere. Every place that shows zero-shot
    probabilities (``classify``, the CLI, the server's ``/classify``, the demo report) computes them here.
    """
    cos = cosines.float()
    logits = model.logit_scale.detach().float().exp().to(cos.device) * cos
    if uses_sigmoid(model):
        return torch.sigmoid(logits + model.logit_bias.detach().float().to(cos.device))
    return logits.softmax(dim=-1)


@torch.no_grad()
def classify(model: torch.nn.Module, image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``[N, C]`` of ``normalize(image_features) @ classifier.T`` (see ``probabilities``)."""
    img = F.normalize(image_features.float(), dim=-1)
    weights = classifier.to(device=img.device, dtype=torch.float32)
    return probabilities(model, img @ weights.T)


def top_k(probs: torch.Tensor, classnames: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
    """The ``k`` most probable ``(class name, probability)`` pairs of each row, best first."""
    if probs.ndim == 1:
        probs = probs[None]
    k = max(1, min(int(k), probs.shape[1]))
    values, indices = probs.float().topk(k, dim=-1)
    return [[(classnames[int(i)], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(values.cpu(), indices.cpu())]


# ---- convenience wrapper ----------------------------------------------------------------------------
class ZeroShotClassifier:
    """Classify images (PIL images, paths or bytes) into ``classnames``.

    ```python
    model, preprocess, tokenizer = kontrast.load("default")
    clf = ZeroShotClassifier(model, preprocess, tokenizer, ["cat", "dog"])
    clf.predict(["pet.jpg"], k=1)   # [[("cat", 0.93)]]
    ```
    The class embeddings are built on first use (and cached, see ``build_classifier``).
    """

    def __init__(self, model: torch.nn.Module, preprocess: Callable, tokenizer: Callable, classnames: Sequence[str],
                 templates: str | os.PathLike | Sequence[str] | None = "simple", batch_size: int = 64,
                 **classifier_kwargs: Any) -> None:
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.classnames = [str(c) for c in classnames]
        self.templates = load_templates(templates)
        self.batch_size = batch_size
        self._classifier_kwargs = classifier_kwargs
        self._weights: torch.Tensor | None = None

    @property
    def weights(self) -> torch.Tensor:
        """The class embeddings ``[C, D]``."""
        if self._weights is None:
            self._weights = build_classifier(self.model, self.tokenizer, self.classnames, self.templates,
                                             **self._classifier_kwargs)
        return self._weights

    @torch.no_grad()
    def encode_images(self, images: Sequence[Any]) -> torch.Tensor:
        """Image embeddings ``[N, D]`` of PIL images, paths or bytes (a bad image raises ``ImageError``)."""
        device = next(self.model.parameters()).device
        dtype = next(self.model.visual.parameters()).dtype
        out = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.preprocess(im) for im in images[start: start + self.batch_size]])
            out.append(self.model.encode_image(pixels.to(device=device, dtype=dtype)).float())
        if not out:
            return torch.zeros((0, self.model.embed_dim), device=device)
        return torch.cat(out)

    def __call__(self, images: Any) -> torch.Tensor:
        """Probabilities ``[N, C]`` for a list of images (or one image: ``N = 1``)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        return classify(self.model, self.encode_images(list(images)), self.weights)

    def predict(self, images: Any, k: int = 1) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(class name, probability)`` pairs per image."""
        return top_k(self(images), self.classnames, k)
