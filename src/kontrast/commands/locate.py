"""``kontrast locate IMAGE "text" ...``: where in the image each text is, as heatmap overlays and boxes.

One PNG per (image, text): the similarity map over the patch grid, upsampled and blended over the image (what the
model did not see, e.g. the parts a centre crop cuts off, is dimmed). ``--boxes`` draws and reports the regions
at or above ``--threshold`` of the map's range (4-connected components). ``--json`` prints one object per
(image, text): ``{"image", "text", "peak": [x, y], "score", "overlay", "boxes": [{"x0", "y0", "x1", "y1",
"score", "area"}]}`` in the image's own pixels.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ..models.dense import DEFAULT_METHOD, METHODS
from .common import add_model_args, load_model


def register(subparsers) -> None:
    p = subparsers.add_parser("locate", help="heatmaps of where texts are in an image",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("image", metavar="IMAGE", help="an image file")
    p.add_argument("texts", nargs="+", metavar="TEXT", help='what to look for, e.g. "a red bicycle"')
    p.add_argument("--out", default=None, metavar="PATH",
                   help="a .png file (one text) or a folder (default: kontrast-locate/ beside the current folder)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS),
                   help=f"dense features (default {DEFAULT_METHOD}): maskclip (the value path of the last pooling "
                        "step), clearclip (the same after query-query attention), tokens (last-layer patch tokens) "
                        "or crops (sliding-window crops, slower)")
    p.add_argument("--size", type=int, default=None, metavar="PX",
                   help="input size for the map (default: 3x the model's image size, a finer grid)")
    p.add_argument("--relative", action="store_true",
                   help="with several texts: each map is the softmax over the texts per patch (where this text wins "
                        "against the others) instead of the raw similarity")
    p.add_argument("--boxes", action="store_true", help="draw and report boxes around the high-similarity regions")
    p.add_argument("--threshold", type=float, default=0.6, help="box threshold, a fraction of the map's range")
    p.add_argument("--json", action="store_true", help="one JSON object per (image, text) on stdout")
    add_model_args(p)
    p.set_defaults(func=run)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "text"


def _out_paths(out: str | None, image: Path, texts: list[str]) -> list[Path]:
    if out and out.lower().endswith(".png"):
        if len(texts) > 1:
            stem = Path(out)
            return [stem.with_name(f"{stem.stem}_{_slug(t)}.png") for t in texts]
        return [Path(out)]
    folder = Path(out) if out else Path("kontrast-locate")
    return [folder / f"{image.stem}__{_slug(t)}.png" for t in texts]


def run(args: argparse.Namespace) -> int:
    from ..errors import KontrastError
    from ..locate import boxes_from_map, locate, overlay
    from ..locate.render import normalise
    from ..preprocess import load_image

    if not 0.0 <= args.threshold <= 1.0:
        raise KontrastError(f"--threshold {args.threshold} must be in [0, 1] (a fraction of the map's range)")
    texts = [t for t in (s.strip() for s in args.texts) if t]
    if not texts:
        raise KontrastError("no text to locate: pass one or more texts after the image")
    image_path = Path(args.image).expanduser()
    image = load_image(image_path)  # one line (ImageError) for a missing or unreadable file, before the model loads
    model, _, tokenizer = load_model(args, torch_only=True)
    if not hasattr(model, "visual"):
        raise KontrastError(f"{args.model}: localisation needs the PyTorch image tower (drop --backend onnx)")
    if args.relative and len(texts) < 2:
        raise KontrastError("--relative compares the texts with each other: give at least two")
    size = args.size or 3 * model.image_size
    result = locate(model, [image], texts, method=args.method, size=size, tokenizer=tokenizer, relative=args.relative)
    region = result.regions[0]
    paths = _out_paths(args.out, image_path, texts)
    for t, (text, path) in enumerate(zip(texts, paths)):
        heat = result.heat(0, t)
        grid = result.grid[0, t].double().numpy()  # [gh, gw]: boxes are found on the patch grid, then scaled
        sx, sy = (region[2] - region[0]) / grid.shape[1], (region[3] - region[1]) / grid.shape[0]
        boxes = [b.scaled(sx, sy, region[0], region[1]) for b in boxes_from_map(grid, args.threshold)] if args.boxes else []
        path.parent.mkdir(parents=True, exist_ok=True)
        overlay(image, normalise(heat), region, boxes=boxes, label=text).save(path)
        px, py = result.peak_in_source(0, t)
        if args.json:
            print(json.dumps({"image": str(image_path), "text": text, "peak": [round(px, 1), round(py, 1)],
                              "score": round(float(heat.max()), 5), "relative": args.relative, "overlay": str(path),
                              "boxes": [b.to_dict() for b in boxes]}))
        else:
            where = f"peak at ({px:.0f}, {py:.0f})" + (f", {len(boxes)} box(es)" if args.boxes else "")
            kind = "max probability among the texts" if args.relative else "max cosine"
            print(f"{text}: {where}, {kind} {heat.max():.3f} -> {path}")
    return 0
