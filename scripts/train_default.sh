#!/usr/bin/env bash
# Train the embedded default model and install it into the package (src/kontrast/assets/default_model).
# Run from the repository root, next to ../shared/data. About 45-60 minutes on a shared 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m kontrast train recipes/default_model.yaml "$@"
python - <<'PY'
import kontrast
model, _, _ = kontrast.load("runs/default_model/final")
kontrast.save(model, "src/kontrast/assets/default_model")
PY
python scripts/measure_default.py default
