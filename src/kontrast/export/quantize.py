"""int8 quantisation of exported ONNX towers (onnxruntime dynamic quantisation).

Weights of the matrix multiplies (and convolutions) are stored as int8 with one scale per output channel; activations are
quantised on the fly per batch; onnxruntime then runs the products as integer dot products. What stays
float32, because int8 there costs more accuracy than it saves time:

* the token-embedding table (a lookup, not a product: int8 saves memory only, and adds its rounding to
  every token);
* the first transformer block of a text tower (``float_blocks``): its input is the raw token + position
  embedding, whose few large coordinates a per-tensor activation scale represents worst; keeping it
  float32 lifted the smallest cosine to fp32 on 77-token captions from 0.9992 to 0.9995 (random ViT-B-32).

The weight type follows the CPU (``int8_scheme``): with VNNI (or AMX) the products are u8 x s8 on
``vpdpbusd``; without it (plain AVX2) onnxruntime's u8 x s8 kernel sums pairs of products into 16 bits with
``vpmaddubsw``, which saturates, so weights are stored as u8 instead (u8 x u8 is widened to 16 bits first
and never saturates). Features stay close to float32: cosine >= 0.999 on images and texts
(``tests/test_onnx.py``, ``benchmarks/encode.py``); the files shrink about 4x.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

from ..errors import KontrastError

log = logging.getLogger(__name__)


class _DropAdvice(logging.Filter):
    """Drops what the quantiser logs on the root logger below WARNING (per-tensor notes, generic advice)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "root" or (record.levelno >= logging.WARNING
                                         and "pre-processing before quantization" not in record.getMessage())


def int8_scheme() -> str:
    """``"s8"`` (int8 weights) where the CPU has int8 dot-product instructions, else ``"u8"`` (see the module)."""
    from ..cpu import has_vnni

    return "s8" if has_vnni() else "u8"


BLOCK_PATTERN = re.compile(r"/(?:resblocks|blocks|layers?)\.(\d+)/")


def block_nodes(path: str | os.PathLike, blocks: tuple[int, ...]) -> list[str]:
    """Names of the matrix-multiply nodes inside the given transformer blocks of an exported graph (node names
    follow the module path, e.g. ``/resblocks.0/attn/MatMul``)."""
    import onnx

    names = []
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        match = BLOCK_PATTERN.search(node.name)
        if node.op_type in ("MatMul", "Gemm") and match and int(match.group(1)) in blocks:
            names.append(node.name)
    return names


def quantize_onnx_int8(src: str | os.PathLike, dst: str | os.PathLike, per_channel: bool = True,
                       float_blocks: tuple[int, ...] = (), scheme: str | None = None) -> Path:
    """Write a dynamically int8-quantised copy of the ONNX graph ``src`` to ``dst``: the matrix multiplies
    outside ``float_blocks``, weights per channel, of type ``scheme`` (default ``int8_scheme()``)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:  # pragma: no cover - onnxruntime is part of the 'fast' extra
        raise KontrastError("int8 quantisation needs onnxruntime: pip install 'kontrast[fast]'") from exc
    scheme = scheme or int8_scheme()
    if scheme not in ("s8", "u8"):
        raise KontrastError(f"int8 scheme {scheme!r} is not one of: s8, u8")
    dst = Path(dst)
    tmp = dst.with_name(dst.name + f".partial-{os.getpid()}")
    excluded = block_nodes(src, float_blocks) if float_blocks else []
    root = logging.getLogger()
    hush = _DropAdvice()  # the quantiser logs generic advice on the root logger; keep it off the console
    root.addFilter(hush)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8 if scheme == "s8" else QuantType.QUInt8,
                             per_channel=per_channel, op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                             nodes_to_exclude=excluded)
    finally:
        root.removeFilter(hush)
    os.replace(tmp, dst)
    log.info("quantised %s -> %s (%s weights, %d products kept float32)", src, dst, scheme, len(excluded))
    return dst
