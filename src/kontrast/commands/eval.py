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

from ..evaluate.options import CB_TASK_NAMES, RECALL_KS, TASKS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate models: zero-shot accuracy, retrieval recall@k, linear probe",
        description="Evaluate one or more models on one or more datasets (image folder in ImageNet layout, "
        "CSV, webdataset shards, or a CLIP_benchmark dataset folder) and write results.json, results.md, "
        "plots and CLIP_benchmark's result JSON to --out. Runs already done are skipped.",
    )
    p.add_argument(
        "--model",
        nargs="+",
        default=["default"],
        metavar="MODEL",
        help="checkpoint path, 'default', 'hf-hub:owner/repo', an architecture name (with --pretrained), "
        "or NAME,PRETRAINED; several for a benchmark",
    )
    p.add_argument("--pretrained", default=None, help="pretrained tag for architecture names, e.g. openai")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8"], help="int8 needs --backend onnx")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"], help="onnx: onnxruntime towers")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--task",
        default="auto",
        choices=["auto", *TASKS, *CB_TASK_NAMES.values()],
        help="auto: from a CLIP_benchmark folder's dataset_type.txt (CLIP_benchmark's task names work too)",
    )
    p.add_argument(
        "--data",
        nargs="+",
        action="append",
        metavar="SOURCE",
        help="a dataset: image folder (DATA/<class>/<image>), .csv (filepath,label / filepath,caption), "
        ".tar shards (paths, globs, {000..009} patterns; one --data group of shards is one dataset), or a "
        "CLIP_benchmark folder; several folders/CSVs, or --data again, for a benchmark",
    )
    p.add_argument("--benchmark", metavar="FILE", help="YAML file with models, datasets, languages, recall_k")
    p.add_argument(
        "--language",
        nargs="+",
        default=["en"],
        help="CLIP_benchmark folders: class names from classnames_{lang}.txt, one run per language",
    )
    p.add_argument("--recall-k", nargs="+", type=int, default=list(RECALL_KS), help="retrieval: the k of recall@k")
    p.add_argument("--overwrite", action="store_true", help="recompute runs whose results exist already")
    p.add_argument(
        "--split",
        help="part of a dataset folder: subfolder DATA/<split>/, else the .tar/.csv files "
        "named like *-<split>-* (e.g. --split val)",
    )
    p.add_argument(
        "--out",
        help="output folder (default: kontrast-eval/<task>-<data name>, or kontrast-eval/benchmark for "
        "several runs, each in OUT/<run name>/ next to its CLIP_benchmark JSON OUT/<run name>.json)",
    )
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
    p.add_argument("--long-text", choices=["truncate", "average"], default="truncate",
                   help="captions and prompts over the context length: cut them (with a warning) or average "
                   "the embeddings of overlapping windows")
    p.set_defaults(func=run)

    r = subparsers.add_parser(
        "eval-report",
        help="merge several eval runs into one comparison table (and CLIP_benchmark's CSV)",
        description="Read results.json (and CLIP_benchmark result JSON files) from each folder, searched "
        "recursively, and print a markdown table per task; --out FILE writes .md or .html, --csv FILE the "
        "CSV of 'clip_benchmark build'.",
    )
    r.add_argument(
        "runs",
        nargs="+",
        metavar="DIR",
        help="folders written by 'kontrast eval --out' or 'clip_benchmark eval' (or their JSON files)",
    )
    r.add_argument("--out", help="write the report to FILE (.md or .html)")
    r.add_argument("--csv", help="write the CSV 'clip_benchmark build' writes from the CLIP_benchmark JSON files")
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


def _datasets(args: argparse.Namespace) -> list:
    """One ``DatasetSpec`` per dataset named by the ``--data`` groups (a group of shards is one dataset)."""
    from ..errors import KontrastError
    from ..evaluate.suite import DatasetSpec

    out = []
    for group in args.data or []:
        shards = [g for g in group if re.search(r"\.(tar|tgz|tar\.gz)(\}|\*|$)", g) and not os.path.isdir(g)]
        if shards and len(shards) != len(group):
            raise KontrastError(
                f"--data {' '.join(group)}: mixes .tar shards with other sources; give each dataset its own --data"
            )
        items = [group if len(group) > 1 else group[0]] if shards else group
        for data in items:
            ds = DatasetSpec(data, args.task)
            out.append(DatasetSpec(data, args.task, None, _task_fields(args, ds.resolved_task())))
    return out


