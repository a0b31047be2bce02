#!/usr/bin/env bash
# Measure a GPU machine in one command of at most 8 minutes (tools/gpu_check.py says what it runs).
#
#   bash tools/gpu_check.sh --prepare [SARTAJ]   # here: Sartaj resized into .gpu-data/ (~47 MB), and
#                                                # wheels the GPU image lacks into .whl/ (both git-ignored)
#   bash tools/gpu_check.sh                      # there, with .gpu-data and .whl carried: one JSON line
#   bash tools/gpu_check.sh --dry                # every step, tiny, on this CPU
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
python=${PYTHON:-python3}

if [[ "${1:-}" == "--prepare" ]]; then
    "$python" tools/gpu_check.py --make-data "${2:-../shared/datasets/sartaj}" .gpu-data/sartaj
    # The GPU image has torch, timm, accelerate, torchmetrics, rich, safetensors, matplotlib,
    # scikit-learn and opencv, but not these; all pure Python (some ship only as source).
    "$python" -m pip wheel -q --no-deps -w .whl omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 grad-cam==1.5.5 ttach==0.0.3
    ls .whl
    exit 0
fi

export PYTHONPATH="$repo:${PYTHONPATH:-}"  # brainmri from this checkout, installed or not
if [[ "${1:-}" == "--dry" ]]; then
    exec "$python" tools/gpu_check.py --dry
fi
if compgen -G ".whl/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-check-site .whl/*.whl
    export PYTHONPATH="/tmp/gpu-check-site:$PYTHONPATH"
fi
exec "$python" tools/gpu_check.py "${1:-.gpu-data/sartaj}"
