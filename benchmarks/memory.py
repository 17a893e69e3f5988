"""Benchmark: peak memory (RSS) of embedding a collection does not grow with the collection's size.

Run:  python benchmarks/memory.py [--n 1000 10000] [--layout both] [--model PATH] [--backend torch|onnx]

Synthetic PNGs (smooth gradients with a few random rectangles, ``--size`` px) are written once to a temp
folder, both as an image folder and as webdataset shards of ``--shard-size`` images; each collection size
``N`` then runs in a fresh Python process that loads the model, runs ``kontrast.pipeline.embed_units``
over the first ``N`` images and keeps only a running count and checksum of the results (as a writer that
streams each unit to disk would). The child reports its RSS after loading the model and its peak RSS
(``resource.getrusage``); the table shows both and the growth of the peak from the smallest to each
larger ``N``. Flat means: the growth stays within a few MB while ``N`` grows 10x.

``--json`` prints the measurements as JSON (used by ``tests/test_speed_paths.py`` at small N).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


# ---------------------------------------------------------------------------------------------- data
def synthetic_png(rng: random.Random, size: int) -> bytes:
    """A small RGB PNG: a colour gradient with three random rectangles (compresses like an icon)."""
    from PIL import Image, ImageDraw

    a, b = [tuple(rng.randrange(256) for _ in range(3)) for _ in range(2)]
    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    image = Image.composite(Image.new("RGB", (size, size), a), Image.new("RGB", (size, size), b), image.convert("L"))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = rng.randrange(size), rng.randrange(size)
        draw.rectangle([x0, y0, x0 + rng.randrange(1, size // 2), y0 + rng.randrange(1, size // 2)],
                       fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_collection(root: Path, n: int, size: int, shard_size: int) -> None:
    """``root/images/000000.png ...`` and ``root/shards/shard-000000.tar ...`` (png + txt per sample)."""
    rng = random.Random(0)
    (root / "images").mkdir(parents=True)
    (root / "shards").mkdir()
    for first in range(0, n, shard_size):
        with tarfile.open(root / "shards" / f"shard-{first // shard_size:06d}.tar", "w") as tar:
            for i in range(first, min(n, first + shard_size)):
                png = synthetic_png(rng, size)
                (root / "images" / f"{i:06d}.png").write_bytes(png)
                for ext, data in (("png", png), ("txt", f"synthetic image {i}".encode())):
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def subset(root: Path, layout: str, n: int, shard_size: int) -> str:
    """A source spec for the first ``n`` images: a folder of hard links, or the first shards."""
    if layout == "tar":
        shards = sorted((root / "shards").glob("*.tar"))[: max(1, n // shard_size)]
        return json.dumps([str(s) for s in shards])
    folder = root / f"images-{n}"
    if not folder.exists():
        folder.mkdir()
        for path in sorted((root / "images").iterdir())[:n]:
            os.link(path, folder / path.name)
    return json.dumps(str(folder))


# ---------------------------------------------------------------------------------------------- child
def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(spec: str, model_spec: str, backend: str, batch_size: int, workers: int, threads: int) -> dict:
    """Embed one collection; returns counts, time and memory (run in a fresh process)."""
    import numpy as np
    import torch

    import kontrast
    from kontrast.data import open_source
    from kontrast.pipeline import embed_units

    torch.set_num_threads(threads)
    model, preprocess, _ = kontrast.load(model_spec, backend=backend)
    source = open_source(json.loads(spec))
    with torch.inference_mode():  # one warm-up batch, so allocator pools are part of the baseline
        model.encode_image(torch.zeros(batch_size, 3, model.image_size, model.image_size))
    baseline = rss_mb()
    start, images, checksum, skipped = time.perf_counter(), 0, 0.0, 0
    for result in embed_units(model, preprocess, source, batch_size=batch_size, workers=workers):
        images += len(result.image_embeddings)
        skipped += len(result.skipped)
        checksum += float(np.abs(result.image_embeddings).sum())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"images": images, "skipped": skipped, "seconds": time.perf_counter() - start,
            "rss_after_load_mb": baseline, "peak_rss_mb": peak, "checksum": checksum}


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000], help="collection sizes")
    parser.add_argument("--layout", choices=["tar", "folder", "both"], default="both")
    parser.add_argument("--model", default=str(SHARED / "fixtures" / "openai_vit.pt"))
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--size", type=int, default=64, help="side of the synthetic images in px")
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.backend, args.batch_size, args.workers, args.threads)))
        return
    sizes = sorted(args.n)
    layouts = ["tar", "folder"] if args.layout == "both" else [args.layout]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kontrast-mem-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_collection(root, sizes[-1], args.size, args.shard_size)
        generated = time.perf_counter() - start
        env = {**os.environ, "KONTRAST_CACHE": str(root / "cache")}
        if args.backend == "onnx":  # export once here, so that no child's peak includes the export
            subprocess.run([sys.executable, "-c", "import sys, kontrast; kontrast.load(sys.argv[1], backend='onnx')",
                            args.model], env=env, check=True, capture_output=True)
        for layout in layouts:
            for n in sizes:
                cmd = [sys.executable, __file__, "--child", subset(root, layout, n, args.shard_size),
                       "--model", args.model, "--backend", args.backend, "--batch-size", str(args.batch_size),
                       "--workers", str(args.workers), "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if out.returncode:
                    sys.exit(f"child for N={n} ({layout}) failed:\n{out.stderr[-2000:]}")
                results.append({"layout": layout, "n": n, **json.loads(out.stdout.strip().splitlines()[-1])})
    if args.json:
        print(json.dumps(results))
        return
    print(f"# peak RSS of kontrast.pipeline.embed_units: model {args.model}, backend {args.backend}, "
          f"{args.size}px PNGs, batch {args.batch_size}, workers {args.workers}, {args.threads} threads "
          f"(generated {sizes[-1]} images in {generated:.0f}s)\n")
    print("| layout | images | seconds | images/s | RSS after load (MB) | peak RSS (MB) | peak growth vs smallest N (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        first = next(x for x in results if x["layout"] == r["layout"])
        print(f"| {r['layout']} | {r['images']} | {r['seconds']:.1f} | {r['images'] / r['seconds']:.0f} | "
              f"{r['rss_after_load_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - first['peak_rss_mb']:+.1f} |")


if __name__ == "__main__":
    main()
