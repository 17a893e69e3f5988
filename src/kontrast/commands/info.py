"""``kontrast info [MODEL]``: list architectures, or describe a checkpoint (format, config, fingerprint)."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="list architectures, or describe a model/checkpoint")
    p.add_argument("model", nargs="?", help="checkpoint path or name; omit to list architectures")
    p.add_argument("--pretrained", default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api import fingerprint, list_models, load

    if not args.model:
        for name in list_models():
            print(name)
        return 0
    model, _, _ = load(args.model, pretrained=args.pretrained)
    n_params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"config": model.config.to_dict(), "parameters": n_params, "fingerprint": fingerprint(model),
                      "checkpoint": getattr(model, "checkpoint_path", None)}, indent=2))
    return 0
