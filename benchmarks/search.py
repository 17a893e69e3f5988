"""Benchmark: FAISS index choice (latency p50/p99, recall@10 vs exact) and a loopback load test of the server.

Part 1, ANN: ``--n`` random 512-d normalised float32 vectors (1M by default: 2 GB, plus as much again for
the index; peak RSS is printed), two kinds of data:

- ``uniform``: i.i.d. Gaussian directions. No structure at all: every vector is almost orthogonal to all
  others (cosines ~ +-0.04 at 512-d), so a "nearest neighbour" is noise and no ANN index reaches high
  recall without scanning most of the data. The worst case.
- ``clustered``: a mixture of n/500 random centres, points at cosine ~0.7 from their centre; nearest
  neighbours share a centre, as images of one concept do in a CLIP space.

For each, ``kontrast.search.ann.build(..., "auto")`` (what ``kontrast index`` does) picks and tunes the
index; queries are fresh draws from the same distribution. Reported: the choice, build seconds, index
size, recall@10 against exact search, single-query latency p50/p99 (one query per call, as the server
makes), and batched throughput. ``--compare ivf,hnsw,flat`` adds forced types for comparison.

Part 2, server: builds a small index (``--images``, default the shared 200-emoji CSV, ``--model``
default the shared fixture ViT; an architecture name such as ViT-B-32 gives that size with random weights), starts ``kontrast serve`` on a free loopback port (a subprocess), and
sends ``--requests`` requests from ``--clients`` concurrent clients, with the model lock on and off
(``--no-model-lock``). Prints p50/p99 latency, requests/s and errors, and p50 per kind of request. The mix
(``--mix all``, the default) cycles through 8 kinds: 3 text searches (``GET /search``), 1 image upload
(``POST /search``), and clip-retrieval's routes as ``ClipClient`` sends them (JSON without a content type):
``/knn-service`` by text (deduplicated, 10 of 100 results with metadata and inline image), by image (base64)
and by embedding, and ``/metadata`` of 10 ids. ``--mix kontrast``: the former 3 text : 1 image mix.

Measured on the 2-core development VM (faiss 1.15.1, load ~1-2), ``python benchmarks/search.py --n 1000000
--compare ivf --clients 8 --requests 400`` (about 12 min, peak RSS 6.3 GB)::

    data       asked  index                           build s  size MB recall@10   p50 ms   p99 ms batch q/s
    uniform    auto   flat (exact)                       92.0     1961     1.000    87.15   149.77        43
    uniform    ivf    ivf (nlist=1024 nprobe=1024)       80.4     1963     1.000    88.00   108.30        17
    clustered  auto   ivf (nlist=1024 nprobe=1)          11.1     1963     1.000     0.14     0.28     13152
    uniform/auto: ivf nlist=1024 reached recall@10 0.48 at nprobe=256 (25% of its lists): exact search instead

    model lock  requests errors   p50 ms   p99 ms   req/s    (fixture ViT, 64 px, 200 emoji)
    on               400      0     38.3    123.7   180.6
    off              400      0     43.7    150.8   162.2

With ``--n 200000 --compare ivf,hnsw`` (while a training job shared the CPU) HNSW (M=32, efConstruction
80) took 276 s (uniform, recall 0.94 at efSearch 4096) and 104 s (clustered, 0.955 at efSearch 32) to
build, against 55 s and 20 s for the IVF, which is why the automatic choice never picks HNSW. With a
ViT-B-32-sized model (``--skip-ann --model ViT-B-32 --requests 200``) the lock changed little: 28.2 req/s
(p50 240 ms, p99 866 ms) with it, 29.1 req/s (p50 182 ms, p99 590 ms) without.

Usage::

    python benchmarks/search.py                     # 1M vectors (minutes) + load test
    python benchmarks/search.py --n 100000 --compare ivf,hnsw --clients 8 --requests 400
    python benchmarks/search.py --skip-ann          # load test only
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from kontrast.search import ann

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# the load test's request mix (--mix all), cycled through by request number
KINDS = ["search text", "search text", "search image", "knn text", "knn image", "knn embedding", "metadata",
         "search text"]


# ------------------------------------------------------------------------------------------------ data
def make_data(kind: str, n: int, q: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(base [n, dim], queries [q, dim])``, normalised float32 (see the module docstring)."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        base = rng.standard_normal((n, dim), dtype=np.float32)
        queries = rng.standard_normal((q, dim), dtype=np.float32)
    elif kind == "clustered":
        centres = rng.standard_normal((max(16, n // 500), dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        base = np.empty((n, dim), np.float32)
        for start in range(0, n, 100_000):  # in chunks: bounded temporaries
            m = min(100_000, n - start)
            noise = rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim)  # |noise| ~ 1 -> cos ~ 0.71
            base[start: start + m] = centres[rng.integers(0, len(centres), m)] + noise
        queries = centres[rng.integers(0, len(centres), q)] + rng.standard_normal((q, dim), dtype=np.float32) / np.sqrt(dim)
    else:
        raise SystemExit(f"unknown data kind {kind!r}")
    for x in (base, queries):
        for start in range(0, len(x), 100_000):
            x[start: start + 100_000] /= np.linalg.norm(x[start: start + 100_000], axis=1, keepdims=True)
    return base, queries


def index_bytes(params: ann.AnnParams, n: int, dim: int) -> int:
    """Memory held by the index (vectors + ids + structure), from its layout."""
    size = n * (dim * 4 + 8)
    if params.kind == "ivf":
        size += params.nlist * dim * 4
    elif params.kind == "hnsw":
        size += n * ann.HNSW_M * 2 * 4
    return size


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth)]))


def bench_ann(kind: str, args: argparse.Namespace) -> list[dict]:
    import faiss

    t = time.perf_counter()
    base, queries = make_data(kind, args.n, args.queries, args.dim)
    ids = np.arange(1, args.n + 1, dtype=np.int64)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    _, exact = faiss.knn(queries, base, 10, metric=faiss.METRIC_INNER_PRODUCT)
    truth = exact + 1  # row -> id
    print(f"[{kind}] data {gen_s:.1f}s, exact ground truth for {args.queries} queries {time.perf_counter() - t:.1f}s",
          flush=True)
    rows = []
    for requested in ["auto", *[c for c in args.compare if c != "auto"]]:
        if requested == "hnsw" and args.n > args.hnsw_max_n:
            print(f"[{kind}] hnsw skipped: n > --hnsw-max-n {args.hnsw_max_n} (build too slow on this machine)")
            continue
        t = time.perf_counter()
        index, params = ann.build(base, ids, requested)
        build_s = time.perf_counter() - t
        _, found = index.search(queries, 10)
        rec = recall(found, truth)
        lat = []
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(args.latency_threads)  # as `kontrast serve` runs queries (--faiss-threads)
        for i in range(min(args.latency_queries, len(queries))):
            t = time.perf_counter()
            index.search(queries[i: i + 1], 10)
            lat.append((time.perf_counter() - t) * 1000)
        faiss.omp_set_num_threads(threads)
        t = time.perf_counter()
        index.search(queries, 10)
        qps = len(queries) / (time.perf_counter() - t)
        setting = {"ivf": f"nlist={params.nlist} nprobe={params.nprobe}", "hnsw": f"M={ann.HNSW_M} ef={params.ef_search}",
                   "flat": "exact"}[params.kind]
        rows.append({"data": kind, "requested": requested, "index": f"{params.kind} ({setting})", "build_s": build_s,
                     "size_mb": index_bytes(params, args.n, args.dim) / 2**20, "recall": rec,
                     "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)), "qps": qps,
                     "note": params.note})
        print(f"[{kind}] {requested}: {rows[-1]['index']} build {build_s:.1f}s recall@10 {rec:.3f} "
              f"p50 {rows[-1]['p50']:.2f}ms p99 {rows[-1]['p99']:.2f}ms {params.note}", flush=True)
        del index
    del base
    return rows


# ---------------------------------------------------------------------------------------------- server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_kb(pid: int, field: str) -> int:
    """``VmHWM`` (peak RSS) or ``VmRSS`` of a process, in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def burst_images() -> list[tuple[str, bytes, str, int]]:
    """Large uploads for the burst: ``(name, bytes, media type, expected status)``.

    - the issue's 9400 x 9400 PNG (a few hundred KB, 88 M pixels: just under Pillow's bomb limit): above the
      server's 25 M pixel cap, refused from its header (400) without decoding;
    - a 4900 x 4900 PNG (24 M pixels, decoded in full: the largest PNG the server accepts);
    - an 8000 x 6000 JPEG (48 M pixels): decoded at 1/2 scale by the JPEG decoder (12 M pixels).
    """
    import io

    from PIL import Image, ImageDraw

    def picture(w: int, h: int) -> Image.Image:
        img = Image.new("RGB", (w, h), (40, 90, 160))
        draw = ImageDraw.Draw(img)
        for i in range(0, max(w, h), max(w, h) // 40):
            draw.line([(i, 0), (0, i)], fill=(200, (i * 7) % 256, 60), width=9)
        return img

    out = []
    for name, (w, h), fmt, expect in (("bomb.png", (9400, 9400), "PNG", 400), ("large.png", (4900, 4900), "PNG", 200),
                                      ("large.jpg", (8000, 6000), "JPEG", 200)):
        buf = io.BytesIO()
        picture(w, h).save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
        out.append((name, buf.getvalue(), f"image/{fmt.lower().replace('jpg', 'jpeg')}", expect))
    return out


def load_test(index_dir: Path, args: argparse.Namespace, lock: bool,
              burst: list[tuple[str, bytes, str, int]] | None = None) -> dict:
    """``args.requests`` small requests from ``args.clients`` clients; with ``burst``, ``args.burst`` large
    uploads at once, again and again while the small requests run. Returns latencies, errors and the server's
    RSS (peak, and after the burst when it went idle)."""
    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "kontrast", "serve", str(index_dir), "--port", str(port)]
    if not lock:
        cmd.append("--no-model-lock")
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        images = sorted(p for p in Path(args.images).parent.glob("*.png"))[:16] if args.images.endswith(".csv") \
            else sorted(Path(args.images).rglob("*.png"))[:16]
        blobs = [p.read_bytes() for p in images]
        words = ["a red bicycle", "a dog", "a flag", "a smiling face", "food", "a car", "music", "the sea"]
        per_client = [list(range(c, args.requests, args.clients)) for c in range(args.clients)]
        kinds = KINDS if args.mix == "all" else ["search text", "search text", "search text", "search image"]
        vector = httpx.post(f"{url}/embed", data={"text": ["a flag"]}, timeout=60).json()["text"][0]
        ids = list(range(1, 11))

        def one(http, kind: str, j: int):
            knn = {"num_images": 10, "num_result_ids": 100, "modality": "image", "deduplicate": True,
                   "indice_name": Path(index_dir).resolve().name}
            if kind == "search text":
                return http.get("/search", params={"q": words[j % len(words)], "k": 10})
            if kind == "search image":
                return http.post("/search", files={"file": ("q.png", blobs[j % len(blobs)], "image/png")},
                                 data={"k": "10"})
            if kind == "knn text":
                body = {**knn, "text": words[j % len(words)]}
            elif kind == "knn image":
                body = {**knn, "image": base64.b64encode(blobs[j % len(blobs)]).decode(), "deduplicate": False}
            elif kind == "knn embedding":
                body = {**knn, "embedding_input": vector}
            else:
                return http.post("/metadata", content=json.dumps({"indice_name": knn["indice_name"], "ids": ids}))
            return http.post("/knn-service", content=json.dumps(body))  # no content type, as ClipClient posts

        def client(jobs: list[int]) -> tuple[list[tuple[str, float]], int]:
            lat, errors = [], 0
            with httpx.Client(base_url=url, timeout=60) as http:
                for j in jobs:
                    kind = kinds[j % len(kinds)]
                    t = time.perf_counter()
                    try:
                        errors += one(http, kind, j).status_code != 200
                    except httpx.HTTPError:
                        errors += 1
                    lat.append((kind, (time.perf_counter() - t) * 1000))
            return lat, errors

        base_kb = _proc_kb(server.pid, "VmRSS")
        done = threading.Event()
        burst_status: list[tuple[str, int]] = []

        def one_large(item) -> tuple[str, int]:
            name, data, media, _ = item
            try:
                with httpx.Client(base_url=url, timeout=300) as http:
                    return name, http.post("/embed", files={"file": (name, data, media)}).status_code
            except httpx.HTTPError:
                return name, -1

        def bursts() -> None:
            rounds = 0
            with concurrent.futures.ThreadPoolExecutor(args.burst) as pool:
                while not done.is_set() and rounds < args.burst_rounds:
                    items = [burst[i % len(burst)] for i in range(args.burst)]
                    burst_status.extend(pool.map(one_large, items))
                    rounds += 1

        burster = threading.Thread(target=bursts) if burst else None
        t = time.perf_counter()
        if burster is not None:
            burster.start()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(client, per_client))
        wall = time.perf_counter() - t
        done.set()
        if burster is not None:
            burster.join()
        time.sleep(2.0)  # idle: the decode gate has handed memory back
        by_kind: dict[str, list[float]] = {}
        for r in results:
            for kind, ms in r[0]:
                by_kind.setdefault(kind, []).append(ms)
        lat = [ms for r in results for _, ms in r[0]]
        expected = {name: status for name, _, _, status in burst or []}
        wrong = [(n, s) for n, s in burst_status if s != expected[n]]
        return {"lock": lock, "clients": args.clients, "requests": len(lat), "errors": sum(r[1] for r in results),
                "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)), "rps": len(lat) / wall,
                "burst": len(burst_status), "burst_wrong": wrong, "base_mb": base_kb / 1024,
                "peak_mb": _proc_kb(server.pid, "VmHWM") / 1024, "after_mb": _proc_kb(server.pid, "VmRSS") / 1024,
                "kinds": {k: (len(v), float(np.percentile(v, 50))) for k, v in by_kind.items()}}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def build_server_index(args: argparse.Namespace, folder: Path) -> Path:
    if args.index:
        return Path(args.index)
    import kontrast

    if not Path(args.model).exists() and args.model in kontrast.list_models():
        # an architecture name: random weights, saved once so that index and server load the same model
        import torch

        torch.manual_seed(0)
        saved = folder.parent / f"model-{args.model}"
        kontrast.save(kontrast.create_model(args.model), saved)
        args.model = str(saved)
    cmd = [sys.executable, "-m", "kontrast", "index", args.images, "--index", str(folder), "--model", args.model,
           "--workers", "0", "--no-progress"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return folder


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="base vectors")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall@10 and throughput")
    parser.add_argument("--latency-queries", type=int, default=200, help="single-query calls timed for p50/p99")
    parser.add_argument("--latency-threads", type=int, default=1, help="FAISS threads for the single-query timing")
    parser.add_argument("--data", default="uniform,clustered", help="comma list: uniform, clustered")
    parser.add_argument("--compare", default="", help="forced index types to add, e.g. ivf,hnsw,flat")
    parser.add_argument("--hnsw-max-n", type=int, default=200_000, help="skip forced HNSW above this n")
    parser.add_argument("--skip-ann", action="store_true")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--index", default=None, help="existing index for the load test")
    parser.add_argument("--burst", type=int, default=0,
                        help="large uploads sent at once, again and again, beside the load test (0: none)")
    parser.add_argument("--burst-rounds", type=int, default=3, help="at most this many bursts")
    parser.add_argument("--mix", choices=["all", "kontrast"], default="all",
                        help="all: kontrast's /search and clip-retrieval's /knn-service and /metadata; "
                        "kontrast: 3 text : 1 image /search only")
    parser.add_argument("--images", default=str(SHARED / "data" / "emoji_sample" / "captions.csv"))
    parser.add_argument("--model", default=str(SHARED / "fixtures" / "openai_vit.pt")
                        if (SHARED / "fixtures" / "openai_vit.pt").exists() else "default")
    args = parser.parse_args()
    args.compare = [c for c in args.compare.split(",") if c]

    import faiss

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    if not args.skip_ann:
        for kind in args.data.split(","):
            rows += bench_ann(kind.strip(), args)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"\nANN: n={args.n:,} dim={args.dim} queries={args.queries} (latency: {args.latency_queries} single "
              f"queries on {args.latency_threads} thread), recall target {ann.RECALL_TARGET}, peak RSS {peak:.1f} GB")
        print(f"{'data':<10} {'asked':<6} {'index':<30} {'build s':>8} {'size MB':>8} {'recall@10':>9} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'batch q/s':>9}")
        for r in rows:
            print(f"{r['data']:<10} {r['requested']:<6} {r['index']:<30} {r['build_s']:>8.1f} {r['size_mb']:>8.0f} "
                  f"{r['recall']:>9.3f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['qps']:>9.0f}")
        for r in rows:
            if r["note"]:
                print(f"  note ({r['data']}, {r['requested']}): {r['note']}")
    if not args.skip_server:
        with tempfile.TemporaryDirectory() as tmp:
            index_dir = build_server_index(args, Path(tmp) / "idx")
            burst = burst_images() if args.burst else None
            if burst:
                sizes = ", ".join(f"{n} {len(d) / 1024:.0f} KB (expect {e})" for n, d, _, e in burst)
                print(f"burst uploads: {sizes}", flush=True)
            results = [load_test(index_dir, args, lock=True, burst=burst)]
            if not burst:
                results.append(load_test(index_dir, args, lock=False))
        mix = ("3 GET /search text, 1 POST /search image, /knn-service by text, image and embedding, 1 /metadata"
               if args.mix == "all" else "3 GET /search text : 1 POST /search image")
        print(f"\nServer load test: {args.clients} concurrent clients, {args.requests} requests "
              f"({mix}), index {args.index or args.images}, model {args.model}"
              + (f"; beside bursts of {args.burst} large uploads (POST /embed)" if burst else ""))
        print(f"{'model lock':<11} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} "
              f"{'large':>6} {'RSS base MB':>11} {'peak MB':>8} {'after MB':>8}")
        for r in results:
            print(f"{'on' if r['lock'] else 'off':<11} {r['requests']:>8} {r['errors']:>6} {r['p50']:>8.1f} "
                  f"{r['p99']:>8.1f} {r['rps']:>7.1f} {r['burst']:>6} {r['base_mb']:>11.0f} {r['peak_mb']:>8.0f} "
                  f"{r['after_mb']:>8.0f}")
            print("    p50 ms by kind: " + ", ".join(f"{k} {ms:.1f} (n={n})" for k, (n, ms) in sorted(r["kinds"].items())))
            for name, status in r["burst_wrong"][:5]:
                print(f"  large upload {name}: status {status}, not the expected one")
        if any(r["errors"] or r["burst_wrong"] for r in results):
            raise SystemExit("load test had errors")


if __name__ == "__main__":
    main()
