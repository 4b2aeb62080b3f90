"""Scan water models where their data end: dimers, the H–O–H angle, a molecule pushed
into the liquid (the checks of ``symbreak.short_range``), as tables and one figure.

    python scripts/short_range_scan.py [MODEL ...] [--labels A,B] [--average lebedev:3]
        [--plot docs/short_range.png] [--data FRAMES.xyz]

MODEL: shipped names or files (default: water-revpbe0d3); several are compared. Float64.
Prints, per model: each dimer's energy (eV, relative to the atoms apart) and the force
along the bond (eV/Å, > 0 repulsive) at a few distances, its number of minima and its
largest |F| from 1.9 Å (O–O) or 0.6 Å (H–H); the bend from 100° to 20° (eV above 100°);
the push from O–O 2.6 to 1.8 Å (eV above 2.6 Å, largest |F|). ``--data``: the liquid frame
to push into (default: the first frame of the shipped training data, ``data/`` beside the
checkout or ``../shared/data``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ase.io
import numpy as np
import torch

from symbreak.engines.ase import SymbreakCalculator
from symbreak.scans import bend, dimer, energies_and_forces, minima, monotone, push

DISTANCES = np.round(np.arange(0.3, 3.41, 0.02), 3)
SHOWN = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5, 1.9, 2.0, 2.1, 2.4, 2.8]
ANGLES = np.arange(100.0, 19.0, -2.5)
PUSH = np.round(np.arange(2.6, 1.79, -0.05), 3)
DIMERS = {"H-H": ((1, 1), 0.6), "O-H": ((8, 1), None), "O-O": ((8, 8), 1.9)}


def default_frame() -> Path:
    here = Path.cwd()
    for candidate in (here / "data", here.parent / "shared" / "data"):
        if (candidate / "water_revpbe0d3_160.xyz").exists():
            return candidate / "water_revpbe0d3_160.xyz"
    raise SystemExit("no liquid frame found: pass --data FRAMES.xyz")


def scan(model: str, average: str, liquid) -> dict:
    calc = SymbreakCalculator(model, average=average, dtype=torch.float64)
    out = {}
    for name, (numbers, bounded_from) in DIMERS.items():
        e, f = energies_and_forces(dimer(numbers, DISTANCES), calc)
        apart = energies_and_forces(dimer(numbers, [9.0]), calc)[0][0]
        out[name] = (e - apart, f[:, 1, 0], bounded_from)
    e, _ = energies_and_forces(bend(ANGLES), calc)
    out["bend"] = e - e[0]
    e, f = energies_and_forces(push(liquid, PUSH), calc)
    out["push"] = (e - e[0], np.abs(f).max(axis=(1, 2)))
    return out


def bend_terms(model: str) -> dict[str, np.ndarray]:
    """The bend's energy (eV, relative to 100°) term by term, for a symbreak PET file:
    pair prior, three-body prior, learned part."""
    from symbreak import load_model
    from symbreak.graph import build_graph

    loaded = load_model(model)
    pet = loaded.module.inner.double()
    terms: dict[str, list[float]] = {"pair": [], "three-body": [], "learned": []}
    for atoms in bend(ANGLES):
        g = build_graph(
            atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc,
            loaded.metadata.cutoff, loaded.metadata.species,
        )  # fmt: skip
        sp, ce, ne, ve, rv = (
            torch.from_numpy(x) for x in (g.species, g.centers, g.neighbors, g.vectors, g.reverse)
        )
        with torch.no_grad():
            prior = float(pet.prior_energies(sp, ce, ne, ve).sum())
            pair = 0.5 * float(pet.pair.edge_energies(sp, ce, ne, ve.norm(dim=1)).sum())
            terms["pair"].append(pair)
            terms["three-body"].append(prior - pair)
            terms["learned"].append(float(pet.learned_energies(sp, ce, ne, ve, rv).sum()))
    return {k: np.array(v) - v[0] for k, v in terms.items()}


def report(label: str, result: dict) -> None:
    print(f"\n== {label}")
    cols = [int(np.argmin(np.abs(DISTANCES - r))) for r in SHOWN]
    print("r (Å)".ljust(16) + "".join(f"{r:>8.2f}" for r in SHOWN))
    for name in DIMERS:
        e, f, bounded_from = result[name]
        print(f"{name} E (eV)".ljust(16) + "".join(f"{e[k]:8.2f}" for k in cols))
        print(f"{name} F (eV/Å)".ljust(16) + "".join(f"{f[k]:8.1f}" for k in cols))
        extra = ""
        if bounded_from is not None:
            largest = np.abs(f[DISTANCES >= bounded_from]).max()
            extra = f", max |F| from {bounded_from} Å: {largest:.1f} eV/Å"
        attractive = DISTANCES[(f <= 0) & (DISTANCES < 0.75)]
        print(
            f"   {name}: {minima(e)} well(s) deeper than 1 meV ({minima(e, 0)} local minima in "
            f"all); attractive below 0.75 Å at {attractive.tolist() or 'none'}{extra}"
        )
    b = result["bend"]
    print("bend θ (°)".ljust(16) + "".join(f"{a:8.0f}" for a in ANGLES[::4]))
    print("bend E (eV)".ljust(16) + "".join(f"{x:8.2f}" for x in b[::4]))
    drops = np.diff(b)
    print(
        f"   bend 100° -> 20°: monotone {monotone(b)}"
        + (
            ""
            if monotone(b)
            else f" (largest drop {-drops.min() * 1e3:.0f} meV at "
            f"{ANGLES[int(np.argmin(drops)) + 1]:.1f}°)"
        )
    )
    for name, values in result.get("bend_terms", {}).items():
        print(f"  {name}".ljust(16) + "".join(f"{x:8.2f}" for x in values[::4]))
    e, fmax = result["push"]
    print("push r_OO (Å)".ljust(16) + "".join(f"{r:8.2f}" for r in PUSH[::2]))
    print("push E (eV)".ljust(16) + "".join(f"{x:8.2f}" for x in e[::2]))
    print("push max|F|".ljust(16) + "".join(f"{x:8.1f}" for x in fmax[::2]))
    print(f"   push 2.6 -> 1.8 Å: monotone {monotone(e)}")


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(20, 3.8))
    for label, result in results.items():
        for ax, name in zip(axes[:3], DIMERS, strict=True):
            ax.plot(DISTANCES, result[name][0], label=label)
        axes[3].plot(ANGLES, result["bend"], label=label)
        axes[4].plot(PUSH, result["push"][0], label=label)
    for ax, name in zip(axes[:3], DIMERS, strict=True):
        ax.set(title=f"{name} dimer", xlabel="r (Å)", ylabel="E (eV, atoms apart = 0)")
        ax.set_ylim(-8, 25)
    axes[3].set(title="H–O–H bend (O–H 0.97 Å)", xlabel="angle (°)", ylabel="E − E(100°) (eV)")
    axes[3].set_ylim(-10, 15)
    axes[4].set(
        title="molecule pushed into the liquid", xlabel="O–O (Å)", ylabel="E − E(2.6 Å) (eV)"
    )
    axes[4].set_ylim(-10, 30)
    axes[4].invert_xaxis()
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["water-revpbe0d3"])
    parser.add_argument("--labels", help="comma-separated legend labels, one per model")
    parser.add_argument("--average", default="none", help="averaging policy (default none)")
    parser.add_argument("--plot", help="write the curves to this PNG")
    parser.add_argument("--data", help="extended XYZ whose first frame is pushed into")
    parser.add_argument(
        "--terms", action="store_true", help="also the bend term by term (symbreak PET files)"
    )
    args = parser.parse_args()
    labels = args.labels.split(",") if args.labels else args.models
    if len(labels) != len(args.models):
        parser.error(f"--labels has {len(labels)} labels for {len(args.models)} models")
    liquid = ase.io.read(args.data or default_frame(), 0)
    results = {}
    for model, label in zip(args.models, labels, strict=True):
        results[label] = scan(model, args.average, liquid)
        if args.terms:
            results[label]["bend_terms"] = bend_terms(model)
        report(f"{label} ({args.average})", results[label])
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
