#!/usr/bin/env bash
# Create .venv (if missing) and install captioner into it with the extras in $EXTRAS
# (default "test": pytest and the browser test's playwright; "ray": the Ray engine).
# torch/torchvision are pinned to the releases that ship for Python 3.11 CPU/CUDA wheels here;
# any torch >= 2.4 works (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${EXTRAS:-test}
CHECK="import captioner, torch, torchvision, timm, fastapi, fastapi_offline"
case ",$EXTRAS," in *,test,*) CHECK="$CHECK, pytest, playwright" ;; esac
case ",$EXTRAS," in *,ray,*) CHECK="$CHECK, ray.data" ;; esac
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "$CHECK" 2>/dev/null; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/pip install --quiet -e ".[$EXTRAS]"
fi
