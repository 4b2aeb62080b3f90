#!/usr/bin/env bash
# The model, averaging and path-integral benchmarks on a CUDA device, against the CPU in the
# same run. After the README's setup, on a machine with an NVIDIA GPU and a CUDA build of
# torch==2.13.0 (the CPU wheel of the setup sees no GPU):
#   bash benchmarks/gpu.sh [cuda:N]          # prints the tables; ~10 min
# CI has no GPU: tests/test_device.py checks the CPU path of the same option and runs its
# CUDA tests only where a device is visible.
set -euo pipefail
device=${1:-cuda}
here=$(cd "$(dirname "$0")" && pwd)
python - "$device" <<'PY'
import sys, torch
device = sys.argv[1]
if not torch.cuda.is_available():
    raise SystemExit(f"benchmarks/gpu.sh: torch {torch.__version__} sees no CUDA device "
                     "(install a CUDA build of torch==2.13.0)")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(torch.device(device))}")
PY
echo "== tests of the device path (float64, GPU against CPU)"
python -m pytest -q "$here/../tests/test_device.py"
echo "== energy + forces, float32: CPU (1 thread) then $device"
python "$here/model.py" --sizes 192,1536,12288 --repeats 5 --threads 1
python "$here/model.py" --sizes 192,1536,12288,98304 --repeats 20 --device "$device"
echo "== rotational averaging (18 and 70 rotations), $device"
python "$here/averaging.py" --sizes 192,1536 --grids lebedev:3,lebedev:5 --workers 1 \
    --rotation-batches auto --device "$device"
echo "== kernels against dispatch: served calls and a training step, $device"
python "$here/dispatch.py" --device "$device"
echo "== 8-bead PIMD of 64 H2O through i-PI, 20 steps: CPU then $device"
for d in cpu "$device"; do
    start=$(date +%s.%N)
    symbreak run "$here/../ipi_inputs/pimd_water64/input.xml" --steps 20 --device "$d" \
        --run-dir "$(mktemp -d)/pimd-$d" --progress-interval 1000 > /dev/null
    echo "pimd 20 steps on $d: $(python -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)") s"
done
