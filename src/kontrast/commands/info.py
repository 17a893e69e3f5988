"""``kontrast info [MODEL]``: list architectures, or describe a checkpoint (format, config, fingerprint)."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="list architectures, or describe a model/checkpoint")
    p.add_argument("model", nargs="?", help="checkpoint path or name; omit to list architectures")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--precision", default=None, choices=["auto"],
                   help="auto: measure (once per machine) which inference path precision='auto' picks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api import fingerprint, list_models, load

    if not args.model:
        for name in list_models():
            print(name)
        return 0
    from ..auto import describe, read_choice, select

    model, preprocess, tokenizer = load(args.model, pretrained=args.pretrained)
    n_params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"config": model.config.to_dict(), "parameters": n_params, "fingerprint": fingerprint(model),
                      "checkpoint": getattr(model, "checkpoint_path", None)}, indent=2))
    record = select(model, preprocess, tokenizer)[1] if args.precision == "auto" else read_choice(fingerprint(model))
    if record is None:
        print(f"precision auto: not measured on this machine yet ('kontrast info {args.model} --precision auto' "
              "measures it, or any command with --precision auto)")
    else:
        print(describe(record))
    return 0
