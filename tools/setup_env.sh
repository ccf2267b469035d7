#!/usr/bin/env bash
# Create ./.venv with everything the bundle, its tests and its benchmarks need. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision first and pinned: the versions this project is tested with
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[test,export]"
.venv/bin/python -c "import torch, torchvision, monai; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'monai', monai.__version__)"
