"""Check that kontrast's exports of a model with its own preprocessing load in the REAL libraries.

    PYTHONPATH=src /work/peers/bin/python scripts/check_record_exports.py [--work DIR]

A model whose open_clip config says mean/std 0.5, bilinear interpolation and a squashing resize is loaded
with kontrast, fine-tuned one step (kontrast's trainer, which normalises with the model's own statistics),
saved, and exported as a Hugging Face CLIPModel folder and as an open_clip folder. Then:

- open_clip 3.3.0 ``create_model_and_transforms('local-dir:...')`` loads the open_clip export: its features
  and its preprocessing transform are compared with kontrast's;
- transformers 5.23 ``CLIPModel`` + ``CLIPImageProcessor`` load the HF export: features and ``pixel_values``
  are compared (transformers converts to RGB before resizing and resizes with its own backend, so RGB
  images are compared; see the printed note).

Not a test (the test suite runs without these libraries); prints one line per check with the largest
difference. Needs ../shared (fixtures and data) next to the repository.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from fixture_families.common import import_open_clip

SHARED = REPO.parent / "shared"
RGB_IMAGES = ["rgb_300x200", "rgb_97x311", "rgb_64x64"]
ALL_IMAGES = RGB_IMAGES + ["rgba_161x160", "gray_200x203", "palette_130x170"]


def build(work: Path) -> Path:
    """The fine-tuned, saved kontrast model (from the open_clip fixture with mean/std 0.5, bilinear, squash)."""
    from kontrast.train.config import TrainConfig
    from kontrast.train.loop import Trainer

    start = shutil.copytree(SHARED / "fixtures" / "open_clip_vit", work / "start")
    raw = json.loads((start / "open_clip_config.json").read_text())
    raw["preprocess_cfg"] = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "resize_mode": "squash"}
    (start / "open_clip_config.json").write_text(json.dumps(raw))
    cfg = TrainConfig.from_dict({"model": str(start), "train_data": str(SHARED / "data" / "emoji_sample" / "captions.csv"),
                                 "batch_size": 8, "steps": 1, "lr": 1e-3, "warmup": 1, "precision": "fp32",
                                 "threads": 1, "output": str(work / "run"), "tensorboard": False,
                                 "save_model": str(work / "tuned")})
    Trainer(cfg).run()
    return work / "tuned"


def report(name: str, diff: float, bound: float) -> bool:
    ok = diff <= bound
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max |diff| = {diff:.3g} (bound {bound:g})")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="kontrast-record-"))
    from PIL import Image

    import kontrast

    open_clip = import_open_clip()
    import transformers

    tuned, pre, tok = kontrast.load(build(work))
    print(f"kontrast model: {tuned.record.preprocess}")
    images = {n: Image.open(SHARED / "fixtures" / "preprocess" / f"{n}.png") for n in ALL_IMAGES}
    pixels = torch.stack([pre(images[n]) for n in ALL_IMAGES])
    texts = ["a photo of a cat", "an emoji of a red heart", ""]
    ids = tok(texts)
    with torch.no_grad():
        ref_img, ref_txt = tuned.encode_image(pixels), tuned.encode_text(ids)
    ok = True

    oc_dir = kontrast.export(tuned, work / "open_clip", format="open_clip")
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{oc_dir}")
    model.eval()
    oc_pixels = torch.stack([transform(images[n]) for n in ALL_IMAGES])
    ok &= report("open_clip preprocess vs kontrast (6 PNGs: RGB, RGBA, L, P)", float((oc_pixels - pixels).abs().max()), 0)
    oc_ids = open_clip.get_tokenizer(f"local-dir:{oc_dir}")(texts)
    ok &= report("open_clip token ids vs kontrast", float((oc_ids != ids).sum()), 0)
    with torch.no_grad():
        ok &= report("open_clip image features", float((model.encode_image(pixels) - ref_img).abs().max()), 1e-4)
        ok &= report("open_clip text features", float((model.encode_text(ids) - ref_txt).abs().max()), 1e-4)

    hf_dir = kontrast.export(tuned, work / "hf", format="hf")
    print(f"HF preprocessor_config.json: {json.loads((hf_dir / 'preprocessor_config.json').read_text())}")
    hf = transformers.CLIPModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        img = hf.get_image_features(pixel_values=pixels)
        txt = hf.get_text_features(input_ids=ids)
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    ok &= report("transformers CLIPModel image features", float((img - ref_img).abs().max()), 1e-4)
    ok &= report("transformers CLIPModel text features", float((txt - ref_txt).abs().max()), 1e-4)
    rgb = torch.stack([pre(images[n]) for n in RGB_IMAGES])
    for cls_name in ("CLIPImageProcessorPil", "CLIPImageProcessor"):
        cls = getattr(transformers, cls_name, None)
        if cls is None:
            print(f"skip {cls_name}: not in this transformers")
            continue
        try:
            proc = cls.from_pretrained(hf_dir)
            out = proc(images=[images[n] for n in RGB_IMAGES], return_tensors="pt")["pixel_values"]
        except (ImportError, RuntimeError) as exc:  # the torchvision backend needs torchvision's C ops
            print(f"skip {cls_name}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            continue
        diff = (out - rgb).abs()
        print(f"info {cls_name} pixel_values vs kontrast on RGB PNGs: max |diff| = {float(diff.max()):.3g}, "
              f"mean {float(diff.mean()):.3g} (1 grey level = {1 / 255 / 0.5:.3g})")
    print("note: transformers converts to RGB (onto white) BEFORE resizing; kontrast and open_clip convert after "
          "resizing, as OpenAI's CLIP did, so RGBA and palette images differ between them")
    print(f"work folder: {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
