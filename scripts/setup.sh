#!/usr/bin/env bash
# Create .venv (if missing) and install captioner into it with the extras in $EXTRAS
# (default "test,fast": pytest and the browser test's playwright, and ONNX Runtime, the fast CPU
# encoder; "ray": the Ray engine; "openvino": the other fast encoder runtime).
# torch/torchvision are pinned to the releases that ship for Python 3.11 CPU/CUDA wheels here;
# any torch >= 2.4 works (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${EXTRAS:-test,fast}
CHECK="import captioner, torch, torchvision, timm, fastapi, fastapi_offline"
case ",$EXTRAS," in *,test,*) CHECK="$CHECK, pytest, playwright" ;; esac
case ",$EXTRAS," in *,fast,*) CHECK="$CHECK, onnx, onnxruntime" ;; esac
case ",$EXTRAS," in *,openvino,*) CHECK="$CHECK, onnx, openvino" ;; esac
case ",$EXTRAS," in *,ray,*) CHECK="$CHECK, ray.data" ;; esac
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "$CHECK" 2>/dev/null; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/pip install --quiet -e ".[$EXTRAS]"
fi
