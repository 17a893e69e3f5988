"""``kontrast search INDEX "a red bicycle"``: query a search index (text, image, captions, exclusion)."""

from __future__ import annotations

import argparse
import json

from .common import add_model_args


def register(subparsers) -> None:
    p = subparsers.add_parser("search", help="search an index by text and/or image",
                              description="Text->image, image->image, and (--captions) image->text search. "
                              "--model defaults to the model recorded in the index.")
    p.add_argument("index", metavar="INDEX", help="index folder built by 'kontrast index'")
    p.add_argument("query", nargs="?", default=None, help="text query")
    p.add_argument("--image", default=None, metavar="FILE", help="query image (combined with the text if both)")
    p.add_argument("--top-k", "-k", type=int, default=20)
    p.add_argument("--json", action="store_true", help="JSON lines: {rank, score, path, width, height, caption, ...}")
    p.add_argument("--exclude", action="append", default=[], metavar="TEXT",
                   help="drop results closer to TEXT than to the query text (repeatable)")
    p.add_argument("--exclude-threshold", type=float, default=None, metavar="T",
                   help="drop results whose cosine similarity to an --exclude text is above T instead")
    p.add_argument("--captions", action="store_true", help="search the indexed captions instead of the images")
    add_model_args(p)
    p.set_defaults(model=None, func=run)


def run(args: argparse.Namespace) -> int:
    from ..search.query import Searcher

    searcher = Searcher.open(args.index, model=args.model, pretrained=args.pretrained, device=args.device,
                             precision=args.precision, backend=getattr(args, "backend", "torch"))
    results = searcher.search(text=args.query, image=args.image, k=args.top_k, exclude=args.exclude,
                              exclude_threshold=args.exclude_threshold, captions=args.captions)
    if args.json:
        for r in results:
            d = r.to_dict()
            print(json.dumps({k: d[k] for k in ("rank", "score", "path", "width", "height", "caption", "id", "size",
                                                "sha256", "aliases")}, ensure_ascii=False))
        return 0
    if not results:
        print("no results")
        return 0
    width = max(len(r.path) for r in results)
    width = min(width, 80)
    print(f"{'rank':>4}  {'score':>7}  {'path':<{width}}  {'size':>9}  caption")
    for r in results:
        dims = f"{r.width}x{r.height}" if r.width else ""
        caption = (r.caption or "")[:60]
        path = r.path if len(r.path) <= width else "..." + r.path[-(width - 3):]
        print(f"{r.rank:>4}  {r.score:>7.4f}  {path:<{width}}  {dims:>9}  {caption}")
    return 0
