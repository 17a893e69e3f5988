"""Helpers shared by CLI commands: loading the model from ``--model``, progress bars."""

from __future__ import annotations

import argparse
import warnings


def add_model_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--model", default=None if required else "default", required=required,
                        help="checkpoint path, 'default', 'hf-hub:owner/repo', or an architecture name (with --pretrained)")
    parser.add_argument("--pretrained", default=None, help="pretrained tag for an architecture name, e.g. openai")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8", "auto"],
                        help="int8 needs --backend onnx; auto: the fastest path within 0.999 cosine of fp32 on this "
                             "machine (measured once per model, see 'kontrast info MODEL')")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx"], help="onnx: onnxruntime towers")
    parser.add_argument("--device", default="cpu")


def load_model(args: argparse.Namespace, torch_only: bool = False):
    """``(model, preprocess, tokenizer)`` from the standard model flags; ``torch_only`` keeps
    ``--precision auto`` on PyTorch paths (for commands that need gradients or token features)."""
    from ..api import load

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        if args.precision == "auto" and torch_only:
            from ..auto import select

            model, preprocess, tokenizer = load(args.model, pretrained=args.pretrained, device=args.device)
            return select(model, preprocess, tokenizer, backends=("torch",))[0], preprocess, tokenizer
        return load(args.model, pretrained=args.pretrained, device=args.device, precision=args.precision,
                    backend=getattr(args, "backend", "torch"))
