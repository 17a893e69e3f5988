"""SigLIP B/16 encode speed: kontrast vs open_clip vs transformers on the same (random, real-size) weights.

    PYTHONPATH=src /work/peers/bin/python benchmarks/encode_siglip.py [--threads 2] [--batch 8] [--texts 32]

kontrast builds a SigLIP ViT-B/16 (timm trunk ``vit_base_patch16_siglip_224``: width 768, 12 layers, 12 heads;
text width 768, 12 layers, vocabulary 32000, context 64) with random weights, writes it as an open_clip folder and
a Hugging Face ``SiglipModel`` folder, and each library loads its own folder. The towers run interleaved
(median of ``--repeats``) on the same pixels and token ids; the table gives ms per batch, the ratio to kontrast and
the largest feature difference to kontrast (timm uses exact GELU, so the HF folder says ``gelu`` too). The CPU and
its flags are printed with the figures (from ``kontrast.cpu``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from encode import import_open_clip, interleaved

from kontrast import cpu
from kontrast.checkpoints import siglip_io
from kontrast.checkpoints.siglip_formats import TIMM_SIGLIP_TRUNKS
from kontrast.models.siglip import SigLIP, SigLIPConfig, SigLIPTowerConfig


def build() -> SigLIP:
    size, patch, width, depth, heads, hidden, act = TIMM_SIGLIP_TRUNKS["vit_base_patch16_siglip_224"]
    config = SigLIPConfig(SigLIPTowerConfig(width, depth, heads, hidden, act),
                          SigLIPTowerConfig(768, 12, 12, 3072, "gelu"), size, patch, 32000, 64)
    torch.manual_seed(0)
    model = SigLIP(config)
    model.init_weights()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build()
    pixels = torch.randn(args.batch, 3, 224, 224)
    ids = torch.randint(0, 32000, (args.texts, 64))
    print(f"CPU: {cpu.cpu_model()}; {cpu.isa_label()}; torch {torch.__version__}; threads {args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        oc_dir, hf_dir = Path(tmp) / "oc", Path(tmp) / "hf"
        siglip_io.save(model, oc_dir, "open_clip")
        siglip_io.save(model, hf_dir, "hf")
        runners = {"kontrast": model}
        open_clip, note = import_open_clip()
        if open_clip is not None:
            runners["open_clip"] = open_clip.create_model(f"local-dir:{oc_dir}").eval()
        else:
            print(note)
        try:
            from transformers import SiglipModel

            runners["transformers"] = SiglipModel.from_pretrained(str(hf_dir), attn_implementation="sdpa").eval()
        except ImportError as exc:
            print(f"transformers not importable ({exc})")
        with torch.inference_mode():
            image = {name: _image_fn(name, m, pixels) for name, m in runners.items()}
            text = {name: _text_fn(name, m, ids) for name, m in runners.items()}
            for title, fns, n in (("image tower", image, args.batch), ("text tower", text, args.texts)):
                reference = fns["kontrast"]()
                times = interleaved(fns, args.repeats)
                print(f"\n{title}, batch {n} (ms per batch; ratio = time / kontrast; max |feature - kontrast|)")
                for name, fn in fns.items():
                    diff = float((fn().float() - reference.float()).abs().max())
                    print(f"  {name:<13} {times[name] * 1000:9.1f} ms   x{times[name] / times['kontrast']:.2f}   {diff:.2e}")


def _image_fn(name: str, model, pixels: torch.Tensor):
    if name == "transformers":
        return lambda: model.get_image_features(pixel_values=pixels).pooler_output
    return lambda: model.encode_image(pixels)


def _text_fn(name: str, model, ids: torch.Tensor):
    if name == "transformers":
        return lambda: model.get_text_features(input_ids=ids).pooler_output
    return lambda: model.encode_text(ids)


if __name__ == "__main__":
    main()
