#!/usr/bin/env bash
# One command on a fresh machine: set up .venv, then run the whole test suite with pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
