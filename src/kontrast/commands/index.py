"""``kontrast index PATH... --index DIR``: build or update a persistent search index (FAISS + SQLite).

``kontrast index --from-embeddings EMB --index DIR`` builds it from embeddings computed before (``kontrast embed``
output, or clip-retrieval's ``img_emb/ text_emb/ metadata/`` layout) without reading an image.
"""

from __future__ import annotations

import argparse
import os
import sys

from .common import add_model_args, load_model


def register(subparsers) -> None:
    p = subparsers.add_parser("index", help="build or update a search index from folders, CSV files or shards",
                              description="Embed images into a search index. Re-running updates it: new files are "
                              "added, changed ones re-embedded, deleted ones dropped, duplicates (same sha256) "
                              "recorded as aliases. Safe to kill: the next run finishes the work. --model defaults to the "
                              "index's own model ('default' for a new index); another model is refused.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="image folder, CSV file (filepath,caption) or .tar shards")
    p.add_argument("--index", required=True, metavar="DIR", help="index folder (created if missing)")
    p.add_argument("--from-embeddings", default=None, metavar="EMB",
                   help="import precomputed embeddings instead of embedding images: a 'kontrast embed' folder or "
                   "clip-retrieval's layout (img_emb/, text_emb/, metadata/; give the --model and --pretrained that "
                   "made them). Re-run to resume or to pick up changed shards")
    add_model_args(p)
    p.set_defaults(model=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(4, max(0, (os.cpu_count() or 1) - 1)),
                   help="DataLoader workers decoding images (0: in this process)")
    p.add_argument("--index-type", choices=["auto", "flat", "ivf", "hnsw", "ivfpq"], default=None,
                   help="FAISS index: auto (flat below 100k vectors, else a tuned IVF; with --from-embeddings above "
                   "1M vectors, or above --max-index-memory, the compressed ivfpq), or force one (ivfpq: "
                   "--from-embeddings only) (default: keep the index's current choice; auto for a new index)")
    p.add_argument("--max-index-memory", default=None, metavar="SIZE",
                   help="memory budget of the index (e.g. 4G): the compressed ivfpq index is sized to fit it, and "
                   "chosen when the float32 vectors would not (default 4G for ivfpq)")
    p.add_argument("--commit-every", type=int, default=256, metavar="N",
                   help="files per transaction for folders / CSV (shards commit one shard at a time)")
    p.add_argument("--checkpoint-seconds", type=float, default=60.0,
                   help="rewrite the FAISS files at most this often during a run (always at the end)")
    p.add_argument("--verify", action="store_true",
                   help="re-hash files (and re-read shards) whose size and mtime look unchanged: finds files swapped "
                   "for others of the same size with their mtime restored")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="read symlinks that lead out of the indexed folders (default: skipped and counted, so a "
                   "link cannot expose files outside them through the server)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import KontrastError
    from ..search.build import update_index
    from ..search.index import SearchIndex
    from ..search.store import DB_NAME

    spec = args.model
    if os.path.exists(args.index) and not os.path.isdir(args.index):
        raise KontrastError(f"--index {args.index} is a file, not an index folder; give a folder (a new one is created)")
    if bool(args.paths) == bool(args.from_embeddings):
        raise KontrastError("give image PATHs to embed or --from-embeddings EMB, not both" if args.paths else
                            "nothing to index: give image PATHs or --from-embeddings EMB")
    if args.from_embeddings:
        from .index_import import run_import

        return run_import(args)
    if spec is None:  # the index's own model; the default one only for a new index (errors opening it stop here)
        is_new = not os.path.isfile(os.path.join(args.index, DB_NAME))
        if is_new:
            spec = "default"
        else:
            existing = SearchIndex(args.index)
            spec = existing.model_spec or "default"
            if args.pretrained is None:  # the recorded tag of an architecture name
                args.pretrained = existing.store.get_info("model_pretrained")
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
                             checkpoint_seconds=args.checkpoint_seconds, progress=progress, verify=args.verify,
                             follow_symlinks=args.follow_symlinks)
    finally:
        if bar is not None:
            bar.close()
    types = ", ".join(f"{k}: {v}" for k, v in stats.index_types.items())
    print(f"{args.index}: {stats.items} items, {stats.vectors} image vectors ({types}); this run: "
          f"+{stats.added} added, {stats.updated} updated, {stats.removed} removed, {stats.unchanged} unchanged, "
          f"{stats.duplicates} duplicates, {len(stats.skipped)} skipped, "
          f"{len(stats.caption_errors)} captions unreadable")
    for what, items in (("skipped", stats.skipped), ("caption left out", stats.caption_errors)):
        for s in items[:10]:
            print(f"  {what} {s.source}: {s.reason}")
        if len(items) > 10:
            print(f"  ... and {len(items) - 10} more")
    if stats.damaged:
        shards = sorted({d.source.rsplit(":", 1)[0] for d in stats.damaged})
        print(f"kontrast index: {len(stats.damaged)} damaged part(s) in {len(shards)} shard(s); their readable "
              "samples are indexed, the rest was lost and they are not marked done (repair them and re-run):",
              file=sys.stderr)
        for d in stats.damaged[:10]:
            print(f"  {d.reason}  [{d.source}]", file=sys.stderr)
        return 1
    return 0
