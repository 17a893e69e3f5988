"""``kontrast eval`` (zero-shot, retrieval, linear probe on any dataset) and ``kontrast eval-report``.

Examples::

    kontrast eval --model default --task zeroshot --data shared/data/emoji --split val_concepts \\
        --label-field name --templates "an emoji of a {}." --out runs/emoji-zs
    kontrast eval --task retrieval --data shared/data/clipart --split val --out runs/clipart-ret
    kontrast eval --task linear-probe --data imagenet_dir --split val --train-split train
    kontrast eval-report runs/* --out report.md
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from .common import add_model_args, load_model


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model: zero-shot accuracy, retrieval recall@k, linear probe",
        description="Evaluate a model on a dataset (image folder in ImageNet layout, CSV, or webdataset "
        "shards) and write results.json, results.md and plots to --out.",
    )
    add_model_args(p)
    p.add_argument("--task", required=True, choices=["zeroshot", "retrieval", "linear-probe"])
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        metavar="SOURCE",
        help="image folder (DATA/<class>/<image>), .csv (filepath,label / filepath,caption), "
        "or .tar shards (paths, globs, {000..009} patterns); the test set for linear-probe",
    )
    p.add_argument(
        "--split",
        help="part of a dataset folder: subfolder DATA/<split>/, else the .tar/.csv files "
        "named like *-<split>-* (e.g. --split val)",
    )
    p.add_argument("--out", help="output folder (default: kontrast-eval/<task>-<data name>)")
    p.add_argument("--label-field", help="json field / CSV column with the class (default: label, else name)")
    p.add_argument(
        "--caption-field", help="json field / CSV column with captions (default: caption = the .txt)"
    )
    p.add_argument(
        "--classnames",
        help="file with the class list, one per line (folders: display names in "
        "sorted folder order, like classnames.txt)",
    )
    p.add_argument(
        "--templates",
        nargs="+",
        help="zero-shot prompts: imagenet | simple | a file | templates "
        "with {} (default: the data's templates.txt, else imagenet)",
    )
    p.add_argument(
        "--train-data",
        nargs="+",
        metavar="SOURCE",
        help="linear probe training data (default: the train split of --data)",
    )
    p.add_argument("--train-split", help="split of --train-data (or of --data) to train the probe on")
    p.add_argument(
        "--val-data",
        nargs="+",
        metavar="SOURCE",
        help="linear probe validation data for the C "
        "sweep (default: the val split of --data, else a stratified 20%% of train)",
    )
    p.add_argument("--val-split", help="split of --val-data (or of --data) for the C sweep")
    p.add_argument(
        "--k-shots", default="1,2,4,8,16", help="linear probe k-shot sizes, comma-separated ('' for none)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the k-shot samples and the holdout")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, max(0, (os.cpu_count() or 1) - 1)),
        help="DataLoader workers that decode images (default: CPU cores - 1, at most 4)",
    )
    p.add_argument(
        "--cache-dir", help="feature cache (default: $KONTRAST_CACHE/features or ~/.cache/kontrast/features)"
    )
    p.add_argument("--no-cache", action="store_true", help="recompute features and do not write the cache")
    p.set_defaults(func=run)

    r = subparsers.add_parser(
        "eval-report",
        help="merge several eval runs into one comparison table",
        description="Read results.json from each folder (searched recursively) and print a "
        "markdown table per task; --out FILE writes .md or .html.",
    )
    r.add_argument(
        "runs",
        nargs="+",
        metavar="DIR",
        help="folders written by 'kontrast eval --out' (or results.json files)",
    )
    r.add_argument("--out", help="write the report to FILE (.md or .html)")
    r.set_defaults(func=run_report)


def _default_out(task: str, data: list[str], split: str | None) -> Path:
    name = Path(data[0].rstrip("/")).name
    name = re.sub(r"\.(tar|csv|tgz|tar\.gz)$", "", name)
    name = re.sub(r"[^\w.-]+", "_", name) + (f"-{split}" if split else "")
    return Path("kontrast-eval") / f"{task}-{name}"


def _k_shots(text: str) -> list[int]:
    from ..errors import KontrastError

    try:
        ks = [int(k) for k in text.replace(" ", "").split(",") if k]
    except ValueError:
        raise KontrastError(f"--k-shots {text!r}: give comma-separated integers, e.g. 1,2,4,8,16") from None
    if any(k < 1 for k in ks):
        raise KontrastError(f"--k-shots {text!r}: sizes must be at least 1")
    return ks


class _Bars:
    """One tqdm bar per stage (images, prompts, captions); probe steps as a status line."""

    def __init__(self) -> None:
        self.bars: dict = {}

    def __call__(self, stage: str, n: int) -> None:
        from tqdm import tqdm

        if n == 0:
            print(f"linear probe: {stage}", file=sys.stderr)
            return
        if stage not in self.bars:
            self.bars[stage] = tqdm(desc=f"embedding {stage}", unit=" " + stage, file=sys.stderr, leave=False)
        self.bars[stage].update(n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def run(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate
    from ..evaluate.report import flatten_metrics

    model, preprocess, tokenizer = load_model(args)
    out = Path(args.out) if args.out else _default_out(args.task, args.data, args.split)
    templates = None
    if args.templates:
        templates = args.templates[0] if len(args.templates) == 1 else list(args.templates)
    bars = _Bars()
    try:
        record = evaluate(
            args.task,
            model,
            args.data if len(args.data) > 1 else args.data[0],
            preprocess=preprocess,
            tokenizer=tokenizer,
            model_name=args.model,
            split=args.split,
            label_field=args.label_field,
            caption_field=args.caption_field,
            classnames=args.classnames,
            templates=templates,
            train_data=_one(args.train_data),
            val_data=_one(args.val_data),
            train_split=args.train_split,
            val_split=args.val_split,
            k_shots=_k_shots(args.k_shots),
            seed=args.seed,
            out_dir=out,
            cache_dir=args.cache_dir,
            use_cache=not args.no_cache,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=bars,
        )
    finally:
        bars.close()
    details = record["details"]
    size = details.get("n_images", details.get("n_test"))
    print(
        f"{args.task} on {record['dataset']['spec']} ({size} images), model {record['model']} "
        f"[{record['model_fingerprint']}]"
    )
    for key, value in flatten_metrics(record["metrics"]).items():
        print(f"  {key:28s} {value:.4f}" if isinstance(value, float) else f"  {key:28s} {value}")
    print(f"results: {out / 'results.json'}, {out / 'results.md'}")
    return 0


def _one(values: list[str] | None):
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def run_report(args: argparse.Namespace) -> int:
    from ..errors import KontrastError
    from ..evaluate.report import comparison_html, comparison_markdown, load_results

    records = load_results(args.runs)
    markdown = comparison_markdown(records)
    print(markdown, end="")
    if args.out:
        out = Path(args.out)
        if out.suffix.lower() not in (".md", ".html", ".htm"):
            raise KontrastError(f"--out {out}: use a .md or .html file name")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            comparison_html(records) if out.suffix.lower() in (".html", ".htm") else markdown,
            encoding="utf-8",
        )
        print(f"written: {out}", file=sys.stderr)
    return 0
