"""Pointing game: does a localisation map's maximum fall on the right object?

Composites of 2-4 emoji (64 px PNGs from ../shared/data: google/twitter ``val_concepts``, concepts never trained
on, and OpenMoji ``val_style``, a style never trained on), each scaled to a random size and pasted at a random
place (no overlaps) on a white canvas. For each pasted emoji the map of its name's prompt ("an emoji of {name}")
is computed over the whole canvas; a hit is a maximum inside that emoji's box.

Baselines: ``random item`` = the chance that a random point on the pasted emoji falls on the target (each item
weighted by its area: ``area_target / sum(areas)``, = 1/k for equal sizes); ``random point`` = the chance for a
random point on the canvas (``area_target / canvas area``).

    python benchmarks/pointing.py --models default --trials 150 --out docs/locate
    python benchmarks/pointing.py --models default default-v1 --sizes 64 192 --methods maskclip tokens crops

Prints a markdown table; ``--out`` also writes ``results.json`` and ``examples.png`` (maps of the first composites).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import kontrast
from kontrast.data import open_source
from kontrast.locate import METHODS, locate, overlay
from kontrast.locate.render import normalise

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "emoji"
SPLITS = {  # name -> (shard pattern, concept_split wanted or None for all)
    "google val_concepts": ("emoji-google-val_concepts-*.tar", None),
    "twitter val_concepts": ("emoji-twitter-val_concepts-*.tar", None),
    "openmoji seen concepts": ("emoji-openmoji-val_style-*.tar", "train"),
    "openmoji unseen concepts": ("emoji-openmoji-val_style-*.tar", "test"),
}


@dataclass
class Item:
    name: str
    image: Image.Image


@dataclass
class Composite:
    canvas: Image.Image
    names: list[str]
    boxes: list[tuple[int, int, int, int]]  # x0, y0, x1, y1 (exclusive)


def read_split(pattern: str, concept_split: str | None) -> list[Item]:
    """One item per distinct concept name in the split's shards (sorted by name: deterministic); with
    ``concept_split``, only concepts of that side of the training split ("train": seen, "test": held out)."""
    items: dict[str, Item] = {}
    for shard in sorted(SHARED.glob(pattern)):
        for record in open_source(shard):
            meta = record.meta or {}
            name = meta.get("name")
            if concept_split is not None and meta.get("concept_split") != concept_split:
                continue
            if record.data and name and name not in items:
                items[name] = Item(name, Image.open(io.BytesIO(record.data)).convert("RGB"))
    return [items[k] for k in sorted(items)]


def make_composite(items: list[Item], rng: random.Random, canvas: int) -> Composite:
    """2-4 distinct items, sizes canvas/5..canvas/2.5, non-overlapping, on white."""
    for _ in range(100):  # rejection sampling of a layout
        k = rng.randint(2, 4)
        chosen = rng.sample(items, k)
        boxes: list[tuple[int, int, int, int]] = []
        for _item in chosen:
            side = rng.randint(canvas // 5, int(canvas / 2.5))
            for _try in range(50):
                x, y = rng.randint(0, canvas - side), rng.randint(0, canvas - side)
                box = (x, y, x + side, y + side)
                if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == k:
            img = Image.new("RGB", (canvas, canvas), (255, 255, 255))
            for item, (x0, y0, x1, y1) in zip(chosen, boxes):
                img.paste(item.image.resize((x1 - x0, y1 - y0), Image.BICUBIC), (x0, y0))
            return Composite(img, [it.name for it in chosen], boxes)
    raise RuntimeError("could not place the items without overlap")


def run(models: list[str], methods: list[str], sizes: list[int], trials: int, canvas: int, seed: int,
        out: Path | None, modes: tuple[bool, ...] = (False, True)) -> dict:
    splits = {name: read_split(pattern, which) for name, (pattern, which) in SPLITS.items()}
    if not all(splits.values()):
        sys.exit(f"emoji shards not found under {SHARED}")
    composites = {name: [make_composite(items, random.Random(f"{seed}:{name}:{t}"), canvas) for t in range(trials)]
                  for name, items in splits.items()}
    results: dict = {"trials": trials, "canvas": canvas, "seed": seed, "rows": [], "baselines": {}}
    for split, comps in composites.items():
        item_base, point_base = [], []
        for comp in comps:
            areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in comp.boxes]
            item_base += [a / sum(areas) for a in areas]
            point_base += [a / canvas**2 for a in areas]
        results["baselines"][split] = {"random item": float(np.mean(item_base)), "random point": float(np.mean(point_base))}
    for model_name in models:
        model, _, tokenizer = kontrast.load(model_name)
        for size in sizes:
            for method in methods:
                for relative in modes:
                    for split, comps in composites.items():
                        row = point(model, tokenizer, comps, method, size, relative)
                        row.update(model=model_name, split=split)
                        results["rows"].append(row)
                        print(f"  {model_name} size {size} {row['maps']:20s} {split:24s} {row['accuracy']:.3f}",
                              file=sys.stderr)
        if out is not None and model_name == models[0]:
            write_examples(model, tokenizer, composites, methods, sizes[-1], out)
    return results


def point(model, tokenizer, comps: list[Composite], method: str, size: int, relative: bool) -> dict:
    """Pointing accuracy over composites: each item's prompt, maps of all the composite's prompts at once."""
    hits, total, start = 0, 0, time.perf_counter()
    for comp in comps:
        prompts = [f"an emoji of {n}" for n in comp.names]
        loc = locate(model, [comp.canvas], prompts, method=method, size=size, tokenizer=tokenizer, relative=relative)
        for t, (x0, y0, x1, y1) in enumerate(comp.boxes):
            px, py = loc.peak_in_source(0, t)
            hits += int(x0 <= px < x1 and y0 <= py < y1)
            total += 1
    maps = f"{method}{' relative' if relative else ''}"
    return {"size": size, "method": method, "relative": relative, "maps": maps, "accuracy": hits / total,
            "pointings": total, "s_per_image": (time.perf_counter() - start) / len(comps)}


def write_examples(model, tokenizer, composites: dict, methods: list[str], size: int, out: Path) -> None:
    """A grid: one composite per split (rows), the map of its first item per method (columns)."""
    tiles = []
    for comps in composites.values():
        comp = comps[0]
        row = [comp.canvas]
        for method in methods:
            loc = locate(model, [comp.canvas], [f"an emoji of {comp.names[0]}"], method=method, size=size,
                         tokenizer=tokenizer)
            row.append(overlay(comp.canvas, normalise(loc.heat(0, 0)), loc.regions[0], label=f"{method}: {comp.names[0]}"))
        tiles.append(row)
    w, h = tiles[0][0].size
    grid = Image.new("RGB", (w * len(tiles[0]), h * len(tiles)), (255, 255, 255))
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            grid.paste(tile, (c * w, r * h))
    out.mkdir(parents=True, exist_ok=True)
    grid.save(out / "examples.png")


def table(results: dict) -> str:
    splits = list(SPLITS)
    lines = ["| model | size | maps | " + " | ".join(splits) + " |", "|---|---|---|" + "---:|" * len(splits)]
    keyed = {(r["model"], r["size"], r["maps"], r["split"]): r["accuracy"] for r in results["rows"]}
    for model, size, maps in dict.fromkeys((r["model"], r["size"], r["maps"]) for r in results["rows"]):
        cells = [f"{keyed[(model, size, maps, s)]:.1%}" for s in splits]
        lines.append(f"| {model} | {size} | {maps} | " + " | ".join(cells) + " |")
    for base in ("random item", "random point"):
        cells = [f"{results['baselines'][s][base]:.1%}" for s in splits]
        lines.append(f"| {base} baseline | | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["default"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 192], help="input sizes the canvas is resized to")
    ap.add_argument("--trials", type=int, default=150, help="composites per split")
    ap.add_argument("--canvas", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", nargs="+", default=["cosine", "relative"], choices=["cosine", "relative"],
                    help="raw cosine maps, and/or maps relative to the composite's other prompts")
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json and examples.png")
    args = ap.parse_args()
    modes = tuple(m == "relative" for m in args.modes)
    results = run(args.models, args.methods, args.sizes, args.trials, args.canvas, args.seed, args.out, modes)
    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
             if f in Path("/proc/cpuinfo").read_text().split()]
    results["cpu_flags"] = flags
    print(table(results))
    if args.out is not None:
        (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
