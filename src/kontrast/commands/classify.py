"""``kontrast classify IMAGE_OR_DIR... --labels cat dog``: zero-shot labels for images.

Folders are walked recursively for images. Output is a small table per image, or with ``--json`` one
JSON object per line: ``{"image": path, "labels": [top-k labels], "scores": [their probabilities]}``.
An image that cannot be read is reported on stderr (one line each) and the others are still
classified. Exit status: 0 if at least one image was classified, 1 if none could be read, 2 for a
usage error (no labels, no images, bad model).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from .common import add_model_args, load_model


def register(subparsers) -> None:
    p = subparsers.add_parser("classify", help="zero-shot classify images into labels",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders (walked recursively)")
    p.add_argument("--labels", nargs="+", default=[], metavar="LABEL", help='class names, e.g. cat dog "a red car"')
    p.add_argument("--labels-file", default=None, metavar="FILE", help="a text file with one class name per line")
    p.add_argument("--templates", default="simple",
                   help="prompt templates: 'simple' (default), 'imagenet' (OpenAI's 80), "
                        "or a file with one '{}' template per line")
    p.add_argument("--top-k", type=int, default=5, help="labels shown per image (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.add_argument("--long-text", choices=["truncate", "average"], default="truncate",
                   help="labels over the context length: cut them (with a warning) or average overlapping windows")
    p.add_argument("--batch-size", type=int, default=32, help="images encoded at once")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the classifier cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while the label prompts are embedded")
    add_model_args(p)
    p.set_defaults(func=run)


def read_labels(labels: list[str], labels_file: str | None) -> list[str]:
    """``--labels`` then the non-empty lines of ``--labels-file``, duplicates dropped (first kept)."""
    from ..errors import KontrastError

    names = [s.strip() for s in labels if s.strip()]
    if labels_file:
        try:
            text = Path(labels_file).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KontrastError(f"cannot read labels file {labels_file}: {exc}; "
                                "give a UTF-8 file with one label a line") from exc
        names += [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise KontrastError("no labels: pass --labels cat dog ... or --labels-file FILE")
    return list(dict.fromkeys(names))


def iter_image_paths(specs: list[str]) -> Iterator[str]:
    """Files as given (whatever their extension), and images found recursively in folders (sorted)."""
    from ..data.sources import IMAGE_EXTS

    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."):
                    yield str(p)
        else:
            yield spec  # a missing file is reported when it is read


def _print_table(path: str, ranked: list[tuple[str, float]]) -> None:
    print(path)
    width = max(len(name) for name, _ in ranked)
    for name, p in ranked:
        print(f"  {name:<{width}}  {p:7.2%}")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import ImageError, KontrastError
    from ..zeroshot import build_classifier, classify, load_templates, top_k

    if args.top_k < 1:
        raise KontrastError(f"--top-k {args.top_k}: give a positive number")
    if args.batch_size < 1:
        raise KontrastError(f"--batch-size {args.batch_size}: give a positive number")
    labels = read_labels(args.labels, args.labels_file)
    paths = list(iter_image_paths(args.images))
    if not paths:
        raise KontrastError(f"no images found in {', '.join(args.images)} (looked for .png .jpg .jpeg .webp ...)")
    model, preprocess, tokenizer = load_model(args)
    n_prompts = len(labels) * len(load_templates(args.templates))
    bar = None

    def progress(n: int) -> None:  # the bar appears only when prompts are embedded (not on a cache hit)
        nonlocal bar
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=n_prompts, unit="prompt", desc="embedding label prompts", file=sys.stderr,
                       dynamic_ncols=True, disable=args.no_progress)
        bar.update(n)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            weights = build_classifier(model, tokenizer, labels, templates=args.templates, long_text=args.long_text,
                                       cache=not args.no_cache, progress=progress)
        finally:
            if bar is not None:
                bar.close()
    for w in caught:
        print(f"kontrast classify: warning: {w.message}", file=sys.stderr)

    device = next(model.parameters()).device
    dtype = next(model.visual.parameters()).dtype
    done = failed = 0
    for start in range(0, len(paths), args.batch_size):
        batch_paths, pixels = [], []
        for path in paths[start: start + args.batch_size]:
            try:
                pixels.append(preprocess(path))
            except ImageError as exc:  # the image's own decode / I/O error; other exceptions are bugs
                failed += 1
                print(f"kontrast classify: skipped {path}: {exc}", file=sys.stderr)
                continue
            batch_paths.append(path)
        if not batch_paths:
            continue
        with torch.no_grad():
            feats = model.encode_image(torch.stack(pixels).to(device=device, dtype=dtype))
        ranked = top_k(classify(model, feats, weights), labels, args.top_k)
        for path, row in zip(batch_paths, ranked):
            if args.json:
                print(json.dumps({"image": path, "labels": [n for n, _ in row], "scores": [p for _, p in row]},
                                 ensure_ascii=False), flush=True)
            else:
                _print_table(path, row)
        done += len(batch_paths)
    if failed:
        print(f"kontrast classify: {failed} of {len(paths)} image(s) could not be read; {done} classified",
              file=sys.stderr)
    return 0 if done else 1
