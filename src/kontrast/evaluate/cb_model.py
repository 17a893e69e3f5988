"""A CLIP_benchmark model type for kontrast models, so ``clip_benchmark eval`` itself can run them.

CLIP_benchmark (1.6.2) picks a loader by ``--model_type`` from ``clip_benchmark.models.TYPE2FUNC``;
a loader is ``f(model_name, pretrained, cache_dir, device) -> (model, transform, tokenizer)`` where the
model has ``encode_image`` / ``encode_text``, the transform maps a PIL image to a tensor, and the
tokenizer maps a list of strings to a tensor of ids. ``load_kontrast`` is that loader; ``register()``
adds it under the name ``kontrast``. Either register it in your own script::

    from kontrast.evaluate.cb_model import register
    register()
    from clip_benchmark.cli import main; main()

or run CLIP_benchmark's command line with it registered::

    python -m kontrast.evaluate.cb_model eval --model_type kontrast --model ViT-B-32 --pretrained openai \\
        --dataset wds/cifar10 --dataset_root /data/wds_cifar10 --recall_k 1 5 10
    python -m kontrast.evaluate.cb_model eval --model_type kontrast --model kontrast \\
        --pretrained runs/x/checkpoint.pt --dataset wds/emoji --dataset_root /data/wds_emoji

``--pretrained`` is a kontrast pretrained tag for an architecture name, or a checkpoint path (then the
result files name it as ``kontrast eval`` does: model ``kontrast``, pretrained the path); ``--model
default`` (with ``--pretrained ""``) is the embedded default model.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

MODEL_TYPE = "kontrast"


def load_kontrast(
    model_name: str = "default",
    pretrained: str | None = None,
    cache_dir: str | None = None,
    device: str = "cpu",
) -> tuple[Any, Callable, Callable]:
    """``(model, transform, tokenizer)`` in CLIP_benchmark's loader signature, the model in eval mode.

    ``pretrained`` that is an existing path is the checkpoint to load; otherwise it is the pretrained
    tag of the architecture ``model_name`` (ignored for ``default``, paths and ``hf-hub:`` names, which
    say their weights themselves; CLIP_benchmark passes its own default tag when none is given).
    """
    from ..api import load

    if pretrained and os.path.exists(os.path.expanduser(pretrained)):
        name, tag = pretrained, None
    elif model_name == "default" or model_name.startswith("hf-hub:") or os.path.exists(os.path.expanduser(model_name)):
        name, tag = model_name, None
    else:
        name, tag = model_name, pretrained or None
    model, preprocess, tokenizer = load(name, pretrained=tag, device=str(device), cache_dir=cache_dir)
    model.eval()
    return model, preprocess, tokenizer


def register() -> None:
    """Add the ``kontrast`` model type to ``clip_benchmark.models`` (its CLI choices read the same list)."""
    from clip_benchmark import models

    models.TYPE2FUNC[MODEL_TYPE] = load_kontrast
    if MODEL_TYPE not in models.MODEL_TYPES:
        models.MODEL_TYPES.append(MODEL_TYPE)


def main(argv: list[str] | None = None) -> int:
    """``clip_benchmark`` with the ``kontrast`` model type registered (arguments as its CLI takes them)."""
    register()
    from clip_benchmark import cli

    sys.argv = ["clip_benchmark", *(sys.argv[1:] if argv is None else argv)]
    return int(cli.main() or 0)


if __name__ == "__main__":
    sys.exit(main())
