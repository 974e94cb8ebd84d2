#!/usr/bin/env bash
# The GPU rows of bench/RESULTS.md in one command, on a machine that has torch, torchvision, timm
# and transformers but no network: open_clip (and ftfy, wcwidth) install from the wheels in
# bench/wheels/ (`make gpu-wheels` fills it here; carry that folder to the GPU machine).
#
#   bash bench/gpu.sh [--out gpu.json]            # one GPU: a few minutes on an H100 / H200
#   bash bench/gpu.sh --device cpu --setups rn50  # the same path on the CPU with tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import open_clip" 2>/dev/null; then
  ls bench/wheels/*.whl >/dev/null 2>&1 || { echo "gpu.sh: open_clip is not installed and bench/wheels/ holds no wheels (make gpu-wheels)" >&2; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps bench/wheels/*.whl
fi
PYTHONPATH="$PWD/src:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" bench/gpu.py "$@"
