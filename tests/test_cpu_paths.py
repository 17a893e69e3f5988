"""CPU feature detection and fallbacks: every fast path runs (or says why not) on a CPU with fewer features.

A narrow CPU is forced in a subprocess with the libraries' own switches (oneDNN limited to AVX2, ATen's
kernels to AVX2, MKL to AVX2), so this file covers an AVX2-only machine on any machine CI runs on.
onnxruntime has no such switch (MLAS dispatches on cpuid); its paths are tested in test_onnx.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import kontrast
from kontrast import cpu

FAMILIES = Path(__file__).parent / "fixtures" / "families"
NARROW = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}

# Runs under the narrow switches: load each fixture model in fp32 and bf16, encode fixed inputs, and
# report what the CPU module saw, the logged inference path, and the features.
NARROW_SCRIPT = r"""
import json, logging, sys, torch
import kontrast
from kontrast import cpu
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append((record.levelname, record.getMessage()))
logging.getLogger("kontrast").addHandler(Keep())
logging.getLogger("kontrast").setLevel(logging.INFO)
torch.manual_seed(0)
out = {"native_bf16": cpu.native_bf16(), "onednn_bf16": cpu.onednn_runs(torch.bfloat16),
       "onednn_fp32": cpu.onednn_runs(torch.float32), "label": cpu.isa_label(), "features": {}}
for path in sys.argv[1:]:
    name = path.rsplit("/", 1)[-1]
    for precision in ("fp32", "bf16"):
        model, _, tok = kontrast.load(path, precision=precision)
        pixels = torch.randn(3, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            img = model.encode_image(pixels).float()
            ids = tok(["a red bicycle", "an emoji of a cat", "x"])
            vocab = getattr(model, "vocab_size", None)  # tiny fixture vocabularies: keep the ids inside them
            txt = model.encode_text(ids if vocab is None else ids % vocab).float()
        out["features"][f"{name}/{precision}"] = [img.tolist(), txt.tolist()]
out["log"] = records
print(json.dumps(out))
"""


def run_narrow(*paths) -> dict:
    env = {**os.environ, **NARROW}
    proc = subprocess.run([sys.executable, "-c", NARROW_SCRIPT, *map(str, paths)], check=False, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cosine(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(torch.tensor(a), torch.tensor(b), dim=-1).min())


def test_bf16_runs_where_onednn_has_no_bf16_kernels(fixtures_dir):
    """The reported crash: oneDNN limited to AVX2 refuses bf16 inner products; bf16 must still run, close to fp32,
    in every tower family (ViT, ResNet, SigLIP, ConvNeXt)."""
    out = run_narrow(fixtures_dir / "openai_vit.pt", fixtures_dir / "openai_rn.pt", FAMILIES / "siglip_open_clip",
                     FAMILIES / "convnext_open_clip")
    assert out["onednn_fp32"] and not out["onednn_bf16"] and not out["native_bf16"]
    assert out["label"].startswith("AVX2"), out["label"]
    for name in ("openai_vit.pt", "openai_rn.pt", "siglip_open_clip", "convnext_open_clip"):
        (img32, txt32), (img16, txt16) = out["features"][f"{name}/fp32"], out["features"][f"{name}/bf16"]
        assert cosine(img16, img32) > 0.99 and cosine(txt16, txt32) > 0.99, name
    warnings = [msg for level, msg in out["log"] if level == "WARNING" and "inference path" in msg]
    assert warnings and all("no native bf16" in msg and "precision='auto'" in msg for msg in warnings), out["log"]
    infos = [msg for level, msg in out["log"] if level == "INFO" and "inference path: float32" in msg]
    assert infos, out["log"]


def test_fp32_under_narrow_isa_matches_this_process(fixtures_dir):
    """fp32 stays exact (same numbers to float rounding) whichever instruction set the kernels use."""
    out = run_narrow(fixtures_dir / "openai_vit.pt")
    model, _, tok = kontrast.load(fixtures_dir / "openai_vit.pt")
    pixels = torch.randn(3, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        img = model.encode_image(pixels)
        txt = model.encode_text(tok(["a red bicycle", "an emoji of a cat", "x"]))
    narrow_img, narrow_txt = out["features"]["openai_vit.pt/fp32"]
    assert (img - torch.tensor(narrow_img)).abs().max() < 1e-4
    assert (txt - torch.tensor(narrow_txt)).abs().max() < 1e-4


def test_signature_follows_isa_switches(monkeypatch):
    """The per-machine cache key changes when a library is told to use fewer instructions."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    base = cpu.signature()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu.signature() != base
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in cpu.isa_label()



TRAIN_SCRIPT = r"""
import json, torch
from kontrast.cpu import native_bf16, train_precision
from kontrast.train.config import TrainConfig
print(json.dumps({"default": TrainConfig().precision, "native": native_bf16(),
                  "auto": train_precision(TrainConfig().precision, torch.device("cpu"))}))
"""


def test_training_default_precision_follows_the_cpu():
    """A recipe's default precision is bf16 autocast only where bf16 is native: fp32 on an AVX2 CPU (where bf16
    autocast trains ~15x slower), bf16 on a CPU with AVX512_BF16/AMX."""
    results = {}
    for label, extra in (("narrow", NARROW), ("this", {})):
        env = {**{k: v for k, v in os.environ.items() if k not in NARROW}, **extra}
        proc = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT], check=False, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results["narrow"] == {"default": "auto", "native": False, "auto": "fp32"}
    this = results["this"]
    assert this["auto"] == ("bf16" if this["native"] else "fp32")
