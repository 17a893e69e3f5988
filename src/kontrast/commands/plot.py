"""``kontrast plot RUN_DIR [--out FILE.png]``: training curves (loss, lr, logit scale, speed, val metrics)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("plot", help="draw a training run's curves (metrics.jsonl) to a PNG",
                              description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="run directory written by 'kontrast train'")
    p.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.plot import plot_run

    out = plot_run(args.run_dir, args.out)
    print(f"wrote {out}")
    return 0
