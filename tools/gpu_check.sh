#!/usr/bin/env bash
# Measure a GPU machine in one command of at most 8 minutes (tools/gpu_check.py says what it runs).
#
#   bash tools/gpu_check.sh --prepare [SARTAJ]   # here: Sartaj resized into .gpu-data/ (~47 MB), and wheels
#                                                # of what the steps import that the GPU image lacks, plus
#                                                # brainmri's own, into .whl/ (both git-ignored)
#   bash tools/gpu_check.sh [--out FILE]         # there, with .gpu-data and .whl carried: one JSON line
#   bash tools/gpu_check.sh --dry                # the same steps, smaller, on this CPU
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

case "${1:-}" in
--prepare)
    "$python" tools/gpu_check.py --make-data "${2:-../shared/datasets/sartaj}" .gpu-data/sartaj
    rm -rf .whl
    "$python" tools/gpu_check.py --wheels .whl
    ls .whl
    ;;
--dry)
    exec "$python" tools/gpu_check.py --dry "${@:2}"
    ;;
*)
    if compgen -G ".whl/*.whl" >/dev/null; then
        # The GPU machine is bare and disposable: install into its interpreter, no path tricks.
        "$python" -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
    fi
    exec "$python" tools/gpu_check.py .gpu-data/sartaj "$@"
    ;;
esac
