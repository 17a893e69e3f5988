"""Image search: a persistent FAISS + SQLite index (``index``/``build``), queries (``query``), an HTTP server.

```python
from kontrast.search import update_index, Searcher
update_index("idx", ["photos/"], model, preprocess, tokenizer, model_spec="default")
hits = Searcher.open("idx").search(text="a red bicycle", k=10)
```
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "SearchIndex": "index", "ModelMismatchError": "index", "update_index": "build", "IndexStats": "build",
    "Searcher": "query", "SearchResult": "query",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'kontrast.search' has no attribute {name!r}")


__all__ = ["IndexStats", "ModelMismatchError", "SearchIndex", "SearchResult", "Searcher", "update_index"]
