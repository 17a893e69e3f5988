"""ONNX export of a CLIP model's two towers, for onnxruntime and other ONNX back ends.

``export_onnx(model, folder)`` writes

* ``image_encoder.onnx``: ``pixel_values [batch, 3, H, W] float32 -> image_embeds [batch, E]``
* ``text_encoder.onnx``: ``input_ids [batch, sequence] int64 -> text_embeds [batch, E]`` (unnormalised;
  a CLIP text tower is read at the end-of-text token, a Hugging Face text tower (``hf_model``) computes
  its padding mask from the ids and mean-pools; ``sequence`` may be shorter than the context, see below)
* ``kontrast_onnx.json``: the manifest (model config, fingerprint, temperature, preprocessing, file names),
  written last, so a folder with a manifest is a complete export.

Both graphs have a dynamic batch axis. The text graph's sequence axis is dynamic too: with causal attention
the tokens after the last end-of-text token of a batch never reach a pooled row (with a padding mask, the
padding columns never do), so the runtime (``kontrast.export.runtime``) cuts them off before calling the
graph, as the PyTorch model does.

The graphs come from the TorchScript-based exporter (``dynamo=False``), which needs no extra packages and
traces the towers' plain PyTorch path (the oneDNN fast path switches itself off while tracing).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import KontrastError

log = logging.getLogger(__name__)

MANIFEST = "kontrast_onnx.json"
IMAGE_FILE = "image_encoder.onnx"
TEXT_FILE = "text_encoder.onnx"
FORMAT_VERSION = 1
DEFAULT_OPSET = 17


class ImageTower(nn.Module):
    """``encode_image`` as a module with one input (what the exporter traces)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)


