"""Generate a set of emoji prompts with CLIP guidance; print the similarity matrix; write the example page.

    python scripts/generate_examples.py                     # default model, Fourier + pixels, 5 emoji
    python scripts/generate_examples.py --model /work/shared/fixtures/openai_vit.pt --steps 30   # wiring check

For every parameterisation and prompt it optimises one image, then prints (as Markdown) the CLIP score
at the start and the end of each run and the cosine similarity of every image to every prompt: the
diagonal should win each row (an image is closest to its own prompt). Writes ``grid.png`` (rows:
parameterisations, columns: prompts), ``<first prompt>.gif`` (the optimisation of the first prompt,
first parameterisation) and ``results.json`` into ``--out-dir`` (default ``docs/generate``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import kontrast
from kontrast.commands.generate import default_out
from kontrast.generate import GenerateConfig, Prompt, encode_prompts, generate, save_gif, similarity_matrix
from kontrast.generate.params import frequency_energy

EMOJI = ["an emoji of a red heart", "an emoji of a cat face", "an emoji of a pizza", "an emoji of a tree",
         "an emoji of a car"]
# For scale: real emoji of the same concepts (CLDR names) in the OpenMoji style, which training never saw.
REFERENCE = {"an emoji of a red heart": "red heart", "an emoji of a cat face": "cat face", "an emoji of a pizza": "pizza",
             "an emoji of a tree": "deciduous tree", "an emoji of a car": "automobile"}
REFERENCE_SHARD = Path(__file__).resolve().parents[2] / "shared/data/emoji/emoji-openmoji-val_style-000000.tar"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--prompts", nargs="+", default=EMOJI)
    p.add_argument("--params", nargs="+", default=["fourier", "pixels"], choices=["fourier", "pixels"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--cutouts", type=int, default=32)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tile", type=int, default=96, help="pixels per image in grid.png")
    p.add_argument("--frame-every", type=int, default=15)
    p.add_argument("--out-dir", default="docs/generate")
    p.add_argument("--reference-shard", default=str(REFERENCE_SHARD),
                   help="emoji shard with real images of the default prompts (their similarities are printed)")
    return p.parse_args(argv)


def make_grid(rows: list[list[Image.Image]], row_labels: list[str], col_labels: list[str], tile: int) -> Image.Image:
    """Images in a table with a label column on the left and prompt captions below each column."""
    label_w, caption_h, pad = 64, 28, 4
    width = label_w + len(col_labels) * (tile + pad)
    height = len(rows) * (tile + pad) + caption_h
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(zip(row_labels, rows)):
        y = r * (tile + pad)
        draw.text((4, y + tile // 2 - 6), label, fill="black")
        for c, img in enumerate(images):
            grid.paste(img.resize((tile, tile), Image.LANCZOS), (label_w + c * (tile + pad), y))
    y = len(rows) * (tile + pad)
    for c, text in enumerate(col_labels):
        words = text.replace("an emoji of a ", "").replace("an emoji of ", "")
        draw.text((label_w + c * (tile + pad) + 2, y + 4), words[:16], fill="black")
    return grid


def reference_images(shard: str, names: list[str], size: int) -> torch.Tensor | None:
    """Real emoji whose json ``name`` is in ``names`` (in that order) as ``[N, 3, size, size]`` in [0, 1]."""
    import io
    import tarfile

    from kontrast.generate import load_init_image

    found: dict[str, Image.Image] = {}
    try:
        with tarfile.open(shard) as tf:
            members = {m.name: m for m in tf.getmembers()}
            for name, member in members.items():
                if name.endswith(".json"):
                    meta = json.load(tf.extractfile(member))
                    png = members.get(name[:-5] + ".png")
                    if meta.get("name") in names and png is not None:
                        found[meta["name"]] = Image.open(io.BytesIO(tf.extractfile(png).read())).convert("RGB")
    except (OSError, tarfile.TarError) as exc:
        print(f"no reference images ({exc})", file=sys.stderr)
        return None
    if len(found) != len(names):
        print(f"reference shard lacks {sorted(set(names) - set(found))}", file=sys.stderr)
        return None
    return torch.cat([load_init_image(found[n], (size, size)) for n in names])


def markdown_matrix(sims: torch.Tensor, prompts: list[str]) -> str:
    short = [p.replace("an emoji of a ", "").replace("an emoji of ", "") for p in prompts]
    lines = ["| image \\ prompt | " + " | ".join(short) + " |", "|---|" + "---:|" * len(short)]
    for i, name in enumerate(short):
        best = int(sims[i].argmax())
        cells = [f"**{v:.3f}**" if j == best else f"{v:.3f}" for j, v in enumerate(sims[i].tolist())]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, preprocess, tokenizer = kontrast.load(args.model)
    text_features = encode_prompts(model, tokenizer, [Prompt(t) for t in args.prompts])
    print(f"model {args.model}: image size {model.image_size}, {args.steps} steps, {args.size}px, "
          f"{args.cutouts} cutouts, seed {args.seed}\n")
    print("prompt text similarities (how alike the prompts are to the model):")
    print(markdown_matrix(text_features @ text_features.T, args.prompts) + "\n")
    rows, results = [], {}
    if all(p in REFERENCE for p in args.prompts) and args.reference_shard:
        real = reference_images(args.reference_shard, [REFERENCE[p] for p in args.prompts], model.image_size)
        if real is not None:
            sims = similarity_matrix(model, real, text_features, preprocess.mean, preprocess.std,
                                     (model.image_size, model.image_size))
            wins = sum(int(sims[i].argmax()) == i for i in range(len(args.prompts)))
            print(f"### for scale, real OpenMoji emoji ({', '.join(REFERENCE[p] for p in args.prompts)}): "
                  f"diagonal wins {wins}/{len(args.prompts)} rows\n")
            print(markdown_matrix(sims, args.prompts) + "\n")
            results["openmoji_reference"] = {"similarity": sims.tolist(), "diagonal_wins": wins}
    for param in args.params:
        images, runs = [], []
        for k, text in enumerate(args.prompts):
            cfg = GenerateConfig(steps=args.steps, size=(args.size, args.size), param=param, lr=args.lr,
                                 cutouts=args.cutouts, seed=args.seed,
                                 frame_every=args.frame_every if k == 0 and param == args.params[0] else 0)
            t0 = time.perf_counter()
            res = generate(model, tokenizer, [text], cfg)
            seconds = time.perf_counter() - t0
            images.append(res)
            quarter = [sum(res.scores[i:i + max(1, args.steps // 4)]) / max(1, len(res.scores[i:i + args.steps // 4]))
                       for i in range(0, args.steps, max(1, args.steps // 4))][:4]
            runs.append({"prompt": text, "start": res.scores[0], "final": res.final_score, "quarters": quarter,
                         "seconds": seconds, "high_freq_energy": frequency_energy(res.tensor)})
            print(f"[{param}] {text}: score {res.scores[0]:.3f} -> {res.final_score:.3f} "
                  f"(quarter means {', '.join(f'{q:.3f}' for q in quarter)}) in {seconds:.0f}s", file=sys.stderr)
            if res.frames:
                gif = out_dir / default_out(text).replace(".png", ".gif")
                small = [f.resize((96, 96), Image.LANCZOS).quantize(64) for f in res.frames]
                save_gif(small, gif, duration_ms=120)
                print(f"wrote {gif} ({len(res.frames)} frames)", file=sys.stderr)
        sims = similarity_matrix(model, torch.stack([r.tensor for r in images]), text_features,
                                 preprocess.mean, preprocess.std, (model.image_size, model.image_size))
        wins = sum(int(sims[i].argmax()) == i for i in range(len(args.prompts)))
        print(f"### {param}: image-to-prompt cosine similarity (diagonal wins {wins}/{len(args.prompts)} rows)\n")
        print(markdown_matrix(sims, args.prompts) + "\n")
        print("| prompt | score at step 1 | final score | mean score per quarter of the run | seconds |")
        print("|---|---:|---:|---|---:|")
        for r in runs:
            print(f"| {r['prompt']} | {r['start']:.3f} | {r['final']:.3f} | "
                  f"{' → '.join(f'{q:.3f}' for q in r['quarters'])} | {r['seconds']:.0f} |")
        print()
        rows.append([r.image for r in images])
        results[param] = {"similarity": sims.tolist(), "diagonal_wins": wins, "runs": runs}
    grid = make_grid(rows, args.params, args.prompts, args.tile)
    grid.save(out_dir / "grid.png", optimize=True)
    meta = {k: v for k, v in vars(args).items() if k != "out_dir"}
    meta["reference_shard"] = Path(args.reference_shard).name if args.reference_shard else None
    meta["model_fingerprint"] = kontrast.fingerprint(model)
    (out_dir / "results.json").write_text(json.dumps({"settings": meta, "results": results}, indent=1) + "\n")
    print(f"wrote {out_dir / 'grid.png'} and {out_dir / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
