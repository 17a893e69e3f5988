"""``kontrast index --from-embeddings EMB --index DIR``: the model checks and the run (see ``search.import_embeddings``).

The model recorded in the index is the one that made the embeddings: a folder with kontrast's manifest
(``kontrast embed``, either layout) names it (spec, pretrained tag, fingerprint), and a ``--model`` given as well
must have that fingerprint. A clip-retrieval folder records none: ``--model`` (and ``--pretrained``) must name it
(or the index already does), and its embedding size must be the folder's.
"""

from __future__ import annotations

import argparse
import os
import sys


def _model_from_args(args: argparse.Namespace) -> tuple[str, str | None, str, int]:
    """``(spec, pretrained, fingerprint, dim)`` of ``--model``, loaded (not run)."""
    from ..record import fingerprint
    from .common import load_model

    spec = args.model
    if os.path.exists(os.path.expanduser(spec)):
        spec = os.path.abspath(os.path.expanduser(spec))  # so search/serve find it from any folder
    args.model = spec
    model = load_model(args)[0]
    return spec, args.pretrained, fingerprint(model), int(model.embed_dim)


def resolve_model(args: argparse.Namespace, src: str) -> tuple[str, str | None, str, int]:
    """``(spec, pretrained, fingerprint, dim)`` of the model that made the embeddings in ``src``."""
    from ..errors import KontrastError
    from ..search.embedding_sources import read_manifest
    from ..search.index import SearchIndex
    from ..search.store import DB_NAME

    manifest = read_manifest(src)
    if manifest is not None:
        rec = manifest.get("model") or {}
        if not rec.get("fingerprint") or not manifest.get("dim"):
            raise KontrastError(f"{os.path.join(src, 'manifest.json')} records no model fingerprint or dim; "
                                "re-embed the folder with this kontrast")
        if args.model is None:
            return str(rec.get("name") or "default"), rec.get("pretrained"), rec["fingerprint"], int(manifest["dim"])
        spec, pretrained, fp, dim = _model_from_args(args)
        if fp != rec["fingerprint"]:
            raise KontrastError(f"{src} was embedded with model {rec['fingerprint']} ({rec.get('name')}) but "
                                f"--model {spec} is model {fp}; leave --model out to use the recorded one")
        return spec, pretrained, fp, dim
    if args.model is None:
        if os.path.isfile(os.path.join(args.index, DB_NAME)):  # adding to an index: its own model
            index = SearchIndex(args.index)
            if index.model_spec:
                out = (index.model_spec, index.store.get_info("model_pretrained"), index.model_fingerprint, index.dim)
                index.close()
                return out
        raise KontrastError(f"{src} (clip-retrieval's layout) does not record its model: pass the --model and "
                            "--pretrained that made the embeddings (text queries need it)")
    return _model_from_args(args)


def run_import(args: argparse.Namespace) -> int:
    from ..search.embedding_sources import detect_layout
    from ..search.import_embeddings import import_embeddings

    src = os.path.expanduser(args.from_embeddings)
    layout = detect_layout(src)  # a folder in neither layout stops here, before a model is loaded
    spec, pretrained, fp, dim = resolve_model(args, src)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(unit="emb", desc="import", dynamic_ncols=True, file=sys.stderr)

    def progress(n: int, total: int | None) -> None:
        if bar is not None:
            if total is not None and bar.total != total:
                bar.reset(total=total)
            bar.update(n)

    from ..errors import KontrastError
    from ..search import bulk, compressed
    from ..search.embedding_sources import count_embeddings
    from ..search.index import SearchIndex
    from ..search.store import DB_NAME

    max_memory = compressed.parse_memory(args.max_index_memory) if args.max_index_memory else None
    current = SearchIndex(args.index).index_type if os.path.isfile(os.path.join(args.index, DB_NAME)) else None
    if current == compressed.KIND and args.index_type not in (None, "auto", compressed.KIND):
        raise KontrastError(f"index {args.index} is a compressed (ivfpq) index; --index-type {args.index_type} needs a "
                            "new --index DIR")
    if bulk.use_compressed(count_embeddings(src, layout), dim, args.index_type, current, max_memory):
        return _run_compressed(args, src, layout, spec, fp, dim, max_memory, progress, bar)
    try:
        stats = import_embeddings(src, args.index, spec, fp, dim, layout=layout, pretrained=pretrained,
                                  index_type=args.index_type, checkpoint_seconds=args.checkpoint_seconds,
                                  progress=progress)
    finally:
        if bar is not None:
            bar.close()
    types = ", ".join(f"{k}: {v}" for k, v in stats.index_types.items())
    lost_shards = [s for s in stats.skipped if s.whole]
    print(f"{args.index}: {stats.items} items, {stats.vectors} image vectors, {stats.captions} captions ({types}); "
          f"from {layout} embeddings in {src}: {stats.imported} shards imported, {stats.unchanged} unchanged, "
          f"{len(lost_shards)} skipped; +{stats.added} rows, {stats.removed} removed, {stats.duplicates} duplicate "
          f"paths, {stats.skipped_rows} rows skipped")
    return _report_skipped(src, stats.skipped, len(lost_shards))


def _run_compressed(args: argparse.Namespace, src: str, layout: str, spec: str, fp: str, dim: int,
                    max_memory: int | None, progress, bar) -> int:
    """The compressed (ivfpq) build for collections larger than memory (see ``search.bulk``)."""
    from ..search.bulk import import_compressed

    try:
        stats, skipped = import_compressed(src, args.index, spec, fp, dim, layout, max_memory, progress)
    finally:
        if bar is not None:
            bar.close()
    p = stats.params
    print(f"{args.index}: {stats.n} image vectors (ivfpq: {p.get('note', '')}, nprobe={p.get('nprobe')}, "
          f"recall@10 {p.get('tuned_recall')} re-ranked, {p.get('tuned_recall_no_rerank')} without); from {layout} "
          f"embeddings in {src}: {stats.encoded} shards encoded, {stats.unchanged} unchanged, "
          f"{len(stats.skipped)} skipped, {stats.duplicates} duplicate paths")
    return _report_skipped(src, skipped, len(stats.skipped))


def _report_skipped(src: str, skipped: list, lost_shards: int) -> int:
    """List what was skipped (the first 10) and return the exit code: 1 when whole shards were lost."""
    for s in skipped[:10]:
        print(f"  skipped {s.name}: {s.reason}")
    if len(skipped) > 10:
        print(f"  ... and {len(skipped) - 10} more")
    if lost_shards:
        print(f"kontrast index: {lost_shards} shard(s) of {src} could not be read and are not marked done "
              "(repair them and re-run)", file=sys.stderr)
        return 1
    return 0
