"""Full neighbour lists of periodic liquid water: symbreak against vesin, matscipy and ASE.

Prints median wall times per call at equal thread counts (matscipy and ASE are single
threaded), the ratio symbreak / vesin, and checks every system's pair count against vesin.

    python benchmarks/neighbors.py [--sizes 192 1536 12288 98304] [--cutoffs 4 8]
                                   [--repeats 5] [--threads 1 2]

Systems: 192 atoms = the first frame of data/water_revpbe0d3_160.xyz; 1536 = the 512-H2O box
ipi_inputs/mts_water512/liquid_512h2o.xyz; 12288 and 98304 = its 2x2x2 and 4x4x4 repeats.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import time

import ase.io
import numpy as np
from ase.neighborlist import primitive_neighbor_list

from symbreak.neighbors import neighbor_list

from common import LIQUID_1536, WATER_160

ASE_LIMIT_S = 10.0  # skip ASE where one call would take longer than this (predicted)


def water(n_atoms: int) -> ase.Atoms:
    if n_atoms == 192:
        return ase.io.read(WATER_160, index=0)
    base = ase.io.read(LIQUID_1536)
    rep = round((n_atoms / len(base)) ** (1 / 3))
    if len(base) * rep**3 != n_atoms:
        raise SystemExit(f"no water box of {n_atoms} atoms (192, 1536 x k^3)")
    return base.repeat(rep)


def median_time(fn, repeats: int, budget_s: float = 20.0) -> tuple[float, object]:
    """Median seconds per call over `repeats` calls (fewer once `budget_s` is spent), after
    one untimed warm-up call unless calls are slow (then the first call counts)."""
    start = time.perf_counter()
    result = fn()
    first = time.perf_counter() - start
    times = [first] if first > 0.5 else []
    spent = first
    while len(times) < repeats and (spent < budget_s or not times):
        del result
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return statistics.median(times), result


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "skipped"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[192, 1536, 12288, 98304])
    parser.add_argument("--cutoffs", type=float, nargs="+", default=[4.0, 8.0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-ase", action="store_true", help="skip ASE entirely")
    parser.add_argument("--no-matscipy", action="store_true", help="skip matscipy")
    args = parser.parse_args()

    import vesin

    try:
        from matscipy.neighbours import neighbour_list as matscipy_list
    except ImportError:
        matscipy_list = None

    ase_ns_per_pair = None  # measured on the smallest system, to predict larger ones
    for threads in args.threads:
        print(f"\nthreads: {threads} (symbreak and vesin; matscipy and ASE use 1)")
        header = (
            f"{'atoms':>6} {'rc/Å':>5} {'pairs':>10} {'symbreak':>10} {'vesin':>10} "
            f"{'matscipy':>10} {'ASE':>10} {'sb/vesin':>8}"
        )
        print(header)
        print("-" * len(header))
        for n_atoms in args.sizes:
            atoms = water(n_atoms)
            pos = np.ascontiguousarray(atoms.positions)
            cell = np.ascontiguousarray(atoms.cell.array)
            for rc in args.cutoffs:
                run = functools.partial(neighbor_list, pos, cell, True, rc, n_threads=threads)
                t_sb, res = median_time(run, args.repeats)
                n_pairs = len(res[0])
                del res
                calc = vesin.NeighborList(cutoff=rc, full_list=True, n_threads=threads)
                run = functools.partial(calc.compute, pos, cell, True, quantities="ijSD")
                t_v, res = median_time(run, args.repeats)
                if len(res[0]) != n_pairs:
                    raise SystemExit(
                        f"pair count mismatch: symbreak {n_pairs}, vesin {len(res[0])}"
                    )
                del res, calc, run
                t_m = None
                if matscipy_list is not None and not args.no_matscipy and threads == 1:
                    run = functools.partial(
                        matscipy_list, "ijSD", positions=pos, cell=cell, pbc=[True] * 3, cutoff=rc
                    )
                    t_m, res = median_time(run, args.repeats)
                    if len(res[0]) != n_pairs:
                        raise SystemExit(f"matscipy found {len(res[0])} pairs, not {n_pairs}")
                    del res
                t_a = None
                predicted = ase_ns_per_pair * n_pairs * 1e-9 if ase_ns_per_pair else 0.0
                if not args.no_ase and threads == 1 and predicted < ASE_LIMIT_S:
                    run = functools.partial(
                        primitive_neighbor_list,
                        "ijSD",
                        [True] * 3,
                        cell,
                        pos,
                        rc,
                        self_interaction=False,
                    )
                    t_a, res = median_time(run, args.repeats, budget_s=ASE_LIMIT_S)
                    if len(res[0]) != n_pairs:
                        raise SystemExit(f"ASE found {len(res[0])} pairs, not {n_pairs}")
                    del res
                    # small boxes cost ASE more per pair (periodic images): predict larger
                    # systems from the cheapest rate seen
                    rate = t_a / n_pairs * 1e9
                    ase_ns_per_pair = min(ase_ns_per_pair or rate, rate)
                gc.collect()
                print(
                    f"{n_atoms:>6} {rc:>5.1f} {n_pairs:>10} {fmt(t_sb):>10} {fmt(t_v):>10} "
                    f"{fmt(t_m) if threads == 1 else 'n/a':>10} "
                    f"{fmt(t_a) if threads == 1 else 'n/a':>10} {t_sb / t_v:>8.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
