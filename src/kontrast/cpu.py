"""What this CPU, and the kernel libraries installed for it, can do; which fast path kontrast takes.

Three libraries inside PyTorch pick their instruction set at run time, each with its own switch to lower it:
ATen's vectorised kernels (``ATEN_CPU_CAPABILITY=avx2``), oneDNN (``ONEDNN_MAX_CPU_ISA=AVX2``) and MKL
(``MKL_ENABLE_INSTRUCTIONS=AVX2``). onnxruntime's MLAS reads cpuid and has no run-time switch. The CPU's own
flags (``/proc/cpuinfo``) say what the silicon has; what a library will actually run is found by asking it:
``onednn_runs`` builds one tiny oneDNN inner product per dtype (once per process) instead of trusting flags,
because a oneDNN limited to AVX2, or built without bf16 kernels, refuses bf16 primitives at run time.

Everything here is computed on first use and cached for the process (the switches are read by the
libraries once, at their first call), never at import.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
from importlib import metadata
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Environment switches that lower what a kernel library may use (name -> library).
ISA_SWITCHES = {
    "ONEDNN_MAX_CPU_ISA": "oneDNN",
    "DNNL_MAX_CPU_ISA": "oneDNN",
    "ATEN_CPU_CAPABILITY": "ATen",
    "MKL_ENABLE_INSTRUCTIONS": "MKL",
}
# oneDNN ISA limits below which bf16 has no native instructions (oneDNN emulates or refuses it).
_ONEDNN_NO_NATIVE_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"}
_ONEDNN_NO_AVX512 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"}
# The /proc/cpuinfo flags that matter for the paths kontrast chooses between.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                  "amx_int8", "avx512_fp16")


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """``(model name, flags)`` of the first CPU in ``/proc/cpuinfo``; ``(platform.processor(), {})`` elsewhere."""
    path = Path("/proc/cpuinfo")
    name, flags = platform.processor() or platform.machine(), frozenset()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return name, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name in ("", platform.processor(), platform.machine()):
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
        if flags and key == "":  # the end of the first processor's block
            break
    return name, flags


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` does not exist)."""
    return _cpuinfo()[1]


def isa_limits() -> dict[str, str]:
    """The ISA-lowering environment switches that are set (see ``ISA_SWITCHES``)."""
    return {name: os.environ[name] for name in ISA_SWITCHES if os.environ.get(name)}


def _onednn_limit() -> str | None:
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.upper() if value else None


@functools.cache
def onednn_runs(dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``) runs in ``dtype`` here.

    Asked once per process with a 2 x 8 product: a oneDNN limited to AVX2 (or a CPU it has no kernel for)
    raises ``could not create a primitive descriptor`` instead of falling back by itself.
    """
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    x, w = torch.ones(2, 8, dtype=dtype), torch.ones(4, 8, dtype=dtype)
    try:
        with torch.no_grad():
            out = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    except RuntimeError as exc:  # oneDNN has no primitive for this dtype on this CPU
        log.info("oneDNN cannot run %s linears here (%s); using PyTorch's", dtype, str(exc).splitlines()[0][:80])
        return False
    return bool((out == 8).all())


def native_bf16() -> bool:
    """Whether bf16 matrix products run on native instructions (AVX512_BF16 or AMX) through oneDNN.

    On other CPUs bf16 is emulated (ATen) or refused (oneDNN), typically several times slower than fp32.
    """
    flags = cpu_flags()
    if flags and not flags & {"avx512_bf16", "amx_bf16"}:
        return False
    limit = _onednn_limit()
    if limit in _ONEDNN_NO_NATIVE_BF16:
        return False
    return onednn_runs(torch.bfloat16)


def has_vnni() -> bool:
    """Whether the CPU has int8 dot-product instructions (AVX512_VNNI or AVX_VNNI), which int8 GEMMs use."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def isa_label() -> str:
    """Short description of the instruction sets the kernels may use, e.g. ``AVX-512 (bf16, VNNI)`` or
    ``AVX2 (FMA; AVX-512 CPU limited by ONEDNN_MAX_CPU_ISA=AVX2)``."""
    flags = cpu_flags()
    if not flags:
        return f"{platform.machine()} (CPU flags unknown)"
    limits = isa_limits()
    limited = bool(flags & {"avx512f"}) and (_onednn_limit() in _ONEDNN_NO_AVX512
                                              or limits.get("ATEN_CPU_CAPABILITY", "").lower() in ("avx2", "default"))
    if "avx512f" in flags and not limited:
        extras = [name for name, flag in (("bf16", "avx512_bf16"), ("VNNI", "avx512_vnni"), ("AMX", "amx_bf16"))
                  if flag in flags]
        label = "AVX-512" + (f" ({', '.join(extras)})" if extras else "")
    elif "avx2" in flags:
        label = "AVX2 (FMA)" if "fma" in flags else "AVX2"
    else:
        label = "no AVX2"
    if limits:
        label += " [" + ", ".join(f"{k}={v}" for k, v in limits.items()) + "]"
    return label


def signature() -> str:
    """A short id of this machine's CPU and kernel libraries, for caches of per-machine choices
    (``precision="auto"``): model name, relevant flags, ISA switches, thread count, torch/onnxruntime versions."""
    try:
        ort = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        ort = None
    facts = {
        "cpu": cpu_model(),
        "flags": sorted(cpu_flags() & set(RELEVANT_FLAGS)),
        "limits": isa_limits(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": ort,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]


def inference_path(dtype: torch.dtype) -> str:
    """One line saying which kernels a CPU model stored in ``dtype`` runs on (logged by ``kontrast.load``)."""
    isa = isa_label()
    if dtype == torch.float32:
        if onednn_runs(torch.float32):
            return f"float32 through oneDNN fused linears ({isa})"
        return f"float32 through PyTorch's linears (oneDNN unavailable; {isa})"
    if dtype == torch.bfloat16:
        if native_bf16():
            return f"bf16 through oneDNN's native bf16 kernels ({isa})"
        if onednn_runs(torch.float32):
            return (f"bf16 weights, products computed in float32: this CPU has no native bf16 ({isa}), so bf16 is "
                    "no faster than fp32 here; precision='auto' picks the fastest accurate path")
        return (f"bf16 through PyTorch's emulated bf16 kernels, several times slower than fp32 ({isa}); "
                "precision='auto' picks the fastest accurate path")
    return f"{dtype} through PyTorch's CPU kernels ({isa})"


def train_precision(requested: str, device: torch.device) -> str:
    """The autocast precision a training run uses: ``"auto"`` is bf16 where bf16 is native (a CUDA GPU that
    supports it, a CPU with AVX512_BF16/AMX) and fp32 elsewhere. bf16 autocast on a CPU without native bf16 runs
    through emulated kernels, an order of magnitude slower than fp32 (measured 3.4 vs 50 samples/s on an
    AVX2 CPU by ``benchmarks/train.py``): an explicit ``"bf16"`` there is kept but warned about once."""
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        bf16 = native_bf16()
    else:
        bf16 = False
    if requested == "auto":
        chosen = "bf16" if bf16 else "fp32"
        log.info("training precision auto -> %s (%s)", chosen, isa_label() if device.type == "cpu" else device.type)
        return chosen
    if requested == "bf16" and device.type == "cpu" and not bf16:
        log.warning("precision bf16 on a CPU without native bf16 (%s) trains many times slower than fp32; "
                    "use precision: auto (or fp32)", isa_label())
    return requested
