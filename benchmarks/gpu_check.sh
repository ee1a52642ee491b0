#!/usr/bin/env bash
# The GPU check (docs/performance.md, "The GPU path"): on a machine with a GPU and the project
# installed (`make install`, which picks the CUDA build of torch there), runs the GPU tests,
# trains a tiny 3D model with mixed precision, generates a small 3D protocol, and times a 256^3
# and a 512x512x256 volume; writes one JSON (default gpu_check.json, or $OUT/gpu_check.json).
# Installs nothing beyond the project; must finish in under 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" -c "import torch, medsynth" 2>/dev/null || { echo "gpu_check: medsynth is not installed for $PY (run make install)"; exit 2; }
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "gpu_check: no CUDA device visible to torch"; exit 2; }
DEST=${OUT:-.}/gpu_check.json
timeout 480 "$PY" benchmarks/gpu_check.py --device cuda --out "$DEST"
