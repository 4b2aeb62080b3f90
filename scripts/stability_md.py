"""Stability of a model in liquid-water MD: Langevin NVT through ASE, bonds watched.

Runs ``--ps`` ps of NVT (``--temperature`` K, ``--timestep`` fs, Langevin friction
``--friction`` 1/fs) of a water box with :class:`symbreak.ase.SymbreakCalculator` (plain
model unless ``--average``), starting from a frame of the training data (64 H2O): by default
the one whose O–H bonds are closest to 0.97 Å (the data hold hot, distorted frames with
bonds outside the checked range).
Molecules are found by distance at the start (each O with its two nearest H); every
``--every`` steps the intramolecular O–H distances are checked against
[``--oh-min``, ``--oh-max``] Å and every O–O distance against ``--oo-min`` Å (a molecule
pushed into another: where a model without short-range physics collapses). The run stops
at the first violation. Writes a JSON summary
and a PNG (O–H extremes and temperature against time) to ``--out``.

Usage: ``python scripts/stability_md.py [--model water-revpbe0d3] [--ps 10] [--threads 2]
[--out runs/stability]``; exit code 0 if every bond stayed in range, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="water-revpbe0d3")
    p.add_argument("--data", default=str(REPO / "data" / "water_revpbe0d3_160.xyz"))
    p.add_argument(
        "--frame", type=int, help="start frame (default: the one with the most regular bonds)"
    )
    p.add_argument("--ps", type=float, default=10.0, help="simulated time (ps)")
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction (1/fs)")
    p.add_argument("--average", default="none", help="averaging policy (default: plain)")
    p.add_argument("--every", type=int, default=10, help="steps between bond checks")
    p.add_argument("--oh-min", type=float, default=0.75)
    p.add_argument("--oh-max", type=float, default=1.35)
    p.add_argument("--oo-min", type=float, default=2.2)
    p.add_argument(
        "--rdf-after", type=float, default=1.0, help="ps of equilibration before g_OO frames"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/stability")
    args = p.parse_args(argv)

    import ase.io
    import torch
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from tqdm import tqdm

    from symbreak.analysis.molecules import find_waters, water_geometry
    from symbreak.analysis.report import new_figure, save_figure
    from symbreak.ase import SymbreakCalculator

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frames = (
        ase.io.read(args.data, ":") if args.frame is None else [ase.io.read(args.data, args.frame)]
    )

    def bond_lengths(a, waters) -> np.ndarray:
        """Intramolecular O–H distances (M, 2) Å."""
        oh = water_geometry(a.positions, a.cell.array, a.pbc, waters).oh
        return np.linalg.norm(oh, axis=-1)

    def irregularity(a) -> float:
        try:
            w = find_waters(a.get_chemical_symbols(), a.positions, a.cell.array, a.pbc)
        except ValueError:  # a frame with a stretched-off proton
            return np.inf
        return float(np.abs(bond_lengths(a, w) - 0.97).max())

    best = min(range(len(frames)), key=lambda k: irregularity(frames[k]))
    atoms = frames[best]
    start_frame = args.frame if args.frame is not None else best
    atoms.calc = SymbreakCalculator(model=args.model, average=args.average)
    atoms.set_constraint(FixCom())
    waters = find_waters(atoms.get_chemical_symbols(), atoms.positions, atoms.cell.array, atoms.pbc)
    rng = np.random.default_rng(args.seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=args.temperature, rng=rng)
    Stationary(atoms)
    dyn = Langevin(
        atoms,
        args.timestep * units.fs,
        temperature_K=args.temperature,
        friction=args.friction / units.fs,
        fixcm=False,  # FixCom instead (ASE 3.28+: fixcm=True samples NVT only approximately)
        rng=rng,
    )
    n_steps = int(round(args.ps * 1000 / args.timestep))
    oxygens = np.flatnonzero(atoms.numbers == 8)

    def shortest_oo(a) -> float:
        d = a[oxygens].get_all_distances(mic=True)
        return float(d[np.triu_indices(len(oxygens), 1)].min())

    times, oh_lo, oh_hi, oo_lo, temps, epot = [], [], [], [], [], []
    rdf_frames = []  # positions every --every steps after --rdf-after ps, for g_OO
    failure = None

    t0 = time.perf_counter()
    with tqdm(total=n_steps, desc="NVT", unit="step", file=sys.stderr) as bar:
        for step in range(0, n_steps + 1, args.every):
            if step > 0:
                dyn.run(args.every)
                bar.update(args.every)
            r = bond_lengths(atoms, waters)
            times.append(step * args.timestep / 1000)
            oh_lo.append(float(r.min()))
            oh_hi.append(float(r.max()))
            oo_lo.append(shortest_oo(atoms))
            if times[-1] >= args.rdf_after:
                rdf_frames.append(atoms.get_positions(wrap=True))
            temps.append(float(atoms.get_temperature()))
            epot.append(float(atoms.get_potential_energy()))
            bar.set_postfix(
                T=f"{temps[-1]:.0f}K", OH=f"{oh_lo[-1]:.2f}-{oh_hi[-1]:.2f}", OO=f"{oo_lo[-1]:.2f}"
            )
            if r.min() < args.oh_min or r.max() > args.oh_max:
                m, h = np.unravel_index(np.argmax(np.abs(r - 1.0)), r.shape)
                failure = (
                    f"at {times[-1]:.3f} ps: O {waters[m, 0]} - H {waters[m, h + 1]} is "
                    f"{r[m, h]:.3f} Å (allowed {args.oh_min}-{args.oh_max})"
                )
                break
            if oo_lo[-1] < args.oo_min:
                failure = (
                    f"at {times[-1]:.3f} ps: an O–O distance is {oo_lo[-1]:.3f} Å (< {args.oo_min})"
                )
                break
    wall = time.perf_counter() - t0
    g_oo = {}
    if len(rdf_frames) > 10:
        from symbreak.analysis.rdf import rdf

        result = rdf(np.array(rdf_frames), atoms.cell.array, atoms.get_chemical_symbols(), "OO")
        g_oo = result.summary()
    summary = {
        "model": args.model,
        "start_frame": start_frame,
        "average": args.average,
        "atoms": len(atoms),
        "molecules": len(waters),
        "target_ps": args.ps,
        "simulated_ps": times[-1],
        "timestep_fs": args.timestep,
        "temperature_K": args.temperature,
        "mean_temperature_K": float(np.mean(temps[len(temps) // 5 :])),
        "oh_min_A": min(oh_lo),
        "oh_max_A": max(oh_hi),
        "oo_min_A": min(oo_lo),
        "stable": failure is None,
        "failure": failure,
        "wall_seconds": wall,
        "seconds_per_step": wall / max(len(times) - 1, 1) / args.every,
        "g_OO": g_oo,
    }
    (out / f"stability_{args.temperature:.0f}K.json").write_text(json.dumps(summary, indent=1))
    fig, (ax1, ax2) = new_figure(2, 1, size=(7, 5))
    ax1.plot(times, oh_lo, label="shortest O–H")
    ax1.plot(times, oh_hi, label="longest O–H")
    ax1.axhspan(args.oh_min, args.oh_max, color="0.9", zorder=0, label="allowed")
    ax1.set_ylabel("O–H distance (Å)")
    ax1.legend(fontsize=8)
    ax2.plot(times, temps)
    ax2.axhline(args.temperature, color="k", lw=0.8)
    ax2.set_xlabel("time (ps)")
    ax2.set_ylabel("T (K)")
    ax1.set_title(f"{args.model}, {len(waters)} H2O, Langevin NVT {args.temperature:.0f} K")
    save_figure(fig, out / f"stability_{args.temperature:.0f}K.png")
    brief = {k: v for k, v in summary.items() if k != "g_OO"}
    brief["g_OO first peak"] = {k: v for k, v in g_oo.items() if k not in ("r", "g")}
    print(json.dumps(brief, indent=1))
    return 0 if failure is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
