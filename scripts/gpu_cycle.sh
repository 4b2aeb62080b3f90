#!/usr/bin/env bash
# One training cycle of the water model on a leased GPU machine, prepared so that its few
# minutes go to training rather than to setting up (docs/gpu_h200.md has the first run).
#
# The lent machine has python3 with a CUDA build of torch (the lender's version, not
# 2.13.0), numpy, scipy and tqdm, and no network. The other pure-Python dependencies
# travel as wheels, made here once from this environment's versions:
#   .venv/bin/pip download --no-deps -d .whl $(.venv/bin/pip freeze | grep -iE '^(ase|ipi|pybind11|scikit.build.core)==')
# then one call of the session's `run` tool (`.whl` is git-ignored, so it must be carried):
#   command: MINUTES=4 bash scripts/gpu_cycle.sh      carry: [".whl"]      timeout_s: 590
#
# Environment (defaults in brackets): MINUTES, the warmup + cosine schedule in minutes [4];
# FROM, the folder whose checkpoint.pt and history.jsonl are continued
# [training/water-revpbe0d3/grown]; CONFIG, the --model-config JSON, larger than the
# checkpoint's to grow it [the grown model's]; BATCH [8]; LR, the peak [3e-4]; DEVICE [cuda].
# Writes to $OUT (default ./gpu_cycle_out): dispatch.txt, train/ (checkpoint.pt,
# history.jsonl, train.log), errors_test.txt, errors_val.txt.
#
# Back here, copy $OUT/train into the folder and export for this torch (TorchScript files
# are tied to the torch that wrote them; checkpoints are not):
#   symbreak train <same options> --workdir FOLDER --resume --epochs <its last epoch>
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu_cycle_out}
MINUTES=${MINUTES:-4}
FROM=${FROM:-training/water-revpbe0d3/grown}
CONFIG=${CONFIG:-'{"three_body": true, "cutoff": 4.0, "three_body_cutoff": 4.0, "learned_cutoff": 4.0, "n_transformer_layers": 3}'}
BATCH=${BATCH:-8}
LR=${LR:-3e-4}
DEVICE=${DEVICE:-cuda}
T0=$(date +%s)
stage() { echo "[$(($(date +%s) - T0)) s] $*"; }
mkdir -p "$OUT/train"

stage "install"
if ! python3 -c "import symbreak._neighbors" 2>/dev/null; then
    site=/tmp/symbreak-site
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || exit 1
    export PYTHONPATH=$site PATH=$site/bin:$PATH
    python3 -m pip install -q --no-build-isolation --no-deps --no-index --target "$site" \
        -C cmake.define.SYMBREAK_LAMMPS=OFF . 2>&1 | tail -3
fi
python3 -c "import torch, symbreak; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1

W=$(mktemp -d)
S=$(mktemp -d)
trap 'rm -rf "$W" "$S"' EXIT
cp "$FROM/checkpoint.pt" "$FROM/history.jsonl" "$W/"
E0=$(python3 -c "import torch, sys; print(torch.load(sys.argv[1], weights_only=True, map_location='cpu')['epoch'])" "$W/checkpoint.pt")
train() {  # train SECONDS ARGS...: the options of the run that made the checkpoint, and ARGS
    local limit=$1
    shift
    timeout "$limit" python3 -m symbreak train --data data/water_revpbe0d3_160.xyz --quiet --model-config "$CONFIG" \
        --lr "$LR" --lr-min 5e-6 --warmup-steps 20 --energy-weight-start 300 \
        --energy-weight-end 300 --gas-weight 1 --gas-dimers 4 --threads 8 "$@"
}

stage "export the checkpoint for this torch (no training)"
cp "$W/checkpoint.pt" "$W/history.jsonl" "$S/"
train 300 --workdir "$S" --output "$S/start.pt" --resume --epochs "$E0" > "$S/export.log" 2>&1 ||
    { tail -5 "$S/export.log"; exit 1; }

stage "dispatch: kernel time against wall time"
timeout 90 python3 benchmarks/dispatch.py --device "$DEVICE" --model "$S/start.pt" \
    --batch "$BATCH" 2>&1 | tee "$OUT/dispatch.txt" | tail -12

stage "train for $MINUTES min from $FROM (epoch $E0)"
train $((MINUTES * 60 + 120)) --workdir "$W" --output "$W/model.pt" --resume \
    --device "$DEVICE" --new-schedule --epochs $((E0 + 5000)) --schedule-minutes "$MINUTES" \
    --batch-size "$BATCH" > "$W/train.log" 2>&1
echo "train exit $?"
grep "^epoch" "$W/train.log" | tail -4
cp "$W/checkpoint.pt" "$W/history.jsonl" "$W/train.log" "$OUT/train/"

stage "errors of the exported model"
if [ -f "$W/model.pt" ]; then
    for split in test val; do
        # the shipped file is refused by another torch: the new model alone
        timeout 120 python3 scripts/error_breakdown.py "$W/model.pt" \
            --data data/water_revpbe0d3_160.xyz --split $split --threads 8 \
            > "$OUT/errors_$split.txt" 2>&1
        tail -4 "$OUT/errors_$split.txt"
    done
fi
stage "done"
