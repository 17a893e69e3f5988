#!/usr/bin/env bash
# Train the embedded default model and install it into the package (src/kontrast/assets/default_model).
# Run from the repository root, next to ../shared/data. Two stages, ~21 + ~11 minutes on the shared 2-core CPU:
#   1. recipes/default_model.yaml           24 epochs from scratch (ViT image tower, locked MiniLM text tower)
#   2. recipes/default_model_finetune.yaml   8 epochs from stage 1, lower lr, caption_head 0.5
# The shipped weights were made with exactly these commands (stage 2 was first run as stage-1 recipe + flags:
#   --model runs/default_model/final --model-config null --epochs 8 --lr 3e-4 --warmup 20 --caption-head 0.5
#   --output runs/default_model_ft --save-model runs/default_model_ft/final, the same resolved config).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m kontrast train recipes/default_model.yaml "$@"
python -m kontrast train recipes/default_model_finetune.yaml "$@"
python - <<'PY'
import kontrast
model, _, _ = kontrast.load("runs/default_model_ft/final")
kontrast.save(model, "src/kontrast/assets/default_model")
PY
python scripts/measure_default.py default
