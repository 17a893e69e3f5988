"""``precision="auto"``: the fastest inference path on this machine whose features stay close to fp32.

The candidates are fp32 (PyTorch, the exact path), bf16 (PyTorch; only where the CPU has native bf16, since
elsewhere it computes in float32 and cannot be faster), onnx fp32 and onnx int8 (onnxruntime, CPU only).
Each runs a fixed calibration batch: the first 16 images of the bundled demo sample and 32 captions, half of
them short and half filling all 77 tokens (long texts are where quantised text towers drift most). A
candidate is eligible when the smallest cosine similarity of its features to fp32's, over every image and
every caption, is at least ``MIN_COSINE``; the eligible one with the smallest time per image plus time per
text wins (fp32 is always eligible). Candidates are timed in interleaved rounds, so a busy machine slows
all of them alike.

The choice is measured once per machine and model and cached as JSON under
``<cache root>/auto/<fingerprint>-<cpu signature>.json`` (the cache root is ``$KONTRAST_CACHE`` or
``~/.cache/kontrast``; the CPU signature covers the CPU model, its relevant flags, ISA switches such as
``ONEDNN_MAX_CPU_ISA``, the thread count and the torch/onnxruntime versions, see ``kontrast.cpu.signature``).
``kontrast info MODEL`` shows it.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu
from .errors import KontrastError

log = logging.getLogger(__name__)

CANDIDATES = ("fp32", "bf16", "onnx-fp32", "onnx-int8")
MIN_COSINE = 0.999
MIN_SECONDS = 0.2  # each candidate's tower is timed for at least this long per round
CACHE_FORMAT = 1
CAPTIONS = (
    "a photo of a cat", "an emoji of a red apple", "clip art of a tiger", "a bicycle leaning on a wall",
    "the flag of Japan", "a bowl of ramen", "an old piano in a church", "a rocket taking off at night",
    "a blue heart", "two dogs playing in the snow", "a slice of pizza", "a lighthouse on a rocky coast",
    "a smiling face with sunglasses", "a watercolor painting of a fox", "a clock showing ten past two", "a cake",
)


@dataclass
class Measurement:
    """One candidate on the calibration batch."""

    name: str
    images_per_s: float = 0.0
    texts_per_s: float = 0.0
    min_cos_image: float = 0.0
    min_cos_text: float = 0.0
    note: str = ""

    @property
    def eligible(self) -> bool:
        return not self.note and min(self.min_cos_image, self.min_cos_text) >= MIN_COSINE

    @property
    def seconds_per_item(self) -> float:
        """Time per image plus time per text (what a choice minimises)."""
        return 1 / self.images_per_s + 1 / self.texts_per_s if self.images_per_s and self.texts_per_s else float("inf")


def cache_file(fingerprint: str, signature: str | None = None) -> Path:
    """Where the choice for a model (by fingerprint) on this machine (by CPU signature) is kept."""
    from .export.runtime import cache_root

    return cache_root().parent / "auto" / f"{fingerprint}-{signature or cpu.signature()}.json"


def read_choice(fingerprint: str) -> dict[str, Any] | None:
    """The cached choice for this model on this machine, or None if it was never measured here."""
    path = cache_file(fingerprint)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("format") != CACHE_FORMAT or data.get("choice") not in CANDIDATES:
        return None
    return data


def calibration_batch(preprocess: Callable, tokenizer: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels ``[16, 3, S, S]`` of the bundled demo images and ids ``[32, context]`` of fixed captions
    (16 short ones, 16 that fill the whole context)."""
    from .demo import load_sample

    pixels = torch.stack([preprocess(sample.data) for sample in load_sample()[:16]])
    long = [", ".join(CAPTIONS[i:] + CAPTIONS[:i]) for i in range(len(CAPTIONS))]  # > 77 tokens each: truncated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the truncation warning for the long captions
        ids = tokenizer(list(CAPTIONS) + long)
    return pixels, ids


def build_candidate(model: nn.Module, preprocess: Any, name: str) -> nn.Module:
    """The fp32 PyTorch ``model`` turned into candidate ``name`` (a copy, except for ``"fp32"``)."""
    from .api import cast_model

    if name == "fp32":
        return model
    if name == "bf16":
        return cast_model(copy.deepcopy(model), "bf16", "cpu")
    if name in ("onnx-fp32", "onnx-int8"):
        import shutil

        from .export.runtime import TEMP_PREFIX, OnnxCLIP, export_model_cached

        folder = export_model_cached(model, preprocess)
        try:
            return OnnxCLIP(folder, precision=name.split("-")[1])
        finally:
            if folder.name.startswith(TEMP_PREFIX):  # random weights: the sessions hold the graphs
                shutil.rmtree(folder, ignore_errors=True)
    raise KontrastError(f"unknown inference path {name!r}; one of {', '.join(CANDIDATES)}")


