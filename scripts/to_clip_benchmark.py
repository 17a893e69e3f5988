"""Convert webdataset shards of ../shared/data into CLIP_benchmark's dataset layout (for tests and examples).

    python scripts/to_clip_benchmark.py ../shared/data/emoji/emoji-google-val_concepts-000000.tar \
        --out /tmp/wds_emoji_category --type classification --label-field category \
        --templates "an emoji of a {c}." "a {c} emoji."
    python scripts/to_clip_benchmark.py ../shared/data/emoji/emoji-google-val_concepts-000000.tar \
        --out /tmp/wds_emoji_names --type classification --label-field name --languages de fr ja
    python scripts/to_clip_benchmark.py ../shared/data/emoji/emoji-google-val_concepts-000000.tar \
        --out /tmp/wds_emoji_keywords --type multilabel --label-field keywords --top-classes 16
    python scripts/to_clip_benchmark.py ../shared/data/clipart/clipart-val-000000.tar \
        --out /tmp/wds_clipart --type retrieval --caption-fields caption name

Writes ``DATA/{split}/0.tar ..`` (``--shard-size`` samples each) with ``nshards.txt``, ``dataset_type.txt``,
and for classification / multilabel ``classnames.txt`` (+ ``classnames_{lang}.txt`` from the emoji json's
``names`` when the label field is ``name``) and ``zeroshot_classification_templates.txt`` (``{c}`` marks
the class name). A sample is ``<key>.webp`` (lossless, so pixels are exactly the source's; ``--image-format
png`` copies the PNG bytes) with ``<key>.cls`` (class index), ``<key>.npy`` (0/1 vector over the classes)
or ``<key>.txt`` (one caption per line, from ``--caption-fields``). Classes are the sorted distinct values
(multilabel: the ``--top-classes`` most frequent list items, ties by name); a second split written into
the same folder keeps the first one's ``classnames.txt``. The split is kept as it is in
the source (``--split`` only names the output folder), so the source's concept split still holds. Output
is deterministic (same input and Pillow, same bytes; the pixels are the source's in any case).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from kontrast.data.sources import TarSource, expand_paths

TEMPLATES = {"emoji": ["an emoji of a {c}.", "a {c} emoji."], "clipart": ["clip art of a {c}.", "a drawing of a {c}."]}


def read_samples(shards: list[str], limit: int | None) -> list[dict]:
    """``{"key", "png", "meta"}`` of every sample with an image (source order), at most ``limit``."""
    out = []
    for record in TarSource(expand_paths(shards)):
        if record.data is None:
            continue
        out.append({"key": record.key, "png": record.data, "meta": record.meta})
        if limit and len(out) >= limit:
            break
    return out


def image_member(png: bytes, image_format: str) -> tuple[str, bytes]:
    if image_format == "png":
        return "png", png
    with Image.open(io.BytesIO(png)) as img:
        buf = io.BytesIO()
        img.save(buf, format="WEBP", lossless=True, quality=100, method=4)
    return "webp", buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _field_values(meta: dict, field: str) -> list[str]:
    value = meta.get(field)
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _npy(vector: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, vector, allow_pickle=False)
    return buf.getvalue()


def convert(args: argparse.Namespace) -> Path:
    samples = read_samples(args.shards, args.limit)
    if not samples:
        sys.exit(f"no samples with an image in {' '.join(args.shards)}")
    out = Path(args.out)
    (out / args.split).mkdir(parents=True, exist_ok=True)
    classes: list[str] = []
    if args.type == "classification":
        classes = sorted({v for s in samples for v in _field_values(s["meta"], args.label_field)[:1]})
    elif args.type == "multilabel":
        counts = Counter(v for s in samples for v in set(_field_values(s["meta"], args.label_field)))
        classes = sorted(sorted(counts, key=lambda c: (-counts[c], c))[: args.top_classes])
    existing = out / "classnames.txt"
    if classes and existing.is_file():  # another split of the same dataset: keep its class indices
        known = existing.read_text(encoding="utf-8").splitlines()
        new = [c for c in classes if c not in known]
        if new and args.type == "classification":
            sys.exit(f"{existing} has no class {new[0]!r} of this split; convert the splits into separate folders")
        classes = known
    members = []
    for i, sample in enumerate(samples):
        key = f"s{i:06d}"
        values = _field_values(sample["meta"], args.label_field) if args.type != "retrieval" else []
        if args.type == "classification":
            if not values:
                continue
            label = (f"{key}.cls", str(classes.index(values[0])).encode())
        elif args.type == "multilabel":
            vector = np.zeros(len(classes), dtype=np.int64)
            vector[[classes.index(v) for v in values if v in classes]] = 1
            label = (f"{key}.npy", _npy(vector))
        else:
            lines = [line for f in args.caption_fields for line in _field_values(sample["meta"], f)]
            label = (f"{key}.txt", "\n".join(lines).encode("utf-8"))
        ext, data = image_member(sample["png"], args.image_format)
        members.append([(f"{key}.{ext}", data), label])
    nshards = (len(members) + args.shard_size - 1) // args.shard_size
    for shard in range(nshards):
        with tarfile.open(out / args.split / f"{shard}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for sample_members in members[shard * args.shard_size : (shard + 1) * args.shard_size]:
                for name, data in sample_members:
                    _add(tar, name, data)
    (out / args.split / "nshards.txt").write_text(f"{nshards}\n", encoding="utf-8")
    (out / "dataset_type.txt").write_text(f"{args.type}\n", encoding="utf-8")
    if classes:
        (out / "classnames.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
        source = Path(args.shards[0]).name
        templates = args.templates or TEMPLATES["clipart" if "clipart" in source else "emoji"]
        (out / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in templates), encoding="utf-8")
        for lang in args.languages:
            names = {}
            for sample in samples:
                name = sample["meta"].get(args.label_field)
                names.setdefault(name, (sample["meta"].get("names") or {}).get(lang))
            missing = [c for c in classes if not names.get(c)]
            if missing:
                sys.exit(f"no '{lang}' name for class {missing[0]!r} (the json field 'names' has none)")
            (out / f"classnames_{lang}.txt").write_text("".join(f"{names[c]}\n" for c in classes), encoding="utf-8")
    print(json.dumps({"out": str(out), "split": args.split, "samples": len(members), "shards": nshards,
                      "classes": len(classes), "type": args.type}))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shards", nargs="+", help="source .tar shards (paths, globs, {000..009} patterns)")
    p.add_argument("--out", required=True, help="the dataset folder to write")
    p.add_argument("--type", default="classification", choices=["classification", "multilabel", "retrieval"])
    p.add_argument("--split", default="test", help="name of the split folder (default: test, CLIP_benchmark's)")
    p.add_argument("--label-field", default="name", help="json field with the class (multilabel: a list field)")
    p.add_argument("--top-classes", type=int, default=16, help="multilabel: the most frequent values become classes")
    p.add_argument("--caption-fields", nargs="+", default=["caption"], help="retrieval: json fields, one caption line each")
    p.add_argument("--templates", nargs="+", help="zero-shot templates with {c} (default: emoji / clip-art prompts)")
    p.add_argument("--languages", nargs="*", default=[], help="also write classnames_{lang}.txt (label field name)")
    p.add_argument("--limit", type=int, help="only the first N samples")
    p.add_argument("--shard-size", type=int, default=10_000, help="samples per .tar")
    p.add_argument("--image-format", default="webp", choices=["webp", "png"])
    convert(p.parse_args(argv))


if __name__ == "__main__":
    main()
