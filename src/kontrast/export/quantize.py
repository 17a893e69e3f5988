"""int8 quantisation of exported ONNX towers (onnxruntime dynamic quantisation).

Weights of the matrix multiplies (and the token-embedding table) are stored as int8 with one scale per
output channel; activations are quantised on the fly per batch. onnxruntime then runs the products as
int8 dot products (VNNI on CPUs that have it). Features stay close to float32 (cosine similarity above
0.995 on real images; measured by ``tests/test_onnx.py`` and ``benchmarks/encode.py``), and the files
shrink about 4x. ``kontrast.export.runtime`` leaves Hugging Face text towers in float32 (they do not
stay within that bound).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from ..errors import KontrastError

log = logging.getLogger(__name__)


class _DropAdvice(logging.Filter):
    """Drops what the quantiser logs on the root logger below WARNING (per-tensor notes, generic advice)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "root" or (record.levelno >= logging.WARNING
                                         and "pre-processing before quantization" not in record.getMessage())


def quantize_onnx_int8(src: str | os.PathLike, dst: str | os.PathLike, per_channel: bool = True) -> Path:
    """Write a dynamically int8-quantised copy of the ONNX graph ``src`` to ``dst``."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:  # pragma: no cover - onnxruntime is part of the 'fast' extra
        raise KontrastError("int8 quantisation needs onnxruntime: pip install 'kontrast[fast]'") from exc
    dst = Path(dst)
    tmp = dst.with_name(dst.name + f".partial-{os.getpid()}")
    root = logging.getLogger()
    hush = _DropAdvice()  # the quantiser logs generic advice on the root logger; keep it off the console
    root.addFilter(hush)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel)
    finally:
        root.removeFilter(hush)
    os.replace(tmp, dst)
    log.info("quantised %s -> %s", src, dst)
    return dst
