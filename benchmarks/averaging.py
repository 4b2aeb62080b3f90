"""Cost of rotational averaging: one batched call against K separate plain calls.

For each system size and grid (K rotations) this times

* **batched**: one ``Evaluator.compute`` with the grid policy (energy + forces; the K
  rotated copies go through the exported model in chunks of ``rotation_batch``, split
  over ``workers`` parallel threads, each with threads/workers torch threads), and
* **separate**: what a naive loop or i-PI's ``<ffrotations>`` does: K plain calls, each on
  its own rotated structure (neighbour list, model, back-rotation of the forces). All K
  calls cost the same, so the separate time is K x the fastest of ``--separate-calls`` timed
  calls (each with its own rotation of the grid); the table says how many were run.

Each case runs in its own subprocess, which reports its wall and CPU time and the growth
of its peak resident memory (``ru_maxrss``) over the evaluations, i.e. the memory the
evaluation needs on top of the loaded model and structure. Every subprocess first warms
the model up with three plain calls on a 24-atom structure (TorchScript runs its first
calls differently when its optimising executor is on, ``--jit-optimize``).

Both sides get the same ``--threads`` (default: every core of the machine); the goal is a
wall-time ratio batched/separate <= 0.7. CPU times (summed over threads) are printed too:
parallel workers save wall time, not arithmetic.

Usage: ``python benchmarks/averaging.py [--model PATH] [--sizes 192,1536] [--repeats 1]
[--threads N] [--workers auto,1]``; without ``--model`` a default-size random PET is
exported to a temporary file (the cost of the trained model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import export_random_model, water


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def worker(case: dict) -> dict:
    """Run one case in this process; returns times (s) and peak-memory growth (MB)."""
    import torch

    torch.set_num_threads(case["threads"])
    import symbreak.evaluator
    from symbreak.evaluator import Evaluator, Structure

    symbreak.evaluator.JIT_OPTIMIZE = case["jit_optimize"]
    from symbreak.rotations import AveragingPolicy

    ev = Evaluator(
        case["model"],
        rotation_batch=case["rotation_batch"],
        workers=case["workers"],
        device=case.get("device", "cpu"),
    )
    atoms = water(case["size"])
    structure = Structure.from_atoms(atoms)
    n_edges = len(ev.graph(structure).centers)
    small = atoms[:24]
    small.set_cell([8.0, 8.0, 8.0])
    for _ in range(3):  # TorchScript: profiling run, optimisation run, steady state
        ev.compute(Structure.from_atoms(small), "none")
    rss0 = _maxrss_mb()
    policy = AveragingPolicy.parse(case["grid"])
    R, w = policy.rotations()
    wall, cpu = [], []
    if case["mode"] == "batched":
        for _ in range(case["repeats"]):
            t0, c0 = time.perf_counter(), time.process_time()
            res = ev.compute(structure, policy)[0]
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        assert res.diagnostics["n_rotations"] == len(w)
    else:
        n_calls = min(case["separate_calls"], len(w))
        picks = np.random.default_rng(0).choice(len(w), n_calls, replace=False)
        forces = np.zeros((len(atoms), 3))
        for k in picks:
            t0, c0 = time.perf_counter(), time.process_time()
            rotated = Structure(
                atoms.numbers, atoms.positions @ R[k].T, atoms.cell.array @ R[k].T, atoms.pbc
            )
            res = ev.compute(rotated, "none")[0]
            forces += w[k] * (res.forces @ R[k])  # back to the lab frame: R_kᵀ F(R_k x)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {
        "n_edges": n_edges,
        "k": len(w),
        "calls": len(wall),
        # best of n on both sides (the noise of shared machines only ever adds time)
        "wall": float(np.min(wall)),
        "cpu": float(np.min(cpu)),
        "peak_mb": _maxrss_mb() - rss0,
    }


def run_case(case: dict) -> dict:
    """Run ``worker(case)`` in a fresh Python (its own peak memory), with the same installed
    symbreak as this one."""
    env = dict(os.environ, OMP_NUM_THREADS=str(case["threads"]))
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(case)],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode != 0:
        raise RuntimeError(f"case {case} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="exported model (default: a random default-size PET)")
    parser.add_argument("--sizes", default="192,1536", help="atoms per system (192·m³)")
    parser.add_argument("--grids", default="lebedev:3,lebedev:5", help="averaging grids")
    parser.add_argument(
        "--rotation-batches",
        default="auto,1",
        help="rotation_batch values of the batched runs ('auto': the evaluator's choice)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="batched calls per case (min)")
    parser.add_argument("--separate-calls", type=int, default=6, help="plain calls timed")
    parser.add_argument(
        "--workers",
        default="auto,1",
        help="parallel rotation workers of the batched runs ('auto': the evaluator's choice)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads of every run, batched and separate (default: all cores)",
    )
    parser.add_argument(
        "--max-chunk-edges",
        type=int,
        default=200_000,
        help="skip batched cases with more rotated edges per chunk (memory guard)",
    )
    parser.add_argument(
        "--jit-optimize",
        action="store_true",
        help="run TorchScript with its optimising executor (the evaluator turns it off)",
    )
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda[:N]")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    from symbreak.evaluator import rotation_plan

    tmp = tempfile.TemporaryDirectory(prefix="symbreak-bench-")
    model = args.model or str(export_random_model(Path(tmp.name) / "random-default.pt"))
    sizes = [int(s) for s in args.sizes.split(",")]
    grids = args.grids.split(",")
    batches = [None if b == "auto" else int(b) for b in args.rotation_batches.split(",")]
    workers = [None if x == "auto" else int(x) for x in args.workers.split(",")]
    base = {
        "model": model,
        "threads": args.threads,
        "repeats": args.repeats,
        "separate_calls": args.separate_calls,
        "jit_optimize": args.jit_optimize,
        "device": args.device,
    }
    print(f"model: {args.model or 'random default-size PET (PETConfig())'}, float32, ", end="")
    print(
        f"device {args.device}, {args.threads} thread(s), TorchScript optimising executor ", end=""
    )
    print("on" if args.jit_optimize else "off")
    header = (
        f"{'atoms':>6} {'edges':>6} {'grid':>10} {'K':>4} {'wrk':>4} {'batch':>6} | "
        f"{'batched s':>9} {'cpu s':>7} | {'separate s':>10} {'cpu s':>7} {'calls':>5} | "
        f"{'ratio':>5} {'cpu':>5} | {'peak MB':>7} {'sep. MB':>7}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for size in sizes:
        sep = None
        for grid in grids:
            if sep is None:  # per-call cost is independent of the grid: measure once
                case = base | {"size": size, "grid": grid, "mode": "separate"}
                sep = run_case(case | {"rotation_batch": None, "workers": 1})
            k = len(_grid_weights(grid))
            seen = set()
            for n_workers in workers:
                for batch in batches:
                    # the evaluator's own choice, known before running
                    shape = rotation_plan(k, sep["n_edges"], args.threads, n_workers, batch)
                    if shape in seen:  # 'auto' chose a shape already measured
                        continue
                    seen.add(shape)
                    chunk_edges = shape[0] * shape[1] * sep["n_edges"]
                    if chunk_edges > args.max_chunk_edges:
                        print(f"{size:>6} {grid:>10} skipped: {chunk_edges} edges in flight")
                        continue
                    case = base | {"size": size, "grid": grid, "mode": "batched"}
                    res = run_case(case | {"rotation_batch": shape[1], "workers": shape[0]})
                    label_w = f"{shape[0]}" + ("*" if n_workers is None else "")
                    label_b = f"{shape[1]}" + ("*" if batch is None else "")
                    lead = (
                        f"{size:>6} {sep['n_edges']:>6} {grid:>10} {k:>4} {label_w:>4} "
                        f"{label_b:>6} | "
                    )
                    sep_wall, sep_cpu = k * sep["wall"], k * sep["cpu"]
                    row = {
                        "atoms": size,
                        "edges": sep["n_edges"],
                        "grid": grid,
                        "k": k,
                        "workers": shape[0],
                        "rotation_batch": shape[1],
                        "auto_workers": n_workers is None,
                        "auto_batch": batch is None,
                        "threads": args.threads,
                        "batched_wall_s": res["wall"],
                        "batched_cpu_s": res["cpu"],
                        "separate_wall_s": sep_wall,
                        "separate_cpu_s": sep_cpu,
                        "separate_calls_timed": sep["calls"],
                        "ratio_wall": res["wall"] / sep_wall,
                        "ratio_cpu": res["cpu"] / sep_cpu,
                        "peak_mb_batched": res["peak_mb"],
                        "peak_mb_separate": sep["peak_mb"],
                    }
                    rows.append(row)
                    print(
                        f"{lead}{res['wall']:>9.2f} {res['cpu']:>7.2f} | "
                        f"{sep_wall:>10.2f} {sep_cpu:>7.2f} {sep['calls']:>5} | "
                        f"{row['ratio_wall']:>5.2f} {row['ratio_cpu']:>5.2f} | "
                        f"{res['peak_mb']:>7.0f} {sep['peak_mb']:>7.0f}",
                        flush=True,
                    )
    print(
        "wrk: parallel rotation workers, batch: rotations per model call (* = automatic); "
        "separate = K x fastest\nof the timed plain calls (same threads); ratio = "
        "batched/separate wall time (goal <= 0.7); peak MB = growth\nof the peak RSS "
        "during the evaluations."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def _grid_weights(spec: str) -> np.ndarray:
    from symbreak.rotations import AveragingPolicy

    return AveragingPolicy.parse(spec).rotations()[1]


if __name__ == "__main__":
    sys.exit(main())
