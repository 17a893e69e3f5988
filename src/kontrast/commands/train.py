"""``kontrast train RECIPE [--field value ...] [--resume latest]``: contrastive training from a recipe.

Every recipe field (see ``kontrast.train.config.TrainConfig``) can be overridden with ``--field value``
(``--lock-text true``, ``--aug-scale "[0.6, 1.0]"``, ``--train-data a.tar b.tar``); values are read as
YAML scalars. The run directory (``output``) keeps the resolved ``config.json``, ``metrics.jsonl`` and
``checkpoints/``. Under ``torchrun --nproc-per-node N -m kontrast.train ...`` only rank 0 prints.
"""

from __future__ import annotations

import argparse
import os
import time


def register(subparsers) -> None:
    from ..train.config import FIELDS

    p = subparsers.add_parser("train", help="train or fine-tune a CLIP model from a recipe (YAML/JSON)",
                              description=__doc__.splitlines()[0])
    p.add_argument("recipe", nargs="?", help="recipe file (.yaml/.yml/.json); flags override its fields")
    p.add_argument("--resume", metavar="CKPT", help="'latest' (newest checkpoint of the run directory) or a checkpoint file")
    p.add_argument("--quiet", action="store_true", help="no per-step lines")
    group = p.add_argument_group("recipe fields")
    for name in FIELDS:
        if name == "extra":
            continue
        nargs = "+" if name in ("train_data", "val_data") else None
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"field_{name}", nargs=nargs, metavar="V", default=None)
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    """Recipe + flag overrides (or, with ``--resume`` and no recipe, the run's saved config)."""
    import json
    from pathlib import Path

    from ..errors import KontrastError
    from ..train.config import TrainConfig, apply_overrides, load_recipe

    values = load_recipe(args.recipe) if args.recipe else {}
    flags = {k[len("field_"):]: v for k, v in vars(args).items() if k.startswith("field_") and v is not None}
    for key in ("train_data", "val_data"):
        if key in flags and len(flags[key]) == 1:
            flags[key] = flags[key][0]
    if not args.recipe and args.resume:
        out = flags.get("output")
        if not out:
            raise KontrastError("--resume without a recipe needs --output RUN_DIR")
        saved = Path(out) / "config.json"
        if not saved.is_file():
            raise KontrastError(f"{saved} not found; pass the recipe again")
        values = json.loads(saved.read_text())
        for key in ("model_config_resolved", "model_record", "precision_resolved", "total_steps", "world_size"):  # run facts
            values.pop(key, None)
    cfg = apply_overrides(TrainConfig(), values)
    apply_overrides(cfg, flags)
    return cfg


def run(args: argparse.Namespace) -> int:
    from ..train.loop import train

    cfg = resolve_config(args)
    is_main = int(os.environ.get("RANK", "0")) == 0
    start = time.time()

    def progress(record: dict) -> None:
        if args.quiet or not is_main:
            return
        extra = "  ".join(f"{k}={v:.4f}" for k, v in record.items() if k.startswith("val_"))
        print(f"step {record['step']}/{record['total_steps']}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
              f"scale {record['logit_scale']:.2f}  {record['samples_per_s']:.1f} samples/s  "
              f"{time.time() - start:.0f}s  {extra}".rstrip(), flush=True) if "loss" in record else None

    last = train(cfg, resume=args.resume, progress=progress)
    if is_main:
        print(f"done: {cfg.output} (metrics.jsonl, checkpoints/)" + (f"; model saved to {cfg.save_model}" if cfg.save_model else ""))
        if last:
            print("last: " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(last.items())))
    return 0
