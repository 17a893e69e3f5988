"""Training-step throughput of the default model's image tower in fp32 and bf16 autocast, 1 and 2 threads.

    python benchmarks/default_model_step.py [--specs 192,4,fp32,1 lite0@64,fp32,2 ...] [--steps 4] [--batch 256]

Each spec is ``width,layers,precision,threads`` (ViT, 64 px, patch 8, embed 256; the first two generations) or
``liteN@SIZE,precision,threads`` (EfficientNet-Lite N at SIZE px, the third): one forward + backward +
AdamW step of the image tower on a batch against fixed unit text features (the locked text tower is cached in
training, so the image tower is the step's cost). Prints samples/s next to the CPU's flags; on a shared machine
compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from kontrast.config import ModelConfig
from kontrast.cpu import cpu_flags, cpu_model
from kontrast.models import CLIP


def step_rate(tower: str, precision: str, threads: int, steps: int, batch: int) -> float:
    """Samples per second of ``steps`` training steps (after one warm-up step) of ``tower`` ("192,4" or "lite0@64")."""
    torch.set_num_threads(threads)
    text_cfg = {"context_length": 16, "vocab_size": 100, "width": 64, "heads": 1, "layers": 1}
    if tower.startswith("lite"):
        name, size = tower.split("@")
        vision = {"timm_model_name": f"tf_efficientnet_{name}", "timm_pool": "avg", "image_size": int(size)}
    else:
        width, layers = tower.split(",")
        size, vision = 64, {"image_size": 64, "patch_size": 8, "width": int(width), "layers": int(layers),
                            "head_width": 64}
    visual = CLIP(ModelConfig.from_dict({"embed_dim": 256, "vision_cfg": vision, "text_cfg": text_cfg})).visual
    opt = torch.optim.AdamW(visual.parameters(), 1e-4)
    x = torch.randn(batch, 3, int(size), int(size))
    text = F.normalize(torch.randn(batch, 256), dim=-1)
    t0 = time.perf_counter()
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            feats = visual(x)
        feats = F.normalize(feats.float(), dim=-1)
        loss = F.cross_entropy(20 * feats @ text.T, torch.arange(batch))
        loss.backward()
        opt.step()
        opt.zero_grad()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", nargs="+", default=["192,4,fp32,1", "192,4,bf16,1", "192,4,fp32,2", "192,4,bf16,2"])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    flags = sorted(f for f in cpu_flags() if f in {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"})
    print(f"CPU: {cpu_model()}; flags: {' '.join(flags)}; torch {torch.__version__}")
    print(f"batch {args.batch}\n| image tower | precision | threads | samples/s |\n|---|---|---:|---:|")
    for spec in args.specs:
        tower, prec, th = spec.rsplit(",", 2)
        label = (f"EfficientNet-Lite{tower[4]} at {tower.split('@')[1]} px" if tower.startswith("lite")
                 else "ViT width {} x {} layers, 64 px".format(*tower.split(",")))
        rate = step_rate(tower, prec, int(th), args.steps, args.batch)
        print(f"| {label} | {prec} | {th} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
