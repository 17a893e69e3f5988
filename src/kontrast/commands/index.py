"""``kontrast index PATH... --index DIR``: build or update a persistent search index (FAISS + SQLite)."""

from __future__ import annotations

import argparse
import os

from .common import add_model_args, load_model


def register(subparsers) -> None:
    p = subparsers.add_parser("index", help="build or update a search index from folders, CSV files or shards",
                              description="Embed images into a search index. Re-running updates it: new files are "
                              "added, changed ones re-embedded, deleted ones dropped, duplicates (same sha256) "
                              "recorded as aliases. Safe to kill: the next run finishes the work. --model defaults to the "
                              "index's own model ('default' for a new index); another model is refused.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image folder, CSV file (filepath,caption) or .tar shards")
    p.add_argument("--index", required=True, metavar="DIR", help="index folder (created if missing)")
    add_model_args(p)
    p.set_defaults(model=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(4, max(0, (os.cpu_count() or 1) - 1)),
                   help="DataLoader workers decoding images (0: in this process)")
    p.add_argument("--index-type", choices=["auto", "flat", "ivf", "hnsw"], default=None,
                   help="FAISS index: auto (flat below 100k vectors, else a tuned IVF), or force one "
                   "(default: keep the index's current choice; auto for a new index)")
    p.add_argument("--commit-every", type=int, default=256, metavar="N",
                   help="files per transaction for folders / CSV (shards commit one shard at a time)")
    p.add_argument("--checkpoint-seconds", type=float, default=60.0,
                   help="rewrite the FAISS files at most this often during a run (always at the end)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..search.build import update_index
    from ..search.index import SearchIndex

    spec = args.model
    if spec is None:
        try:
            spec = SearchIndex(args.index).model_spec or "default"
        except Exception:  # noqa: BLE001 - no index yet: the default model
            spec = "default"
    elif os.path.exists(os.path.expanduser(spec)):
        spec = os.path.abspath(os.path.expanduser(spec))  # so search/serve find it from any folder
    args.model = spec
    model, preprocess, tokenizer = load_model(args)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(unit="img", desc="index", dynamic_ncols=True)

    def progress(n: int, total: int | None) -> None:
        if bar is not None:
            if total is not None and bar.total != total:
                bar.reset(total=total)
            bar.update(n)

    try:
        stats = update_index(args.index, args.paths, model, preprocess, tokenizer, spec, batch_size=args.batch_size,
                             workers=args.workers, index_type=args.index_type, commit_every=args.commit_every,
                             checkpoint_seconds=args.checkpoint_seconds, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    types = ", ".join(f"{k}: {v}" for k, v in stats.index_types.items())
    print(f"{args.index}: {stats.items} items, {stats.vectors} image vectors ({types}); this run: "
          f"+{stats.added} added, {stats.updated} updated, {stats.removed} removed, {stats.unchanged} unchanged, "
          f"{stats.duplicates} duplicates, {len(stats.skipped)} skipped")
    for s in stats.skipped[:10]:
        print(f"  skipped {s.source}: {s.reason}")
    if len(stats.skipped) > 10:
        print(f"  ... and {len(stats.skipped) - 10} more")
    return 0
