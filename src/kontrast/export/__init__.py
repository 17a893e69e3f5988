"""Deployment formats and fast inference back ends: ONNX export of both towers, an onnxruntime back end
(``kontrast.load(..., backend="onnx")``) and int8 quantisation of the exported graphs.

The package shares its name with the function ``kontrast.export(model, folder, format=...)``. Importing a
subpackage makes Python bind ``kontrast.export`` to it, so this module stays callable and forwards calls
to ``kontrast.api.export``: both ``kontrast.export(model, "dir", format="hf")`` and
``kontrast.export.onnx_export.export_onnx(...)`` work, whatever was imported first.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    """This package, callable as ``kontrast.api.export``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from ..api import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["OnnxCLIP", "export_onnx", "load_onnx", "quantize_onnx_int8"]


def __getattr__(name: str) -> Any:
    """Lazy access to the public helpers, so that importing the package does not import onnx."""
    if name in ("export_onnx", "verify_onnx"):
        from . import onnx_export as module
    elif name in ("OnnxCLIP", "load_onnx"):
        from . import runtime as module
    elif name == "quantize_onnx_int8":
        from . import quantize as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)
