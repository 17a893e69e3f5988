"""kontrast: CLIP models, checkpoints, zero-shot classification, search, training and evaluation.

```python
import kontrast
model, preprocess, tokenizer = kontrast.load("ViT-B-32", pretrained="openai")
```
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Public names, imported lazily so that ``import kontrast`` stays cheap (no torch work at import time).
_EXPORTS = {
    "load": "api", "create_model": "api", "list_models": "architectures", "list_pretrained": "api", "save": "api", "export": "api",
    "fingerprint": "record", "get_model_config": "architectures", "get_tokenizer": "api",
    "ModelRecord": "record", "PreprocessConfig": "record", "TokenizerConfig": "record", "Provenance": "record",
    "build_preprocess": "record", "build_tokenizer": "record",
    "tokenize": "tokenizer", "Tokenizer": "tokenizer",
    "Preprocess": "preprocess", "image_transform": "preprocess",
    "CLIP": "models", "ModelConfig": "config", "VisionConfig": "config", "TextConfig": "config",
    "KontrastError": "errors", "ConfigError": "errors",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    if name in {"zeroshot", "data", "train", "evaluate", "search", "generate", "export_", "checkpoints", "models"}:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'kontrast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = list(_EXPORTS)
