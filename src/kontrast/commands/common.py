"""Helpers shared by CLI commands: loading the model from ``--model``, progress bars."""

from __future__ import annotations

import argparse
import warnings


def add_model_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--model", default=None if required else "default", required=required,
                        help="checkpoint path, 'default', 'hf-hub:owner/repo', or an architecture name (with --pretrained)")
    parser.add_argument("--pretrained", default=None, help="pretrained tag for an architecture name, e.g. openai")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8"],
                        help="int8 needs --backend onnx")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx"], help="onnx: onnxruntime towers")
    parser.add_argument("--device", default="cpu")


def load_model(args: argparse.Namespace):
    """``(model, preprocess, tokenizer)`` from the standard model flags."""
    from ..api import load

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        return load(args.model, pretrained=args.pretrained, device=args.device, precision=args.precision,
                    backend=getattr(args, "backend", "torch"))
