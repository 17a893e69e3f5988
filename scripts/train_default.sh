#!/usr/bin/env bash
# Train the embedded default model (second generation) and install it into the package
# (src/kontrast/assets/default_model: weights, config, training_data.json, LICENSES/).
# Run from the repository root, next to ../shared/data:
#   1. scripts/build_training_data.py   ~37k image-caption pairs in 30 art styles -> ~/.cache/kontrast-data/shards
#                                         (installs the pinned npm / Debian packages there first; ~5 minutes)
#   2. recipes/default_model.yaml        stage 1: 5 epochs from the first default model (kontrast.load("default-v1")),
#                                         720 steps, 58 minutes on the shared 2-core CPU (median 54 samples/s)
#   3. recipes/default_model_finetune.yaml  stage 2: 1 epoch with the clip-art train split weighted x3, 167 steps,
#                                         13 minutes
#   4. kontrast.save of runs/default_model_ft/final + the data manifest and licence texts, then a measurement.
# The first default model ("default-v1") came from recipes/default_model_v1.yaml then
# recipes/default_model_v1_finetune.yaml on ../shared/data alone (see recipes/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${KONTRAST_DATA_CACHE:-$HOME/.cache/kontrast-data}"
python scripts/build_training_data.py --cache "$DATA"
python -m kontrast train recipes/default_model.yaml "$@"
python -m kontrast train recipes/default_model_finetune.yaml "$@"
python - "$DATA/shards" <<'PY'
import shutil, sys
from pathlib import Path

import kontrast

shards, dest = Path(sys.argv[1]), Path("src/kontrast/assets/default_model")
model, _, _ = kontrast.load("runs/default_model_ft/final")
kontrast.save(model, dest)
shutil.copyfile(shards / "manifest.json", dest / "training_data.json")
shutil.rmtree(dest / "LICENSES", ignore_errors=True)
shutil.copytree(shards / "LICENSES", dest / "LICENSES")
PY
python scripts/measure_default.py default
