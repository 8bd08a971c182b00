#!/usr/bin/env bash
# Create .venv (if missing) and install captioner with its test tools into it.
# torch/torchvision are pinned to the releases that ship for Python 3.11 CPU/CUDA wheels here;
# any torch >= 2.4 works (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import captioner, torch, torchvision, timm, pytest, fastapi, fastapi_offline, playwright" 2>/dev/null; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/pip install --quiet -e ".[test]"
fi
