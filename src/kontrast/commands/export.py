"""``kontrast export MODEL --onnx DIR [--int8] [--format hf|open_clip|kontrast --out DIR]``.

``--onnx`` writes both towers as ONNX graphs (dynamic batch) plus a manifest, checks them against PyTorch
with onnxruntime at batch sizes 1 and 3 and prints the largest differences; ``--int8`` also writes
dynamically int8-quantised graphs (a Hugging Face text tower stays float32). ``--format/--out`` writes the checkpoint in another library's layout
(``kontrast.export``) or kontrast's own (``kontrast.save``). The resulting ONNX folder loads with
``kontrast.load(DIR, backend="onnx")``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a model to ONNX (onnxruntime back end) or another checkpoint layout")
    p.add_argument("model", help="checkpoint path, 'default', 'hf-hub:owner/repo', or an architecture name")
    p.add_argument("--pretrained", default=None, help="pretrained tag for an architecture name, e.g. openai")
    p.add_argument("--onnx", metavar="DIR", default=None, help="write image_encoder.onnx + text_encoder.onnx here")
    p.add_argument("--int8", action="store_true", help="with --onnx: also write int8-quantised graphs")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-verify", action="store_true", help="with --onnx: skip the onnxruntime vs PyTorch check")
    p.add_argument("--format", choices=["hf", "open_clip", "kontrast"], default=None,
                   help="with --out: checkpoint layout to write")
    p.add_argument("--out", metavar="DIR", default=None, help="with --format: folder for the checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api import export, load, save
    from ..errors import KontrastError

    if not args.onnx and not args.out:
        raise KontrastError("nothing to do: give --onnx DIR and/or --format FORMAT --out DIR")
    if bool(args.format) != bool(args.out):
        raise KontrastError("--format and --out go together, e.g. --format hf --out exported/")
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        model, _, _ = load(args.model, pretrained=args.pretrained)
    if args.onnx:
        from ..export.onnx_export import export_onnx, verify_onnx

        folder = export_onnx(model, args.onnx, opset=args.opset)  # the manifest holds the model's record
        print(f"ONNX: {folder} (image_encoder.onnx, text_encoder.onnx, kontrast_onnx.json)")
        if not args.no_verify:
            diffs = verify_onnx(model, folder)
            print(f"  max |onnxruntime - torch|, batch 1 and 3: image {diffs['image']:.2e}, text {diffs['text']:.2e}")
        if args.int8:
            diffs = verify_onnx(model, folder, precision="int8")  # quantises on first use, next to the fp32 graphs
            files = ", ".join(sorted(p.name for p in Path(folder).glob("*.int8-*.onnx")))
            print(f"  int8: {files}; max |int8 - torch fp32|: image {diffs['image']:.2e}, text {diffs['text']:.2e}")
    if args.out:
        out = save(model, args.out) if args.format == "kontrast" else export(model, args.out, format=args.format)
        print(f"{args.format}: {out}")
    return 0
