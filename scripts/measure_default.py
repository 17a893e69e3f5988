"""Measure a model on the developer splits: zero-shot emoji classification and clip-art retrieval.

    python scripts/measure_default.py [MODEL_OR_CHECKPOINT] [--data ../shared/data]

Zero-shot: classes are the ``name`` field of each emoji json in the split (one class per distinct name),
prompt ``"an emoji of {name}"``; top-1/top-5 accuracy over the split's images (eval preprocessing).
OpenMoji ``val_style`` (an art style never trained on) is also reported per ``concept_split``: ``seen`` images show
concepts the training rules allow (``train``), ``unseen`` ones held-out concepts (``test``); both over all classes.
``in_record``: the ``seen`` images whose concept the model's training record lists (embedded models carry one;
406 of OpenMoji's 1,945 ``train`` images are OpenMoji-only extras that no other emoji style draws).
Retrieval: text->image recall@1/5 on clip-art ``val`` (a hit if the retrieved image has the query's caption).
Demo: ``kontrast demo``'s zero-shot top-1/top-5 over its labels (32 bundled held-out images).
MODEL may also be a training checkpoint (``runs/.../checkpoints/step_*.pt``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def load_any(spec: str):
    import kontrast
    from kontrast.api import _finish

    if spec.endswith(".pt") and Path(spec).is_file():
        from kontrast.models import model_for_record
        from kontrast.record import ModelRecord
        from kontrast.train.checkpoint import load_checkpoint

        state = load_checkpoint(spec)
        model = model_for_record(ModelRecord.from_dict(state["model_record"], spec))
        model.load_state_dict(state["model"], strict=False)
        return _finish(model, "fp32", "cpu")
    return kontrast.load(spec)


def records(pattern: str):
    from kontrast.data.stream import load_records

    return [r for r in load_records(pattern) if r.data is not None]


@torch.no_grad()
def image_features(model, preprocess, recs, batch: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(recs), batch):
        x = torch.stack([preprocess(r.data) for r in recs[i: i + batch]])
        out.append(model.encode_image(x, normalize=True))
    return torch.cat(out)


@torch.no_grad()
def text_features(model, tokenizer, texts: list[str], batch: int = 256) -> torch.Tensor:
    return torch.cat([model.encode_text(tokenizer(texts[i: i + batch]), normalize=True) for i in range(0, len(texts), batch)])


def zero_shot(model, preprocess, tokenizer, pattern: str, template: str = "an emoji of {}",
              by_split: bool = False, record_concepts: set[str] | None = None) -> dict[str, float]:
    """Top-1/top-5 over all the split's class names; with ``by_split`` also per ``concept_split`` of the images
    (``train``: a concept the training rules allow, ``test``: a held-out concept), still over all classes, and,
    given the concepts of the model's training record, over the ``train`` images whose concept is in it
    (``in_record``: OpenMoji's own extra emoji are ``train`` by the split, but no other style draws them)."""
    recs = records(pattern)
    names = [r.meta["name"] for r in recs]
    classes = sorted(set(names))
    txt = text_features(model, tokenizer, [template.format(c) for c in classes])
    img = image_features(model, preprocess, recs)
    top = (img @ txt.T).topk(5, dim=1).indices  # [N, 5]
    target = torch.tensor([classes.index(n) for n in names])
    hit1, hit5 = top[:, 0] == target, (top == target[:, None]).any(1)
    out = {"top1": float(hit1.float().mean()), "top5": float(hit5.float().mean()), "n": len(recs), "classes": len(classes)}
    if by_split:
        for split, label in (("train", "seen"), ("test", "unseen")):
            mask = torch.tensor([r.meta.get("concept_split") == split for r in recs])
            out |= {f"{label}_top1": float(hit1[mask].float().mean()), f"{label}_top5": float(hit5[mask].float().mean()),
                    f"{label}_n": int(mask.sum())}
        if record_concepts:
            mask = torch.tensor([r.meta.get("concept_split") == "train" and r.meta.get("concept") in record_concepts
                                 for r in recs])
            out |= {"in_record_top1": float(hit1[mask].float().mean()),
                    "in_record_top5": float(hit5[mask].float().mean()), "in_record_n": int(mask.sum())}
    return out


def demo_top1(model, preprocess, tokenizer) -> dict[str, float]:
    """``kontrast demo``'s zero-shot top-1/top-5 over its labels (the bundled 32 images)."""
    from kontrast.demo import build_report

    report = build_report(model, preprocess, tokenizer, "measured")
    return {"top1": report.top1, "top5": report.top5, "n": len(report.classifications)}


def retrieval(model, preprocess, tokenizer, pattern: str) -> dict[str, float]:
    recs = [r for r in records(pattern) if r.caption]
    caps = [r.caption for r in recs]
    img = image_features(model, preprocess, recs)
    queries = sorted(set(caps))
    txt = text_features(model, tokenizer, queries)
    top = (txt @ img.T).topk(5, dim=1).indices  # [Q, 5]
    hits = torch.tensor([[caps[j] == q for j in row] for q, row in zip(queries, top.tolist())])  # [Q, 5]
    return {"r1": float(hits[:, 0].float().mean()), "r5": float(hits.any(1).float().mean()), "queries": len(queries)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="default")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--quick", action="store_true", help="google val_concepts and clip-art val only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the machine is shared; one thread avoids OpenMP stalls under contention
    model, preprocess, tokenizer = load_any(args.model)
    d = Path(args.data)
    results = {}
    splits = [("google/val_concepts", d / "emoji/emoji-google-val_concepts-000000.tar")]
    if not args.quick:
        splits += [("twitter/val_concepts", d / "emoji/emoji-twitter-val_concepts-000000.tar"),
                   ("openmoji/val_style", d / "emoji/emoji-openmoji-val_style-000000.tar")]
    from kontrast.demo import training_record

    concepts = set((training_record(model) or {}).get("concepts", ()))
    for name, path in splits:
        results[name] = zero_shot(model, preprocess, tokenizer, str(path), by_split=name.startswith("openmoji"),
                                  record_concepts=concepts)
    results["clipart/val t2i"] = retrieval(model, preprocess, tokenizer, str(d / "clipart/clipart-val-000000.tar"))
    results["demo"] = demo_top1(model, preprocess, tokenizer)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, r in results.items():
            print(f"{name:24s} " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
