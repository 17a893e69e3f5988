"""``kontrast info [MODEL]``: list architectures with their family and pretrained tags, or describe a checkpoint."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="list architectures (family, pretrained tags), or describe a model/checkpoint"
    )
    p.add_argument("model", nargs="?", help="checkpoint path or name; omit to list architectures")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--precision", default=None, choices=["auto"],
                   help="auto: measure (once per machine) which inference path precision='auto' picks")
    p.add_argument("--family", default=None, help="list only this family (ViT, ResNet, ConvNeXt, EVA, ...)")
    p.set_defaults(func=run)


def architecture_rows(family: str | None = None) -> list[tuple[str, str, bool, list[str]]]:
    """``(architecture, family, supported, tags)``: every config kontrast ships and every pretrained architecture
    open_clip lists (unsupported families included, so that a user sees what is refused and why)."""
    from .. import families
    from ..api import get_model_config, list_models, list_pretrained

    rows: dict[str, tuple[str, bool, list[str]]] = {}
    for t in list_pretrained():
        fam, supported, tags = rows.get(t.architecture, (t.family, t.supported, []))
        rows[t.architecture] = (fam, supported, [*tags, t.tag])
    for name in list_models():
        if name not in rows:
            fam = families.family_of_config(get_model_config(name).to_dict())
            rows[name] = (fam, families.is_supported(fam), [])
    wanted = None if family is None else family.strip().lower()
    return [(a, f, s, tags) for a, (f, s, tags) in rows.items() if wanted is None or f.lower() == wanted]


def run(args: argparse.Namespace) -> int:
    from ..api import fingerprint, load
    from ..errors import KontrastError
    from ..families import FAMILIES

    if not args.model:
        if args.family and args.family.strip().lower() not in {f.lower() for f in FAMILIES}:
            raise KontrastError(f"--family {args.family!r} is not one of: {', '.join(FAMILIES)}")
        rows = architecture_rows(args.family)
        width = max(len(a) for a, *_ in rows)
        fam_width = max(len(f) for _, f, *_ in rows)
        print(f"{'architecture':<{width}}  {'family':<{fam_width}}  loads  pretrained tags")
        for arch, fam, supported, tags in rows:
            print(f"{arch:<{width}}  {fam:<{fam_width}}  {'yes' if supported else 'no ':<5}  {', '.join(tags) or '-'}")
        return 0
    from ..auto import describe, read_choice, select

    model, preprocess, tokenizer = load(args.model, pretrained=args.pretrained)
    n_params = sum(p.numel() for p in model.parameters())
    from ..record import record_of

    record_dict = record_of(model).to_dict()  # architecture, preprocessing, tokenizer, provenance
    print(json.dumps({"config": record_dict["model_cfg"], "preprocess": record_dict["preprocess_cfg"],
                      "tokenizer": record_dict["tokenizer_cfg"], "provenance": record_dict["provenance"],
                      "parameters": n_params, "fingerprint": fingerprint(model),
                      "checkpoint": getattr(model, "checkpoint_path", None)}, indent=2))
    record = select(model, preprocess, tokenizer)[1] if args.precision == "auto" else read_choice(fingerprint(model))
    if record is None:
        print(f"precision auto: not measured on this machine yet ('kontrast info {args.model} --precision auto' "
              "measures it, or any command with --precision auto)")
    else:
        print(describe(record))
    return 0
