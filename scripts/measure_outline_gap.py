"""How much outlines alone move a model: zero-shot top-1 on the google emoji *train* images (a style and concepts
the default models trained on), as they are and with synthetic dark outlines drawn along their colour edges
(:func:`kontrast.data.outline.draw_outlines`, the ``aug_outline`` augmentation at fixed settings), beside OpenMoji
``val_style`` (seen concepts), the unseen style that outlines every shape. Classes: all 2,449 OpenMoji names.

    python scripts/measure_outline_gap.py [MODEL_OR_CHECKPOINT ...] [--data ../shared/data]

Prints a Markdown table, one row per model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_default import REPO, load_any, records, text_features

from kontrast.data.outline import draw_outlines

SETTINGS = [(0.15, 2), (0.25, 2), (0.25, 1)]  # (gradient threshold, stroke width in input pixels)


@torch.no_grad()
def top1(model, pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, txt: torch.Tensor, target: torch.Tensor,
         batch: int = 256) -> float:
    """Top-1 of ``pixels`` ``[N, 3, S, S]`` in [0, 1] against class features ``txt``."""
    feats = torch.cat([model.encode_image((pixels[i: i + batch] - mean) / std, normalize=True)
                       for i in range(0, len(pixels), batch)])
    return float(((feats @ txt.T).argmax(1) == target).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["default"])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    emoji = Path(args.data) / "emoji"
    openmoji = records(str(emoji / "emoji-openmoji-val_style-000000.tar"))
    google = records(str(emoji / "emoji-google-train-000000.tar"))
    classes = sorted({r.meta["name"] for r in openmoji})
    seen = [r for r in openmoji if r.meta.get("concept_split") == "train"]
    head = " | ".join(f"google train, outlines t={t} w={w}" for t, w in SETTINGS)
    print(f"| model | google train | {head} | OpenMoji seen |")
    print("|---|" + "---:|" * (len(SETTINGS) + 2))
    for spec in args.models:
        model, preprocess, tokenizer = load_any(spec)
        mean = torch.tensor(model.record.preprocess.mean).view(1, 3, 1, 1)  # [3] -> [1, 3, 1, 1]
        std = torch.tensor(model.record.preprocess.std).view(1, 3, 1, 1)
        txt = text_features(model, tokenizer, [f"an emoji of {c}" for c in classes])

        g = torch.stack([preprocess(r.data) for r in google]) * std + mean  # [N, 3, S, S] in [0, 1]
        om = torch.stack([preprocess(r.data) for r in seen]) * std + mean
        g_target = torch.tensor([classes.index(r.meta["name"]) for r in google])
        om_target = torch.tensor([classes.index(r.meta["name"]) for r in seen])
        cells = [top1(model, g, mean, std, txt, g_target)]
        cells += [top1(model, draw_outlines(g, t, w), mean, std, txt, g_target) for t, w in SETTINGS]
        cells.append(top1(model, om, mean, std, txt, om_target))
        print(f"| {spec} | " + " | ".join(f"{c:.1%}" for c in cells) + " |")


if __name__ == "__main__":
    main()
