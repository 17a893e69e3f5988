"""The training record of a default model (``training_data.json`` beside its weights): what the data build's
manifest says, restricted to the shards its recipe trained on.

The manifest of ``scripts/build_training_data.py`` describes everything built: the training shards and the parts
added beside them (``flags``, ``extras``), its ``styles``, ``licenses``, ``concepts`` and ``names`` the union of
them all. A model trained on some of the parts must not claim the others (the demo marks a picture "seen" from its
record), so this module reads the pictures' metadata from the shards the recipe lists and recomputes those fields.

    python scripts/training_record.py RECIPE [--cache ~/.cache/kontrast-data] [--out training_data.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import training_data_rules as rules
from build_training_data import read_shards

#: Parts of the build that live beside the training shards, each its own manifest entry and shard prefix.
PARTS = ("flags", "extras")


def parts_used(train_data: Sequence[str]) -> list[str]:
    """The manifest parts a recipe's ``train_data`` patterns read (``.../flags-000000.tar`` -> ``flags``)."""
    return [p for p in PARTS if any(Path(pattern).name.startswith(f"{p}-") for pattern in train_data)]


def record_for(manifest: dict, folder: Path, parts: Sequence[str]) -> dict:
    """The record of a model trained on the training shards of ``manifest`` (in ``folder``) and its ``parts``."""
    unknown = [p for p in parts if p not in manifest]
    if unknown:
        raise ValueError(f"the manifest in {folder} has no part {unknown[0]!r} (built: {', '.join(manifest)})")
    shards = [s["shard"] for s in manifest["shards"]] + [s["shard"] for p in parts for s in manifest[p]["shards"]]
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        raise ValueError(f"{folder / missing[0]}: shard listed in the manifest is missing; rerun "
                         "scripts/build_training_data.py")
    metas = [meta for meta, _ in read_shards([folder / s for s in shards])]
    styles = Counter(m["style"] for m in metas)
    record = {k: v for k, v in manifest.items() if k not in PARTS} | {p: manifest[p] for p in parts}
    record["styles"] = dict(sorted(styles.items()))
    # a licence of a style comes with the style; one of no style (emojibase-data's labels) serves every part
    record["licenses"] = {k: v for k, v in manifest["licenses"].items() if k in styles or k not in manifest["styles"]}
    record["concepts"] = rules.record_concepts(metas)
    record["names"] = rules.record_names(metas)
    return record


def main(argv: list[str] | None = None) -> int:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", help="the recipe (YAML) whose train_data the model was trained on")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/kontrast-data"))
    ap.add_argument("--out", help="write the record here (default: standard output)")
    args = ap.parse_args(argv)
    folder = Path(args.cache) / "shards"
    if not (folder / "manifest.json").is_file():
        ap.error(f"{folder / 'manifest.json'} not found: build the data first (scripts/build_training_data.py)")
    recipe = yaml.safe_load(Path(args.recipe).read_text()) if Path(args.recipe).is_file() else None
    if not isinstance(recipe, dict) or not recipe.get("train_data"):
        ap.error(f"{args.recipe}: not a recipe with train_data")
    train_data = [recipe["train_data"]] if isinstance(recipe["train_data"], str) else recipe["train_data"]
    manifest = json.loads((folder / "manifest.json").read_text())
    try:
        record = record_for(manifest, folder, parts_used(train_data))
    except ValueError as e:
        ap.error(str(e))
    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
