#!/usr/bin/env bash
# Relax the nine ice Ih cells with the plain and the averaged model.
# Usage: bash ipi_inputs/ice_geop/run_all.sh [extra symbreak run options, e.g. --model FILE]
# Results: runs/ice/<cell>-<plain|averaged>/sim.out (last line: final potential energy).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for cell in "$here"/ice_ih_*.xyz; do
  name="$(basename "$cell" .xyz)"
  for mode in plain averaged; do
    avg=()
    [ "$mode" = averaged ] && avg=(--average lebedev:3+inv)
    symbreak run "$here/input.xml" --structure "$cell" "${avg[@]}" \
      --run-dir "runs/ice/$name-$mode" --progress lines "$@"
  done
done
for f in runs/ice/*/sim.out; do
  printf '%s %s eV\n' "$(dirname "$f")" "$(tail -n 1 "$f" | awk '{print $2}')"
done
