"""Benchmark: image and text tower throughput, kontrast (fp32 / bf16 / int8 / onnxruntime) beside open_clip and
transformers, on the same weights, in one process, with the accuracy of every fast path.

Run:  python benchmarks/encode.py [--model ViT-B-32] [--threads 2] [--repeats 5] [--long-text] [--zeroshot]
      python benchmarks/encode.py --model convnext_base --skip hf,onnx,text   # a ConvNeXt image tower
      python benchmarks/encode.py --skip image,text --zeroshot     # only the zero-shot check
      /work/peers/bin/python benchmarks/encode.py ...   # an environment where ``import open_clip`` works

What is measured: ``encode_image`` on a batch of 32 real images (emoji and clip art from ``../shared/data``,
preprocessed to the model's size) and ``encode_text`` on a batch of 64 real captions (and, with
``--long-text``, 64 captions that fill all 77 tokens), under ``torch.inference_mode``. Every variant is
warmed up, then the variants run in turn, ``--repeats`` rounds, so a busy machine slows all of them alike;
the table gives the median per variant and its ratio to open_clip fp32 (the ratio is what to compare
across machines). Accuracy columns compare each variant's features with kontrast fp32 on the same real
inputs: the largest absolute difference and the smallest cosine similarity.

Peers (nothing is installed or downloaded):
* open_clip: its ``CLIP`` built from the model's open_clip config (``kontrast.export(format="open_clip")``)
  with the same state dict. Where torchvision's C extension cannot load (a CUDA torchvision wheel beside a CPU
  torch), the two operator names that torchvision registers fake kernels for at import are declared empty
  first, so ``open_clip`` imports; the models themselves do not use torchvision. The table says when this
  was needed. Without open_clip, an "open_clip-equivalent reference" written here (``nn.MultiheadAttention``
  blocks with ``batch_first=True``, a LayerNorm that casts back to the input dtype, causal float mask over all
  77 tokens for text, as open_clip 3.x does) stands in, labelled as such.
* transformers ``CLIPModel`` (``attn_implementation="sdpa"``) loaded from ``kontrast.export(format="hf")`` (ViT
  towers only: a ``CLIPModel`` cannot hold a ResNet or ConvNeXt tower, and the table says it was skipped).
  For a ConvNeXt model (``--model convnext_base``) open_clip builds its ``TimmModel`` tower with timm.

kontrast variants: fp32 (exact path), bf16 (``kontrast.load(..., precision="bf16")``: weights stored in
bf16), int8 (``torch.ao.quantization.quantize_dynamic`` of the ``nn.Linear`` modules; the packed q/k/v
projection stays fp32), onnx fp32 and onnx int8 (``kontrast.load(..., backend="onnx")``).

Physical limit: the fp32 GEMM peak is measured in the same process (a 4096 x 4096 x 4096 product, with
``torch.mm`` (MKL) and with oneDNN's inner product, best of 3 each, at the start and at the end; the larger is
the peak). Each row's GFLOP/s is the textbook forward's floating-point work (counted with
``torch.utils.flop_counter`` on the baseline peer: every token through every block) divided by its time, and
``x peak`` its fraction of the GEMM peak. kontrast skips work the textbook forward does (the last block for
the pooled row only; tokens after the last end-of-text), so its effective GFLOP/s can pass what its GEMMs run.

``--isa avx2`` reruns the whole benchmark in a child process with every kernel library limited to AVX2
(``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``): on an AVX-512
machine, the closest to an AVX2-only CPU (onnxruntime has no such switch and still uses what the CPU has).
The CPU line above the tables names the CPU, its instruction sets and any such switch.

``--zeroshot``: top-1 accuracy on the emoji ``val_concepts`` splits (Google + Twitter styles, each image
its own concept among 395, prompt "an emoji of {name}.") for fp32 and every fast path, with the embedded
default model if it is installed (else ``--zeroshot-model``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kontrast
import kontrast.cpu

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


# ---------------------------------------------------------------------------------------------- inputs
def shard_samples(pattern: str, n: int) -> list[tuple[bytes, str, dict]]:
    """The first ``n`` (png bytes, caption, json) samples of the shards matching ``pattern``."""
    out: list[tuple[bytes, str, dict]] = []
    for shard in sorted(SHARED.glob(pattern)):
        parts: dict[str, dict[str, bytes]] = OrderedDict()
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, ext = member.name.rpartition(".")
                parts.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for sample in parts.values():
            if {"png", "txt", "json"} <= sample.keys():
                out.append((sample["png"], sample["txt"].decode(), json.loads(sample["json"])))
            if len(out) >= n:
                return out
    return out


def real_inputs(preprocess, tokenizer, n_images: int, n_texts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels of real images (half emoji, half clip art), ids of real captions, and 77-token captions."""
    half = n_images // 2
    samples = shard_samples("data/emoji/*-train-*.tar", half) + shard_samples("data/clipart/*-train-*.tar", n_images - half)
    if len(samples) < n_images:
        sys.exit(f"need {n_images} images from {SHARED / 'data'}; found {len(samples)}")
    pixels = torch.stack([preprocess(png) for png, _, _ in samples])
    captions = [c for _, c, _ in shard_samples("data/*/*-train-*.tar", n_texts)]
    long = [" ".join([c] * 12) for c in captions]  # long enough to fill the 77-token context
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation warnings for the long captions
        return pixels, tokenizer(captions), tokenizer(long)