class TextTower(nn.Module):
    """``encode_text`` as a module with one input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids)


def example_inputs(model: nn.Module, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels ``[batch, 3, S, S]`` and token ids ``[batch, context]`` with end-of-text tokens at different places."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, model.image_size, model.image_size, generator=generator)
    context = model.context_length
    hf = getattr(model.config.text, "hf_model", None)
    # SigLIP configs keep the vocabulary at the top (``SigLIPConfig.vocab_size``)
    vocab = model.text.transformer.config.vocab_size if hf else getattr(model.config.text, "vocab_size", None) \
        or model.config.vocab_size
    start, end_id = (101, 102) if hf else (vocab - 2, vocab - 1)  # [CLS]/[SEP], <start_of_text>/<end_of_text>
    pad = int(getattr(getattr(model, "text", None), "pad_token_id", 0)) if hf else 0
    ids = torch.full((batch, context), pad, dtype=torch.long)
    for row in range(batch):
        end = min(context - 1, 3 + 5 * row)
        ids[row, 0] = start
        low = min(1000, (vocab - 3) // 2)  # ordinary ids (1000 for CLIP; tiny test vocabularies have fewer)
        ids[row, 1:end] = torch.randint(low, min(vocab - 3, 49000), (end - 1,), generator=generator)
        ids[row, end] = end_id
    return pixels, ids


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_name: str, output_name: str,
            dynamic: dict[int, str], opset: int) -> None:
    """One ``torch.onnx.export`` call with the legacy (TorchScript) exporter and a dynamic batch axis."""
    kwargs: dict[str, Any] = {
        "input_names": [input_name],
        "output_names": [output_name],
        "dynamic_axes": {input_name: dynamic, output_name: {0: "batch"}},
        "opset_version": opset,
        "do_constant_folding": True,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings about the legacy exporter
        try:
            torch.onnx.export(module, args, str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch without the ``dynamo`` switch: its only exporter is the legacy one
            torch.onnx.export(module, args, str(path), **kwargs)


def text_truncation(model: nn.Module) -> str:
    """``"eot"``: a causal CLIP text tower read at the end-of-text token (argmax id), so ids after the batch's
    last end-of-text token never matter; ``"padding"``: a Hugging Face encoder with a padding mask and
    masked pooling, so columns after the batch's last non-padding id never matter; ``"none"``: every id may
    matter (bidirectional attention, or pooling at another position)."""
    t = model.config.text
    if getattr(t, "kind", None) == "hf":
        return "padding"
    if getattr(t, "pool_type", None) == "argmax" and not getattr(t, "no_causal_mask", True):
        return "eot"
    return "none"  # e.g. SigLIP: bidirectional attention, read at the last position


BUNDLED_TOKENIZER = "."  # the manifest's tokenizer path when the files lie next to the graphs


def bundle_tokenizer(record: Any, folder: Path) -> Any:
    """The record to write into the manifest: a tokenizer read from a checkpoint's own files (SigLIP's
    ``tokenizer.json`` / ``spiece.model``) is copied next to the graphs and named ``"."``, so the export folder works
    without the checkpoint folder; other tokenizers (CLIP BPE, a packaged text encoder's) are left as they are."""
    import dataclasses
    import shutil

    from ..checkpoint_tokenizers import TOKENIZER_FILES
    from ..config import ModelConfig

    tok = record.tokenizer
    source = Path(tok.path) if tok.path else None
    if isinstance(record.arch, ModelConfig) or source is None or not source.is_dir():
        return record
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    return dataclasses.replace(record, tokenizer=dataclasses.replace(tok, path=BUNDLED_TOKENIZER))


def _manifest(model: nn.Module, opset: int, folder: Path) -> dict[str, Any]:
    from ..record import fingerprint, record_of

    record = bundle_tokenizer(record_of(model), folder)
    bias = getattr(model, "logit_bias", None)
    return {
        "format": "kontrast-onnx",
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint(model),
        "source": getattr(model, "checkpoint_path", None),
        "record": record.to_dict(),
        "config": record.arch.to_dict(),
        "logit_scale": float(model.logit_scale.detach().float()),
        "logit_bias": None if bias is None else float(bias.detach().float()),
        "preprocess": record.preprocess.to_dict(),
        "image_size": int(model.image_size),
        "context_length": int(model.context_length),
        "opset": opset,
        "files": {"fp32": {"image": IMAGE_FILE, "text": TEXT_FILE}},
        # which ids the runtime may cut off before calling the text graph (see ``text_truncation``)
        "text_truncation": text_truncation(model),
        "pad_token_id": int(getattr(getattr(model, "text", None), "pad_token_id", 0)),
        "inputs": {"image": "pixel_values", "text": "input_ids"},
        "outputs": {"image": "image_embeds", "text": "text_embeds"},
        "torch_version": torch.__version__,
    }


def export_onnx(
    model: nn.Module,
    folder: str | os.PathLike,
    preprocess: Any = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export both towers of a kontrast ``CLIP`` to ``folder`` (see the module docstring); returns the folder.

    The model is exported in float32 on the CPU (a copy is made if it is stored otherwise). The manifest
    records the model's record (``model.record``); ``preprocess`` (a ``Preprocess``, ``PreprocessConfig`` or
    open_clip-style dict) replaces its preprocessing.
    """
    from ..record import fingerprint, keep_fingerprint, record_for_writing

    if preprocess is not None:
        record = record_for_writing(model, preprocess)
        model = copy.copy(model)  # a shallow copy: same weights, its own record
        model.record = record
    param = next(model.parameters())
    if param.dtype != torch.float32 or param.device.type != "cpu":
        fp = fingerprint(model)  # the fingerprint of the weights as loaded
        model = copy.deepcopy(model).float().cpu()
        keep_fingerprint(model, fp)
    was_training = model.training
    model.eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # an export in progress is not a complete export
    pixels, ids = example_inputs(model)
    # The wrappers must be in eval mode: the exporter puts a module back in its own mode afterwards, and a
    # fresh wrapper's mode is "training", which would switch the whole model (BatchNorm!) to training.
    try:
        with torch.no_grad():
            _export(ImageTower(model).eval(), (pixels,), folder / IMAGE_FILE, "pixel_values", "image_embeds",
                    {0: "batch"}, opset)
            _export(TextTower(model).eval(), (ids,), folder / TEXT_FILE, "input_ids", "text_embeds",
                    {0: "batch", 1: "sequence"}, opset)
    finally:
        model.train(was_training)
    manifest = _manifest(model, opset, folder)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    log.info("exported %s to %s", manifest["fingerprint"], folder)
    return folder


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an export folder; a one-line error if the folder is not a complete export."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise KontrastError(f"{folder}: not a kontrast ONNX export (no {MANIFEST}); create one with "
                            "'kontrast export MODEL --onnx DIR'")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != "kontrast-onnx" or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise KontrastError(f"{path}: unsupported ONNX manifest (format {manifest.get('format')!r}, "
                            f"version {manifest.get('format_version')}); re-export with this kontrast")
    return manifest


def verify_onnx(model: nn.Module, folder: str | os.PathLike, batches: tuple[int, ...] = (1, 3),
                precision: str = "fp32") -> dict[str, float]:
    """Largest absolute difference between onnxruntime and PyTorch, per tower, over the given batch sizes."""
    from .runtime import OnnxCLIP

    runtime = OnnxCLIP(folder, precision=precision)
    diffs = {"image": 0.0, "text": 0.0}
    if next(model.parameters()).dtype != torch.float32:
        model = copy.deepcopy(model).float()
    for batch in batches:
        pixels, ids = example_inputs(model, batch)
        with torch.no_grad():
            diffs["image"] = max(diffs["image"], float((runtime.encode_image(pixels) - model.encode_image(pixels)).abs().max()))
            diffs["text"] = max(diffs["text"], float((runtime.encode_text(ids) - model.encode_text(ids)).abs().max()))
    return diffs
