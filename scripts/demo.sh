#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh), then a short path-integral water run through
# i-PI with the shipped model, rotational averaging switched on partway, and a table of
# what changed (spread over rotations, net torque, cost per step).
# Usage: bash scripts/demo.sh [symbreak demo options, e.g. --steps 24 --average lebedev:3]
# SYMBREAK_SKIP_SETUP=1 skips the setup step (an already set-up checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SYMBREAK_SKIP_SETUP:-0}" != 1 ]; then
  bash scripts/setup.sh
fi
. .venv/bin/activate
# `symbreak demo` once the CLI lists it; the launcher module runs the same command before
if python -m symbreak --help 2>/dev/null | grep -qw demo; then
  exec python -m symbreak demo "$@"
fi
exec python -m symbreak.engines.launcher demo "$@"