def _task_fields(args: argparse.Namespace, task: str) -> dict:
    """The options fields of ``task`` that were given on the command line."""
    templates = args.templates[0] if args.templates and len(args.templates) == 1 else args.templates
    given = {
        "split": args.split,
        "label_field": args.label_field,
        "caption_field": args.caption_field,
        "classnames": args.classnames,
        "templates": templates,
        "train_data": _one(args.train_data),
        "val_data": _one(args.val_data),
        "train_split": args.train_split,
        "val_split": args.val_split,
    }
    wanted = {
        "zeroshot": ("split", "label_field", "classnames", "templates"),
        "retrieval": ("split", "caption_field"),
        "linear-probe": ("split", "label_field", "classnames", "train_data", "val_data", "train_split", "val_split"),
    }[task]
    fields = {k: given[k] for k in wanted if given[k] is not None}
    if task == "linear-probe":
        fields.update(k_shots=tuple(_k_shots(args.k_shots)), seed=args.seed)
    return fields


def run(args: argparse.Namespace) -> int:
    from ..errors import KontrastError
    from ..evaluate.options import RunOptions
    from ..evaluate.suite import ModelSpec, plan, read_benchmark, run_suite

    if args.benchmark:
        models, datasets, languages, recall_k = read_benchmark(args.benchmark)
    elif not args.data:
        raise KontrastError("kontrast eval needs --data (or --benchmark FILE)")
    else:
        models = [ModelSpec.parse(m, args.pretrained) for m in args.model]
        datasets, languages, recall_k = _datasets(args), args.language, tuple(args.recall_k)
    runs = plan(models, datasets, languages)
    single = len(runs) == 1 and not args.benchmark
    if args.out:
        out = Path(args.out)
    elif single:
        out = _default_out(runs[0].task, args.data[0], args.split)
    else:
        out = Path("kontrast-eval") / "benchmark"
    bars = _Bars()
    options = RunOptions(args.cache_dir, not args.no_cache, args.batch_size, args.workers, bars, args.long_text)

    def load(name: str, pretrained: str | None = None):
        from .common import load_model

        return load_model(argparse.Namespace(model=name, pretrained=pretrained, device=args.device,
                                             precision=args.precision, backend=args.backend))

    def event(what: str, run, record) -> None:
        bars.close()
        if what == "skip":
            print(f"done already (--overwrite recomputes): {run.name()}", file=sys.stderr)
            if single:  # show the results it has
                import json

                _print_record(json.loads((out / "results.json").read_text(encoding="utf-8")), out)
        elif what == "start" and not single:
            print(f"running {run.name()}", file=sys.stderr)
        elif what == "done":
            _print_record(record, out if single else out / run.name())
        elif what == "fail" and not single:
            print(f"FAILED {run.name()}: {record['error']}", file=sys.stderr)

    try:
        outcome = run_suite(runs, out, options, recall_k=recall_k, overwrite=args.overwrite, single=single,
                            on_event=event, load=load)
    finally:
        bars.close()
    if single and outcome.failed:
        raise KontrastError(outcome.failed[0][1])
    if not single:
        print(f"{len(outcome.done)} runs done, {len(outcome.skipped)} skipped (done before), "
              f"{len(outcome.failed)} failed; results in {out}")
    return 2 if outcome.failed else 0


def _print_record(record: dict, folder: Path) -> None:
    from ..evaluate.report import flatten_metrics

    details = record["details"]
    size = details.get("n_images", details.get("n_test"))
    print(
        f"{record['task']} on {record['dataset']['spec']} ({size} images), model {record['model']} "
        f"[{record['model_fingerprint']}]"
    )
    for key, value in flatten_metrics(record["metrics"]).items():
        print(f"  {key:28s} {value:.4f}" if isinstance(value, float) else f"  {key:28s} {value}")
    print(f"results: {folder / 'results.json'}, {folder / 'results.md'}")


def _one(values: list[str] | None):
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def run_report(args: argparse.Namespace) -> int:
    from ..errors import KontrastError
    from ..evaluate.cb_results import build_csv, find_results
    from ..evaluate.report import comparison_html, comparison_markdown, load_results

    records = load_results(args.runs, required=False)
    cb_files = find_results(args.runs)
    if not records and not cb_files:
        raise KontrastError(
            f"no results.json and no CLIP_benchmark result file in {' '.join(args.runs)}; "
            "pass folders written by 'kontrast eval --out' or 'clip_benchmark eval'"
        )
    if not records:  # CLIP_benchmark files only: tables of their metrics
        records = [_cb_as_record(path, data) for path, data in cb_files]
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
    if args.csv:
        if not cb_files:
            raise KontrastError(f"--csv: no CLIP_benchmark result JSON in {' '.join(args.runs)}")
        print(f"written: {build_csv([data for _, data in cb_files], args.csv)} ({len(cb_files)} results)",
              file=sys.stderr)
    return 0


def _cb_as_record(path: Path, data: dict) -> dict:
    """A CLIP_benchmark result in the shape ``comparison_markdown`` reads."""
    return {
        "task": data["task"],
        "model": f"{data['model']} {data['pretrained']}".strip(),
        "model_fingerprint": "",
        "dataset": {"spec": f"{data['dataset']} ({data['language']})"},
        "metrics": data["metrics"],
        "_path": str(path.with_suffix("")),
    }
