"""Benchmark: one contrastive training step (forward, loss, backward, clip, AdamW), kontrast beside open_clip.

Run:  python benchmarks/train.py [--batch 64] [--steps 10] [--precision auto|bf16|fp32] [--threads 1]
      /work/peers/bin/python benchmarks/train.py ...   # an environment where ``import open_clip`` works

Config (the same for both): embed 256; image tower ViT 64 px, patch 8, width 192, 4 layers, head width 64;
text tower 4 layers, width 256, 4 heads, 77 tokens. Inputs: random pixels and real emoji captions
(``../shared/data/emoji_sample``), one fixed batch so that only the step is timed. Each library runs in its
own subprocess (peak memory is per process): samples/s is the median over ``--steps`` timed steps after 2
warm-up steps; peak memory is ``ru_maxrss`` at the end (whole process) and its growth over the steps.
kontrast's step is ``Trainer.train_step`` (the real loop code: tokenisation, encoders, loss, gradient
clipping, AdamW, temperature clamp). open_clip's is ``open_clip.CLIP`` + ``open_clip.ClipLoss`` with the same
AdamW groups, autocast and clipping. Without open_clip the table says it was skipped and why.
``--precision auto`` (the default, as in a recipe) is resolved once by ``kontrast.cpu.train_precision``: bf16
autocast where the CPU has native bf16, fp32 elsewhere; both libraries then run that precision. The CPU's
instruction sets (and any ISA switch such as ``ONEDNN_MAX_CPU_ISA``) are printed above the table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "emoji_sample" / "captions.csv"
VISION = {"image_size": 64, "patch_size": 8, "width": 192, "layers": 4, "head_width": 64}
TEXT = {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4}
EMBED = 256


def _captions(n: int) -> list[str]:
    import csv

    with DATA.open(newline="", encoding="utf-8") as f:
        rows = [r["caption"] for r in csv.DictReader(f)]
    return [rows[i % len(rows)] for i in range(n)]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _time_steps(step, steps: int) -> tuple[list[float], float]:
    for _ in range(2):
        step()
    before = _rss_mb()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times, before


def run_kontrast(args: argparse.Namespace) -> dict:
    from kontrast.train.config import TrainConfig
    from kontrast.train.loop import Trainer

    cfg = TrainConfig(model_config={"embed_dim": EMBED, "vision_cfg": VISION, "text_cfg": TEXT}, train_data=str(DATA),
                      batch_size=args.batch, steps=1, precision=args.precision, threads=args.threads, lr=5e-4,
                      warmup=0, tensorboard=False, output="/tmp/kontrast-bench-train")
    trainer = Trainer(cfg)
    images = torch.randn(args.batch, 3, 64, 64)
    captions = _captions(args.batch)
    times, before = _time_steps(lambda: trainer.train_step(images, captions), args.steps)
    return {"times": times, "rss_before_mb": before, "rss_peak_mb": _rss_mb()}


def import_open_clip():
    """``(module, note)``: benchmarks/encode.py's importer (it works around a missing torchvision C extension)."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from encode import import_open_clip as importer
    except ImportError:
        importer = None
    if importer is not None:
        return importer()
    try:
        import open_clip

        return open_clip, ""
    except Exception as exc:  # noqa: BLE001
        return None, f"open_clip not importable ({type(exc).__name__}: {exc})"


def run_open_clip(args: argparse.Namespace) -> dict:
    open_clip, note = import_open_clip()
    if open_clip is None:
        return {"skipped": note}
    from kontrast.train.optim import param_groups

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = open_clip.CLIP(EMBED, vision_cfg=dict(VISION), text_cfg=dict(TEXT))
    model.train()
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    images = torch.randn(args.batch, 3, 64, 64)
    captions = _captions(args.batch)

    def step() -> None:
        ids = tokenizer(captions)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            img, txt, scale = model(images, ids)
            loss = loss_fn(img, txt, scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)

    times, before = _time_steps(step, args.steps)
    return {"times": times, "rss_before_mb": before, "rss_peak_mb": _rss_mb(), "note": note,
            "version": getattr(open_clip, "__version__", "?")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", choices=["kontrast", "open_clip"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        out = run_kontrast(args) if args.worker == "kontrast" else run_open_clip(args)
        print(json.dumps(out))
        return 0
    from kontrast.cpu import cpu_model, isa_label, train_precision

    requested = args.precision
    args.precision = train_precision(requested, torch.device("cpu"))
    flags = ["--batch", str(args.batch), "--steps", str(args.steps), "--precision", args.precision, "--threads", str(args.threads)]
    print(f"training step, batch {args.batch}, {args.precision} (requested {requested}), {args.threads} thread(s), "
          f"median of {args.steps} steps")
    print(f"CPU: {cpu_model()}, {isa_label()}")
    print(f"{'library':10s} {'samples/s':>10s} {'step ms':>8s} {'peak RSS MB':>12s} {'growth MB':>10s}")
    for name in ("kontrast", "open_clip"):
        proc = subprocess.run([sys.executable, __file__, "--worker", name, *flags], check=False, capture_output=True,
                              text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode or not lines:
            print(f"{name:10s} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        r = json.loads(lines[-1])
        if "skipped" in r:
            print(f"{name:10s} skipped: {r['skipped']}")
            continue
        med = statistics.median(r["times"])
        print(f"{name:10s} {args.batch / med:10.1f} {med * 1000:8.1f} {r['rss_peak_mb']:12.0f} "
              f"{r['rss_peak_mb'] - r['rss_before_mb']:10.0f}" + (f"  ({r['note']})" if r.get("note") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
