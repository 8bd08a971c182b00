#!/usr/bin/env bash
# One command on a fresh machine: set up .venv (with the fast encoder runtimes, and the Ray
# extra, whose engine the tests run on a local instance), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test,fast,openvino,ray bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