# ---------------------------------------------------------------------------------------------- peers
def import_open_clip() -> tuple[Any, str] | tuple[None, str]:
    """``(open_clip, note)``; declares torchvision's two fake-registered ops when its C extension is missing."""
    try:
        import open_clip

        return open_clip, ""
    except ImportError as exc:
        return None, f"open_clip not importable ({exc})"
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            return None, f"open_clip import failed ({exc})"
    for name in [m for m in sys.modules if m.startswith(("torchvision", "open_clip"))]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import_open_clip.lib = lib  # keep the library object alive
    import open_clip

    return open_clip, "torchvision C ops unavailable: 2 op names declared so open_clip imports"


class RefLayerNorm(nn.LayerNorm):
    """LayerNorm that returns the input dtype (open_clip's behaviour in mixed precision)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class RefQuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class RefBlock(nn.Module):
    """Pre-LN block on ``nn.MultiheadAttention(batch_first=True)`` (OpenAI parameter names)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str) -> None:
        super().__init__()
        self.ln_1 = RefLayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = RefLayerNorm(width)
        hidden = int(width * mlp_ratio)
        gelu = RefQuickGELU() if act == "quick_gelu" else nn.GELU()
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", gelu),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=None if mask is None else mask.to(x.dtype))[0]
        return x + self.mlp(self.ln_2(x))


class RefTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act: str) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([RefBlock(width, heads, mlp_ratio, act) for _ in range(layers)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class RefVisual(nn.Module):
    def __init__(self, v, embed_dim: int) -> None:
        super().__init__()
        width, grid = v.width, v.image_size // v.patch_size
        self.conv1 = nn.Conv2d(3, width, v.patch_size, v.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = RefLayerNorm(width)
        self.transformer = RefTransformer(width, v.layers, v.heads, v.mlp_ratio, v.act)
        self.ln_post = RefLayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x.to(self.conv1.weight.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [N, D, g, g] -> [N, D, g*g] -> [N, g*g, D]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [N, 1, D]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # [N, 1+g*g, D]
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class RefCLIP(nn.Module):
    """open_clip-equivalent reference ViT CLIP (see the module docstring); loads OpenAI-named state dicts."""

    def __init__(self, cfg) -> None:
        super().__init__()
        t = cfg.text
        self.visual = RefVisual(cfg.vision, cfg.embed_dim)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.zeros(t.context_length, t.width))
        self.transformer = RefTransformer(t.width, t.layers, t.heads, t.mlp_ratio, t.act)
        self.ln_final = RefLayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.zeros(t.width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros(()))
        mask = torch.full((t.context_length, t.context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.positional_embedding.to(self.token_embedding.weight.dtype)
        x = self.ln_final(self.transformer(x, self.attn_mask))
        return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ self.text_projection


# ---------------------------------------------------------------------------------------------- variants
class Variant:
    """A named pair of encoders (either may be None) and the precision label for the table."""

    def __init__(self, name: str, image: Callable | None, text: Callable | None) -> None:
        self.name, self.image, self.text = name, image, text


def build_variants(model, folder: Path, args, notes: list[str]) -> list[Variant]:
    cfg = model.config
    out: list[Variant] = []
    open_clip, note = import_open_clip()
    if note:
        notes.append(note)
    oc = None
    if open_clip is not None and cfg.text.hf_model:
        notes.append("open_clip skipped: its HF text tower would be fetched from the hub")
    elif open_clip is not None:
        kontrast.export(model, folder / "open_clip", format="open_clip")
        oc_cfg = json.loads((folder / "open_clip" / "open_clip_config.json").read_text())["model_cfg"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            oc = open_clip.model.CLIP(**oc_cfg).eval()
        oc.load_state_dict(model.state_dict(), strict=True)
    if oc is not None:
        version = getattr(open_clip, "__version__", "?")
        out.append(Variant(f"open_clip {version} fp32", oc.encode_image, oc.encode_text))
        if "peer-bf16" not in args.skip:
            ocb = copy.deepcopy(oc).to(torch.bfloat16)
            out.append(Variant(f"open_clip {version} bf16 (weights cast)", lambda x: ocb.encode_image(x.bfloat16()),
                               ocb.encode_text))
    if oc is None or args.reference:
        if cfg.vision.is_resnet or cfg.text.hf_model:
            notes.append("open_clip-equivalent reference covers ViT + CLIP text towers only: skipped")
        else:
            ref = RefCLIP(cfg).eval()
            ref.load_state_dict(model.state_dict(), strict=True)
            out.append(Variant("open_clip-equivalent reference fp32", ref.encode_image, ref.encode_text))
    if "hf" not in args.skip:
        try:
            from transformers import CLIPModel

            kontrast.export(model, folder / "hf", format="hf")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hf = CLIPModel.from_pretrained(folder / "hf", attn_implementation="sdpa").eval()
            def pooled(output: Any) -> torch.Tensor:  # transformers 5 returns an output object
                return output if torch.is_tensor(output) else output.pooler_output

            import transformers

            out.append(Variant(f"transformers {transformers.__version__} fp32 (sdpa)",
                               lambda x: pooled(hf.get_image_features(pixel_values=x)),
                               lambda ids: pooled(hf.get_text_features(input_ids=ids))))
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
            notes.append(f"transformers skipped: {type(exc).__name__}: {exc}")
    out.append(Variant("kontrast fp32", model.encode_image, model.encode_text))
    kontrast.save(model, folder / "kontrast")
    if "bf16" not in args.skip:
        kb, _, _ = kontrast.load(folder / "kontrast", precision="bf16")
        out.append(Variant("kontrast bf16", kb.encode_image, kb.encode_text))
    if "int8" not in args.skip:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
            kq = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
        out.append(Variant("kontrast int8 (torch dynamic, nn.Linear)", kq.encode_image, kq.encode_text))
    if "onnx" not in args.skip:
        from kontrast.export.onnx_export import export_onnx

        export_onnx(model, folder / "onnx")
        ko, _, _ = kontrast.load(folder / "onnx", backend="onnx")
        out.append(Variant("kontrast onnx fp32 (onnxruntime)", ko.encode_image, ko.encode_text))
        kq8, _, _ = kontrast.load(folder / "onnx", backend="onnx", precision="int8")
        out.append(Variant("kontrast onnx int8 (onnxruntime)", kq8.encode_image, kq8.encode_text))
    return out


# ---------------------------------------------------------------------------------------------- timing
def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function; rounds run every function once, in a rotating order."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def gemm_peak(size: int = 4096, repeats: int = 3) -> dict[str, float]:
    """GFLOP/s of a large fp32 matrix product: ``torch.mm`` (MKL) and oneDNN's inner product, best of ``repeats``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    runs = {"torch.mm": lambda: torch.mm(a, b)}
    if kontrast.cpu.onednn_runs(torch.float32):
        runs["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    out = {}
    with torch.inference_mode():
        for name, fn in runs.items():
            fn()
            best = min(timed(fn) for _ in range(repeats))
            out[name] = 2 * size**3 / best / 1e9
    return out


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def textbook_flops(fn: Callable[[torch.Tensor], Any], inputs: torch.Tensor) -> int:
    """Floating-point operations of one call (matrix products, attention, convolutions), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        fn(inputs)
    return counter.get_total_flops()


def accuracy(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    out, ref = out.float(), ref.float()
    return float((out - ref).abs().max()), float(F.cosine_similarity(out, ref, dim=-1).min())


def table(title: str, unit: str, batch: int, variants: list[Variant], attr: str, inputs: torch.Tensor,
          repeats: int, baseline: str, peak: float) -> list[str]:
    runs = {v.name: getattr(v, attr) for v in variants if getattr(v, attr) is not None}
    flops = textbook_flops(runs[baseline] if baseline in runs else runs["kontrast fp32"], inputs)
    with torch.inference_mode():
        outputs = {name: fn(inputs) for name, fn in runs.items()}
        seconds = interleaved({name: (lambda fn=fn: fn(inputs)) for name, fn in runs.items()}, repeats)
    ref = outputs["kontrast fp32"]
    base = batch / seconds[baseline] if baseline in seconds else None
    header = f"| variant | {unit}/s | x {baseline} | GFLOP/s | x GEMM peak | max abs diff vs kontrast fp32 | min cosine |"
    lines = [f"\n{title}", "", header, "|---|---:|---:|---:|---:|---:|---:|"]
    best: tuple[float, str] | None = None
    for name in runs:
        rate = batch / seconds[name]
        diff, cos = accuracy(outputs[name], ref)
        ratio = f"{rate / base:.2f}" if base else "-"
        gflops = flops / seconds[name] / 1e9
        lines.append(f"| {name} | {rate:.1f} | {ratio} | {gflops:.0f} | {gflops / peak:.2f} | {diff:.1e} | {cos:.5f} |")
        if name.startswith("kontrast") and cos >= 0.999 and (best is None or rate > best[0]):
            best = (rate, name)
    if best is not None:
        ratio = f", {best[0] / base:.2f}x {baseline}" if base else ""
        lines.append(f"\nfastest kontrast path within cosine 0.999 of fp32: {best[1]} ({best[0]:.1f} {unit}/s{ratio})")
    lines.append(f"textbook forward: {flops / batch / 1e9:.2f} GFLOP per {unit[:-1]}")
    return lines


# ---------------------------------------------------------------------------------------------- zero-shot
def zeroshot(model_spec: str, threads: int, folder: Path) -> list[str]:
    """Top-1 on the emoji val_concepts splits, fp32 vs every fast path of the same model."""
    from kontrast.zeroshot import build_classifier

    samples = shard_samples("data/emoji/emoji-google-val_concepts-*.tar", 10_000)
    samples += shard_samples("data/emoji/emoji-twitter-val_concepts-*.tar", 10_000)
    names = sorted({meta["name"] for _, _, meta in samples})
    labels = torch.tensor([names.index(meta["name"]) for _, _, meta in samples])
    loaders: dict[str, dict[str, str]] = {"fp32": {}, "bf16": {"precision": "bf16"}, "onnx fp32": {"backend": "onnx"},
                                          "onnx int8": {"backend": "onnx", "precision": "int8"}}
    lines = [(f"\nzero-shot top-1, emoji val_concepts (Google + Twitter, {len(samples)} images, {len(names)} classes), "
              f"model {model_spec}"), "", "| variant | top-1 % | delta vs fp32 (points) |", "|---|---:|---:|"]
    base = None
    os.environ["KONTRAST_CACHE"] = str(folder / "zs_cache")
    for label, kwargs in loaders.items():
        model, preprocess, tokenizer = kontrast.load(model_spec, **kwargs)
        pixels = torch.stack([preprocess(png) for png, _, _ in samples])
        with torch.inference_mode():
            classifier = build_classifier(model, tokenizer, names, templates=["an emoji of {}."], cache=False)
            feats = torch.cat([model.encode_image(pixels[i:i + 32], normalize=True).float()
                               for i in range(0, len(pixels), 32)])
        top1 = float(((feats @ classifier.float().T).argmax(-1) == labels).float().mean()) * 100
        base = top1 if base is None else base
        lines.append(f"| {label} | {top1:.2f} | {top1 - base:+.2f} |")
    return lines


def default_zeroshot_model() -> str:
    try:
        from kontrast.api import default_model_path

        default_model_path()
        return "default"
    except kontrast.KontrastError:
        return str(SHARED / "fixtures" / "openai_vit.pt")


# ---------------------------------------------------------------------------------------------- main
def print_now(lines: list[str]) -> None:
    print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32", help="architecture (random weights, seed 0) or checkpoint")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image-batch", type=int, default=32)
    parser.add_argument("--text-batch", type=int, default=64)
    parser.add_argument("--long-text", action="store_true", help="also time 77-token captions (no truncation gain)")
    parser.add_argument("--reference", action="store_true", help="add the open_clip-equivalent reference too")
    parser.add_argument("--skip", default="", help="comma list: hf, peer-bf16, bf16, int8, onnx, image, text")
    parser.add_argument("--zeroshot", action="store_true", help="zero-shot top-1 of fp32 vs the fast paths")
    parser.add_argument("--zeroshot-model", default=None, help="model for --zeroshot (default: the embedded one)")
    parser.add_argument("--isa", choices=["avx2"], default=None,
                        help="rerun with every kernel library limited to AVX2 (see the module docstring)")
    args = parser.parse_args()
    if args.isa:  # the switches are read when the libraries load: set them for a fresh interpreter
        argv = [a for a in sys.argv[1:] if a not in ("--isa", args.isa) and not a.startswith("--isa=")]
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
        sys.exit(subprocess.run([sys.executable, __file__, *argv], env=env, check=False).returncode)
    args.skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.simplefilter("ignore", UserWarning)
    with tempfile.TemporaryDirectory(prefix="kontrast-bench-") as tmp:
        os.environ["KONTRAST_CACHE"] = str(Path(tmp) / "cache")  # ONNX exports of these weights stay in tmp
        run(args, Path(tmp))


def run(args: argparse.Namespace, folder: Path) -> None:
    """Build every variant on the same weights, time them, print the tables (and the zero-shot check)."""
    from kontrast.api import canonical_name

    if {"image", "text"} <= args.skip:  # only the zero-shot check
        if args.zeroshot:
            print_now(zeroshot(args.zeroshot_model or default_zeroshot_model(), args.threads, folder))
        return
    if canonical_name(args.model) and not Path(args.model).exists():
        model = kontrast.create_model(args.model).eval()
        preprocess, tokenizer = kontrast.Preprocess(model.image_size), kontrast.get_tokenizer(model)
    else:
        model, preprocess, tokenizer = kontrast.load(args.model)
    pixels, ids, long_ids = real_inputs(preprocess, tokenizer, args.image_batch, args.text_batch)
    notes: list[str] = []
    variants = build_variants(model, folder, args, notes)
    baseline = next((v.name for v in variants if v.name.startswith(("open_clip ", "open_clip-equivalent"))), "kontrast fp32")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    load_before = os.getloadavg()
    weights = "random weights, seed 0" if getattr(model, "checkpoint_path", None) is None else model.checkpoint_path
    print(f"# encode benchmark: {args.model} ({weights}), image {model.image_size}px")
    print(f"machine: {cpu}, {os.cpu_count()} cores; torch {torch.__version__} ({args.threads} threads), "
          f"python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"CPU instruction sets used: {kontrast.cpu.isa_label()}; bf16 native: {kontrast.cpu.native_bf16()}; "
          f"int8 VNNI: {kontrast.cpu.has_vnni()}")
    peaks = gemm_peak()
    print("fp32 GEMM peak (4096^3, best of 3): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()), flush=True)
    peak = max(peaks.values())
    if "image" not in args.skip:
        print_now(table(f"encode_image, batch {args.image_batch}, real images (median of {args.repeats} interleaved runs)",
                        "images", args.image_batch, variants, "image", pixels, args.repeats, baseline, peak))
    if "text" not in args.skip:
        length = int(ids.argmax(-1).max()) + 1
        print_now(table(f"encode_text, batch {args.text_batch}, real captions (longest {length} of 77 tokens)",
                        "texts", args.text_batch, variants, "text", ids, args.repeats, baseline, peak))
        if args.long_text:
            print_now(table(f"encode_text, batch {args.text_batch}, captions filling all 77 tokens",
                            "texts", args.text_batch, variants, "text", long_ids, args.repeats, baseline, peak))
    peaks_after = gemm_peak()
    print("\nfp32 GEMM peak at the end: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks_after.items())
          + f" (fractions above use {peak:.0f}, the start's best)")
    load_after = os.getloadavg()
    print(f"load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}; "
          f"CPU: {kontrast.cpu.isa_label()}")
    for note in notes:
        print(f"note: {note}")
    if args.zeroshot:
        spec = args.zeroshot_model or default_zeroshot_model()
        print_now(zeroshot(spec, args.threads, folder))


if __name__ == "__main__":
    main()
