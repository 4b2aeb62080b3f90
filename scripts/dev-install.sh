#!/usr/bin/env bash
# Reinstall the checkout into .venv after an edit (incremental C++ build in build/).
# Serialised with flock, so parallel sessions in one checkout do not race.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
exec flock /tmp/symbreak-dev-install.lock python -m pip install -q --no-build-isolation --no-deps .
