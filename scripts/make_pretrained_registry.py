"""Regenerate ``src/kontrast/checkpoints/pretrained_registry.json`` from the real open_clip's pretrained list.

Run it in an environment with open_clip installed (here: ``/work/peers/bin/python scripts/make_pretrained_registry.py``).
For every (architecture, tag) pair of ``open_clip.list_pretrained()`` it writes one entry: the Hugging Face
repository (``get_pretrained_cfg(...)["hf_hub"]``), the weight files to look for, QuickGELU, the image
preprocessing where it differs from OpenAI's (mean/std, interpolation, resize mode) and the model family
(``kontrast.families.family_of_config`` of the architecture's open_clip config). open_clip's ``-quickgelu``
aliases are not separate entries: they are the entries with ``quick_gelu: true``
(``kontrast.checkpoints.hub.list_pretrained`` lists them). Fields an existing entry has that open_clip
does not know (``original``, ``sha256``, ``revision``) are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kontrast.families import family_of_config

REGISTRY = ROOT / "src" / "kontrast" / "checkpoints" / "pretrained_registry.json"
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
OPEN_CLIP_WEIGHTS = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
KEPT_FIELDS = ("original", "sha256", "revision")


def import_open_clip():
    """open_clip, declaring torchvision's two fake-registered ops when its C extension cannot load."""
    try:
        import open_clip

        return open_clip
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    for name in [m for m in sys.modules if m.startswith(("torchvision", "open_clip"))]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import_open_clip.lib = lib  # keep the definitions alive
    import open_clip

    return open_clip


def entry_for(open_clip, arch: str, tag: str) -> dict:
    """One registry entry from open_clip's pretrained config and model config."""
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    hub = cfg["hf_hub"].strip("/")
    parts = hub.split("/")
    repo, weights = "/".join(parts[:2]), OPEN_CLIP_WEIGHTS
    if len(parts) > 2:  # a file named in the hub path (ViTamin): that file only, no open_clip config
        weights = ["/".join(parts[2:])]
    entry = {"architecture": arch, "tag": tag, "hf_repo": repo, "format": "open_clip", "weights": weights}
    if len(parts) == 2:
        entry["config"] = "open_clip_config.json"
    entry["quick_gelu"] = bool(cfg.get("quick_gelu", False))
    entry["family"] = family_of_config(open_clip.get_model_config(arch))
    if arch.startswith("MobileCLIP"):  # MobileCLIP2-L-14's trunk is a plain timm ViT: only the name tells
        entry["family"] = "MobileCLIP"
    if cfg.get("mean") and list(cfg["mean"]) != OPENAI_MEAN or cfg.get("std") and list(cfg["std"]) != OPENAI_STD:
        entry["mean"], entry["std"] = list(cfg["mean"]), list(cfg["std"])
    if cfg.get("interpolation", "bicubic") != "bicubic":
        entry["interpolation"] = cfg["interpolation"]
    if cfg.get("resize_mode", "shortest") != "shortest":
        entry["resize_mode"] = cfg["resize_mode"]
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REGISTRY)
    args = parser.parse_args(argv)
    open_clip = import_open_clip()
    old = json.loads(REGISTRY.read_text(encoding="utf-8"))
    kept = {(e["architecture"], e["tag"]): e for e in old["pretrained"]}
    entries = []
    for arch, tag in open_clip.list_pretrained():
        if arch.endswith("-quickgelu"):
            base = open_clip.get_pretrained_cfg(arch[: -len("-quickgelu")], tag)
            if not base or not base.get("quick_gelu"):
                raise SystemExit(f"{arch}/{tag}: a -quickgelu alias whose base entry is not QuickGELU")
            continue
        entry = entry_for(open_clip, arch, tag)
        for field in KEPT_FIELDS:
            if field in kept.get((arch, tag), {}):
                entry[field] = kept[(arch, tag)][field]
        entries.append(entry)
    about = [line for line in old["_about"] if not line.startswith(("family:", "interpolation/resize_mode:"))]
    about += [
        "family: the model family (kontrast.families); pairs of unimplemented families are listed to be refused by family.",
        "interpolation/resize_mode: image preprocessing when it differs from bicubic + shortest-side resize.",
    ]
    out = {"_about": about, "pretrained": entries, "hf_repos": old["hf_repos"]}
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(entries)} entries (+ {sum(e['quick_gelu'] for e in entries)} -quickgelu aliases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
