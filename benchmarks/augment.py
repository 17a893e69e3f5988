"""Cost of the cached pipeline's batch augmentation (``data_mode: cached``), with and without outlines.

    python benchmarks/augment.py [--batch 128] [--repeats 10] [--threads 1]

One batch of ``--batch`` uint8 pictures at the cache side (72 px) -> 64 px model input, as the default-model recipes
run it (crop area 0.5-1.3, jitter 0.3, grey 0.05), with ``aug_outline`` 0, 0.5 and 1, and for comparison the
outline filter run on the whole batch and then selected (what :func:`kontrast.data.outline.random_outlines` did
before it filtered only the pictures drawn for). Prints ms per batch next to the CPU's flags.
"""

from __future__ import annotations

import argparse
import time

import torch

from kontrast.cpu import cpu_flags, cpu_model
from kontrast.data import outline
from kontrast.train.cached_data import BatchAugment

HALF = (0.5, 0.5, 0.5)


def whole_batch_outlines(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """The earlier form: the same draws, the filter on every picture, then a per-picture choice."""
    n = x.shape[0]
    apply = torch.rand(n, generator=g) < p
    t = torch.empty(n).uniform_(0.15, 0.3, generator=g)
    width = 1 + (torch.rand(n, generator=g) < 0.5).long()
    d = torch.empty(n).uniform_(0.8, 1.0, generator=g)
    return torch.where(apply.view(n, 1, 1, 1), outline.draw_outlines(x, t, width, d), x)  # [n] -> [n, 1, 1, 1]


def ms_per_call(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images = torch.randint(0, 256, (args.batch, 72, 72, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    flips = torch.ones(args.batch, dtype=torch.bool)
    flags = sorted(f for f in cpu_flags() if f in {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"})
    print(f"CPU: {cpu_model()}; flags: {' '.join(flags)}; torch {torch.__version__}; threads {args.threads}, "
          f"batch {args.batch}")
    print("| work | ms per batch |\n|---|---:|")
    g = torch.Generator().manual_seed(0)
    for p in (0.0, 0.5, 1.0):
        aug = BatchAugment(64, HALF, HALF, (0.5, 1.3), jitter=0.3, grayscale=0.05, outline=p)
        print(f"| whole batch augmentation, aug_outline {p} | {ms_per_call(lambda a=aug: a(images, flips, g), args.repeats):.1f} |")
    pixels = torch.rand(args.batch, 3, 64, 64, generator=torch.Generator().manual_seed(2))  # [n, 3, 64, 64] in [0, 1]
    now = ms_per_call(lambda: outline.random_outlines(pixels, 0.5, g), args.repeats)
    before = ms_per_call(lambda: whole_batch_outlines(pixels, 0.5, g), args.repeats)
    print(f"| outline filter alone, p 0.5, drawn pictures only | {now:.1f} |")
    print(f"| outline filter alone, p 0.5, whole batch then chosen (earlier form) | {before:.1f} |")

if __name__ == "__main__":
    main()
