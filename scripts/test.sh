#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole default test suite.
# Slow physics runs are marked `slow` and run with: bash scripts/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python -m pytest "$@"
