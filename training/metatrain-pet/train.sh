#!/usr/bin/env bash
# Train the small metatrain PET of tests/data/metatrain-pet-water.pt and export it.
#
#   . .venv/bin/activate                     # symbreak's environment (scripts/setup.sh)
#   pip install metatrain==2026.4.1          # once; it keeps torch 2.13.0
#   bash training/metatrain-pet/train.sh [WORKDIR]
#
# WORKDIR (default: a new temporary folder) gets metatrain's outputs/ and logs; the exported
# model is copied to tests/data/metatrain-pet-water.pt. One torch thread (OMP_NUM_THREADS=1,
# override by setting it), a few minutes of CPU.
set -euo pipefail
command -v mtt >/dev/null || { echo "mtt not found: pip install metatrain==2026.4.1" >&2; exit 1; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="${1:-$(mktemp -d -t metatrain-pet.XXXXXX)}"
mkdir -p "$work"
cd "$work"
cp "$here/options.yaml" options.yaml
ln -sf "$repo/data/water_revpbe0d3_160.xyz" water_revpbe0d3_160.xyz
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
echo "work folder: $work (OMP_NUM_THREADS=$OMP_NUM_THREADS)"

start=$(date +%s)
mtt train options.yaml --output model.pt 2>&1 | tee train.log
trained=$(date +%s)
# mtt train already writes model.pt; export the checkpoint explicitly, as a user of a
# checkpoint would, adding the metadata (name, description, references to the data's authors)
# and collecting the extensions folder, if any.
mtt export model.ckpt --output metatrain-pet-water.pt --extensions extensions \
    --metadata "$here/metadata.yaml" 2>&1 | tee export.log
echo "mtt train: $((trained - start)) s, mtt export: $(($(date +%s) - trained)) s"

mkdir -p "$repo/tests/data"
cp metatrain-pet-water.pt "$repo/tests/data/metatrain-pet-water.pt"
if [ -d extensions ] && [ -n "$(ls -A extensions)" ]; then
    echo "the model needs extensions: $work/extensions (load with extensions_directory=)"
fi
ls -l "$repo/tests/data/metatrain-pet-water.pt"