def _skip_reason(name: str, backends: tuple[str, ...], device: torch.device) -> str:
    if name.startswith("onnx"):
        if "onnx" not in backends:
            return "onnx back end not allowed here"
        if device.type != "cpu":
            return "onnxruntime runs on the CPU"
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime not installed (pip install 'kontrast[fast]')"
    elif "torch" not in backends:
        return "PyTorch back end not allowed here"
    if name == "bf16" and device.type == "cpu" and not cpu.native_bf16():
        return f"no native bf16 on this CPU ({cpu.isa_label()}): bf16 computes in float32, no faster than fp32"
    return ""


def _min_cos(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(F.cosine_similarity(out.float(), ref.float(), dim=-1).min())


def _seconds_per_call(fn: Callable[[], Any], min_seconds: float) -> float:
    """Mean seconds of ``fn()`` over as many calls as fill ``min_seconds`` (at least one)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def measure(models: dict[str, nn.Module], pixels: torch.Tensor, ids: torch.Tensor, rounds: int = 3,
            min_seconds: float | None = None) -> list[Measurement]:
    """Accuracy (vs ``models["fp32"]``) and speed of every model on the calibration batch: the median over
    ``rounds`` interleaved rounds, each timing every model for at least ``min_seconds`` per tower."""
    min_seconds = MIN_SECONDS if min_seconds is None else min_seconds
    with torch.inference_mode():
        ref_image, ref_text = models["fp32"].encode_image(pixels), models["fp32"].encode_text(ids)
        results = {}
        for name, model in models.items():  # the first call also warms the model up
            results[name] = Measurement(name, min_cos_image=_min_cos(model.encode_image(pixels), ref_image),
                                        min_cos_text=_min_cos(model.encode_text(ids), ref_text))
        times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in models}
        for _ in range(rounds):
            for name, model in models.items():
                times[name][0].append(_seconds_per_call(lambda m=model: m.encode_image(pixels), min_seconds))
                times[name][1].append(_seconds_per_call(lambda m=model: m.encode_text(ids), min_seconds))
    for name, (image_s, text_s) in times.items():
        results[name].images_per_s = len(pixels) / statistics.median(image_s)
        results[name].texts_per_s = len(ids) / statistics.median(text_s)
    return list(results.values())


def choose(measurements: list[Measurement]) -> Measurement:
    """The eligible measurement with the least time per image plus per text (fp32 when nothing else is)."""
    eligible = [m for m in measurements if m.eligible or m.name == "fp32"]
    return min(eligible, key=lambda m: m.seconds_per_item)


def select(model: nn.Module, preprocess: Any, tokenizer: Callable, backends: tuple[str, ...] = ("torch", "onnx"),
           refresh: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """``(model on the chosen path, the choice record)`` for an fp32 PyTorch ``model`` (see the module docstring).

    Reads the cached choice when this machine measured this model before (and the choice is allowed by
    ``backends``); otherwise measures every candidate and caches the result.
    """
    from .api import fingerprint
    from .checkpoints.formats import _atomic

    device = next(model.parameters()).device
    key = fingerprint(model)
    record = None if refresh else read_choice(key)
    if record is not None and not _skip_reason(record["choice"], backends, device):
        log.info("precision auto -> %s (cached for this CPU: %s)", record["choice"], cache_file(key))
        return build_candidate(model, preprocess, record["choice"]), record
    skipped = {name: _skip_reason(name, backends, device) for name in CANDIDATES}
    models = {name: build_candidate(model, preprocess, name) for name in CANDIDATES if not skipped[name]}
    pixels, ids = calibration_batch(preprocess, tokenizer)
    measurements = measure(models, pixels.to(device), ids.to(device))
    measurements += [Measurement(name, note=reason) for name, reason in skipped.items() if reason]
    best = choose(measurements)
    record = {"format": CACHE_FORMAT, "choice": best.name, "fingerprint": key, "cpu": cpu.cpu_model(),
              "isa": cpu.isa_label(), "signature": cpu.signature(), "threads": torch.get_num_threads(),
              "min_cosine": MIN_COSINE, "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
              "candidates": [asdict(m) for m in measurements]}
    path = cache_file(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    fp32 = next(m for m in measurements if m.name == "fp32")
    log.info("precision auto -> %s (%.2fx fp32's speed, min cosine %.5f; measured now, cached in %s)", best.name,
             fp32.seconds_per_item / best.seconds_per_item, min(best.min_cos_image, best.min_cos_text), path)
    return models[best.name], record


def describe(record: dict[str, Any]) -> str:
    """One line per candidate of a choice record, for ``kontrast info``."""
    head = (f"precision auto on this machine ({record['cpu']}, {record['isa']}, {record['threads']} threads): "
            f"{record['choice']} (measured {record['measured']})")
    lines = [head]
    for m in record["candidates"]:
        if m["note"]:
            lines.append(f"  {m['name']:10s} skipped: {m['note']}")
        else:
            lines.append(f"  {m['name']:10s} {m['images_per_s']:8.1f} images/s {m['texts_per_s']:8.1f} texts/s  "
                         f"min cosine image {m['min_cos_image']:.5f} text {m['min_cos_text']:.5f}")
    return "\n".join(lines)
