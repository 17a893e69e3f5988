"""``kontrast embed SOURCE --out DIR``: embed an image folder, a CSV or webdataset shards to .npy shards.

Resumable (re-run the same command after a crash), and runs unchanged under ``torchrun``: each rank
embeds its share of the units and rank 0 writes one manifest. See ``kontrast.embed`` for the layout.
"""

from __future__ import annotations

import argparse
import os
import sys

from .common import add_model_args, load_model


def register(subparsers) -> None:
    p = subparsers.add_parser("embed", help="embed an image folder, CSV or webdataset shards into .npy shards",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("source", nargs="+", metavar="SOURCE",
                   help="image folder (recursive), a .csv (filepath,caption), "
                        "or .tar shards (paths, globs, data-{000..009}.tar)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (re-run with the same one to resume)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding images (0: in this process)")
    p.add_argument("--text", action="store_true", help="also embed the captions (unit-*.text.npy)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="dtype of the stored embeddings")
    p.add_argument("--layout", choices=["kontrast", "clip-retrieval"], default="kontrast",
                   help="clip-retrieval: img_emb/img_emb_N.npy, text_emb/text_emb_N.npy, metadata/metadata_N.parquet "
                        "(as 'clip-retrieval inference' writes; needs pyarrow)")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="read symlinks that lead out of the source folder (default: skipped and counted)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..embed import EmbedJob, dist_env, make_barrier

    rank, world = dist_env()
    if args.model and os.path.exists(os.path.expanduser(args.model)):
        args.model = os.path.abspath(os.path.expanduser(args.model))  # recorded: 'index --from-embeddings' finds it
    model, preprocess, tokenizer = load_model(args)
    job = EmbedJob(model, preprocess, args.source, args.out, tokenizer=tokenizer if args.text else None,
                   model_name=args.model, batch_size=args.batch_size, workers=args.workers, dtype=args.dtype,
                   rank=rank, world_size=world, follow_symlinks=args.follow_symlinks, layout=args.layout,
                   pretrained=args.pretrained)
    job.prepare()
    job.barrier = make_barrier(world)
    who = f"rank {rank}/{world}: " if world > 1 else ""
    if not job.pending:
        print(f"{who}nothing to do: {job.count_done()} of {len(job.units)} units already in {job.out}",
              file=sys.stderr)
    bar = tqdm(total=job.expected_images(), unit="img", desc=f"{who}embedding", position=rank, dynamic_ncols=True,
               disable=args.no_progress or not job.pending, file=sys.stderr)
    try:
        report = job.run(progress=bar.update)
    finally:
        bar.close()
    report = job.finish(report)
    if job.barrier is not None:
        import torch.distributed as dist

        dist.destroy_process_group()
    if rank == 0:
        state = "complete" if report.complete else f"incomplete ({report.units_done} of {report.units_total} units)"
        total_skipped = job.manifest.get("skipped", 0)
        print(f"{job.out}: {job.manifest.get('rows', 0)} embeddings, {total_skipped} skipped, "
              f"{job.manifest.get('captions_skipped', 0)} captions unreadable, {report.units_total} units, {state}")
        for item in report.skipped_items[:10]:
            what = "caption left out" if item.get("part") == "caption" else "skipped"
            print(f"  {what} {item['source']}: {item['reason']}", file=sys.stderr)
        if len(report.skipped_items) > 10:
            print(f"  ... {len(report.skipped_items) - 10} more in {job.out / 'skipped.jsonl'}", file=sys.stderr)
    for d in report.damaged[:10]:
        print(f"{who}kontrast embed: {d['unit']}: {d['reason']}; the unit is not marked done (repair the shard and "
              "re-run)", file=sys.stderr)
    return 0 if report.complete else 1
