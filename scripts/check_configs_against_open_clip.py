"""Check kontrast's architecture configs against the real open_clip, on random weights.

Run with open_clip installed (here: ``/work/peers/bin/python scripts/check_configs_against_open_clip.py``).
For each architecture (default: every kontrast config that open_clip also has) it

1. builds both models at full size on the meta device and compares parameter count, state-dict keys and
   shapes, and the image tower's attention heads and MLP hidden size (head widths 80/88/104/112 and the
   4.3637 / 4.9231 / 8.5715 MLP ratios are where a config goes wrong);
2. builds open_clip's model at the real width and image size but ``--layers`` blocks per transformer tower
   (default 2, so ViT-bigG-14's 2.5B parameters never sit in memory twice; ConvNeXt trunks are built whole), re-initialises every tensor from a seeded
   generator, loads that state dict into kontrast and compares image features, text features and logits.

It prints one line per architecture and exits 1 if any differs beyond the fixtures' tolerances
(features 1e-4, logits 2e-3). Only one model pair is alive at a time.
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from make_pretrained_registry import import_open_clip

import kontrast
from kontrast.api import load_weights
from kontrast.config import ModelConfig

FEATURE_TOL, LOGIT_TOL = 1e-4, 2e-3


def shape_digest(sd: dict[str, torch.Tensor]) -> str:
    """sha256 of the sorted ``key:shape`` lines of a state dict (what "same layout" means)."""
    lines = "".join(f"{k}:{tuple(v.shape)}\n" for k, v in sorted(sd.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def vision_blocks(model: torch.nn.Module) -> tuple[int | None, int | None]:
    """(heads, MLP hidden size) of the first image-tower block of an open_clip or kontrast ViT, else None."""
    blocks = getattr(getattr(model.visual, "transformer", None), "resblocks", None)
    if blocks is None:
        return None, None
    block = blocks[0]
    heads = getattr(block.attn, "num_heads", None) or getattr(block.attn, "heads", None)
    return heads, block.mlp.c_fc.weight.shape[0]


def reduced(cfg: dict, layers: int) -> dict:
    """open_clip config with ``layers`` blocks per transformer tower (ConvNeXt trunks keep their stages)."""
    cfg = copy.deepcopy(cfg)
    for tower in ("vision_cfg", "text_cfg"):
        if isinstance(cfg[tower].get("layers"), int):
            cfg[tower]["layers"] = min(cfg[tower]["layers"], layers)
    return cfg


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every float tensor (weights, biases, norms, BatchNorm statistics, layer scale) from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name == "logit_scale":
                t.fill_(3.5)
            elif name.endswith("running_var"):  # BatchNorm variances must stay positive
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif t.ndim == 1 and ("norm" in name or "ln" in name or name.endswith("gamma")):
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=gen))
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * min(0.05, t.shape[-1] ** -0.5))


def check(open_clip, name: str, layers: int) -> bool:
    cfg = open_clip.get_model_config(name)
    quick = bool(cfg.get("quick_gelu", False))
    with torch.device("meta"):  # full size, no memory: layout and heads
        ref = open_clip.create_model(name, device="meta")
        ours = kontrast.create_model(name)
    same_layout = shape_digest(ref.state_dict()) == shape_digest(ours.state_dict())
    n_ref, n_ours = (sum(p.numel() for p in m.parameters()) for m in (ref, ours))
    blocks_ref, blocks_ours = vision_blocks(ref), vision_blocks(ours)
    del ref, ours

    small = reduced(cfg, layers)
    ref = open_clip.model.CLIP(**{k: v for k, v in small.items() if k != "quick_gelu"}, quick_gelu=quick).eval()
    randomise(ref, seed=sum(map(ord, name)))
    ours_cfg = ModelConfig.from_dict(reduced(kontrast.get_model_config(name).to_dict(), layers))
    ours = kontrast.create_model(ours_cfg).eval()
    load_weights(ours, ref.state_dict(), source=f"open_clip {name}")
    size = ours.image_size
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, size, size, generator=gen)
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat", "two dogs on a beach at sunset"])
    with torch.no_grad():
        a = (ref.encode_image(pixels), ref.encode_text(tokens), ref.get_logits(pixels, tokens)[0])
        b = (ours.encode_image(pixels), ours.encode_text(tokens), ours.get_logits(pixels, tokens)[0])
    diffs = [float((x - y).abs().max()) for x, y in zip(a, b)]
    ok = same_layout and n_ref == n_ours and blocks_ref == blocks_ours
    ok = ok and diffs[0] <= FEATURE_TOL and diffs[1] <= FEATURE_TOL and diffs[2] <= LOGIT_TOL
    print(
        f"{'ok  ' if ok else 'FAIL'} {name:<22} params {n_ours:>13,} (open_clip {n_ref:,}) layout "
        f"{'same' if same_layout else 'DIFFERENT'}; image heads/MLP {blocks_ours} (open_clip {blocks_ref}); "
        f"{layers}-layer towers at {size}px: image {diffs[0]:.2e} text {diffs[1]:.2e} logits {diffs[2]:.2e}",
        flush=True,
    )
    del ref, ours
    gc.collect()
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="architectures (default: every kontrast config open_clip has)")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks per tower in the output check")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    open_clip = import_open_clip()
    names = args.names or [n for n in kontrast.list_models() if open_clip.get_model_config(n) is not None]
    results = [check(open_clip, n, args.layers) for n in names]
    print(f"{sum(results)}/{len(results)} architectures match open_clip")
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
