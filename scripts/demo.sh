#!/usr/bin/env bash
# One command on a fresh machine: set up .venv, then run the demo (prepare shapes, train ~5 min
# on CPU, evaluate, caption and draw attention). Extra arguments go to `captioner demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/captioner demo "$@"
