#!/usr/bin/env bash
# Train the embedded default model (second generation) and install it into the package
# (src/kontrast/assets/default_model: weights, config, training_data.json, LICENSES/).
# Run from the repository root, next to ../shared/data:
#   1. scripts/build_training_data.py   ~37k image-caption pairs in 30 art styles -> ~/.cache/kontrast-data/shards
#                                         (installs the pinned npm / Debian packages there first; ~5 minutes)
#   2. recipes/default_model_v2.yaml     16 epochs from the first default model (kontrast.load("default-v1")) on the
#                                         built data + the clip-art train split weighted x3, logit scale started at
#                                         30, zoom-out crops; 2,672 steps, ~85 minutes on the 2-core CPU
#   3. kontrast.save of runs/default_model_v2/final + the data manifest and licence texts, then a measurement.
# The first run of the second generation (recipes/default_model.yaml then recipes/default_model_finetune.yaml,
# 5 + 1 epochs, logit scale left at 18-19) is described in recipes/README.md.
# The first default model ("default-v1") came from recipes/default_model_v1.yaml then
# recipes/default_model_v1_finetune.yaml on ../shared/data alone (see recipes/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${KONTRAST_DATA_CACHE:-$HOME/.cache/kontrast-data}"
python -c "import resvg_py" 2>/dev/null || pip install resvg-py==0.5.0   # the SVG renderer the data build needs
python scripts/build_training_data.py --cache "$DATA"
python -m kontrast train recipes/default_model_v2.yaml "$@"
python - "$DATA/shards" <<'PY'
import shutil, sys
from pathlib import Path

import kontrast

shards, dest = Path(sys.argv[1]), Path("src/kontrast/assets/default_model")
model, _, _ = kontrast.load("runs/default_model_v2/final")
kontrast.save(model, dest)
shutil.copyfile(shards / "manifest.json", dest / "training_data.json")
shutil.rmtree(dest / "LICENSES", ignore_errors=True)
shutil.copytree(shards / "LICENSES", dest / "LICENSES")
PY
python scripts/measure_default.py default
