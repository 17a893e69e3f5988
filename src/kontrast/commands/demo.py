"""``kontrast demo [--out DIR] [--model M]``: zero-shot + text search over the bundled sample, as an HTML report.

Runs offline with the embedded default model; prints a one-screen summary and the path of the report.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="zero-shot and search over bundled sample images; writes an HTML report",
                              description="Classify and search a small bundled image sample with a model (the "
                                          "embedded default one unless --model), offline; writes DIR/report.html.")
    p.add_argument("--out", metavar="DIR", default="kontrast-demo", help="folder for report.html and report.json (default: ./kontrast-demo)")
    p.add_argument("--model", metavar="M", default="default", help="checkpoint path or name (default: the embedded default model)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"])
    p.add_argument("--device", default="cpu")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the report path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from ..demo import TOP_K_SEARCH, run_demo

    # A Hugging Face text tower would draw its own "Loading weights" bar over the summary; keep the screen clean.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"  {msg} ...", file=sys.stderr, flush=True)

    report, path = run_demo(args.model, args.out, device=args.device, precision=args.precision, progress=progress)
    if args.quiet:
        print(path)
        return 0
    info = report.model_info
    n = len(report.classifications)
    print(f"kontrast demo  model {report.model_name} ({info['architecture']}, fingerprint {info['fingerprint']})")
    print(f"zero-shot over {len(report.labels)} labels: top-1 {report.top1:.0%} "
          f"({sum(c.correct for c in report.classifications)}/{n}), top-5 {report.top5:.0%}")
    print("  by style: " + ", ".join(f"{k} {a}/{b}" for k, (a, b) in report.accuracy_by_style().items()))
    if report.accuracy_by_seen():
        print("  by training record: " + "; ".join(f"{k} {a}/{b}" for k, (a, b) in report.accuracy_by_seen().items()))
    shown = _examples(report.classifications, 6)
    width = max(len(c.label) for c in shown) if shown else 0
    for c in shown:
        mark = "ok " if c.correct else "x  "
        top = ", ".join(f"{lab} {p:.0%}" for lab, p in c.top)
        print(f"  {mark}{c.label:<{width}}  -> {top}")
    print(f"text search (top {TOP_K_SEARCH}, relevant hits):")
    for s in report.searches:
        names = ", ".join(label_of(report, f) + ("" if rel else "*") for f, _, rel in s.hits)
        print(f"  {s.query!r:<24} {sum(r for _, _, r in s.hits)}/{len(s.hits)}  {names}")
    print("  (* = not of the queried kind)")
    print(f"done in {report.seconds.get('total', 0):.1f} s; report: {path.resolve()}")
    return 0


def label_of(report, file: str) -> str:
    """The sample label of an image file in the report."""
    return next((s.label for s in report.samples if s.file == file), file)


def _examples(classifications: list, n: int) -> list:
    """A few examples for the terminal: mostly correct ones, plus a couple of mistakes when there are any."""
    right = [c for c in classifications if c.correct]
    wrong = [c for c in classifications if not c.correct]
    n_wrong = min(len(wrong), max(2, n - len(right)))
    picked = right[: n - n_wrong] + wrong[:n_wrong]
    order = {id(c): i for i, c in enumerate(classifications)}
    return sorted(picked, key=lambda c: order[id(c)])
