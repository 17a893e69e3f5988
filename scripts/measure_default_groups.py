"""Where a model's OpenMoji errors are: zero-shot top-1 per emoji category on OpenMoji ``val_style`` (over all
2,449 classes, concepts seen in training only) and on the google *train* images it was trained on.

    python scripts/measure_default_groups.py [MODEL_OR_CHECKPOINT] [--data ../shared/data]

Prints a Markdown table: category, images, top-1 on OpenMoji (seen concepts), top-1 on the google train split.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_default import REPO, image_features, load_any, records, text_features


def per_category(model, preprocess, tokenizer, pattern: str, only_seen: bool) -> dict[str, tuple[int, int]]:
    """``category -> (correct, images)`` of top-1 over all the split's names."""
    recs = [r for r in records(pattern) if not only_seen or r.meta.get("concept_split") == "train"]
    classes = sorted({r.meta["name"] for r in records(pattern)})
    txt = text_features(model, tokenizer, [f"an emoji of {c}" for c in classes])
    top = (image_features(model, preprocess, recs) @ txt.T).argmax(1).tolist()
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r, k in zip(recs, top):
        cell = out[r.meta.get("category") or "?"]
        cell[0] += classes[k] == r.meta["name"]
        cell[1] += 1
    return {k: (a, b) for k, (a, b) in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="default")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, preprocess, tokenizer = load_any(args.model)
    emoji = Path(args.data) / "emoji"
    om = per_category(model, preprocess, tokenizer, str(emoji / "emoji-openmoji-val_style-000000.tar"), True)
    gt = per_category(model, preprocess, tokenizer, str(emoji / "emoji-google-train-000000.tar"), False)
    print("| category | OpenMoji seen images | OpenMoji top-1 | google train images | google train top-1 |")
    print("|---|---:|---:|---:|---:|")
    for cat in sorted(om, key=lambda c: -om[c][1]):
        a, b = om[cat]
        c, d = gt.get(cat, (0, 0))
        print(f"| {cat} | {b} | {a / b:.1%} | {d} | {c / max(d, 1):.1%} |")
    a, b = (sum(v[i] for v in om.values()) for i in (0, 1))
    c, d = (sum(v[i] for v in gt.values()) for i in (0, 1))
    print(f"| all | {b} | {a / b:.1%} | {d} | {c / d:.1%} |")


if __name__ == "__main__":
    main()
