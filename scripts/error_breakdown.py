"""Where a water model's errors come from: test (or val/train) frames grouped by chemistry.

    python scripts/error_breakdown.py [MODEL ...] [--data data/water_revpbe0d3_160.xyz]
                                      [--split test] [--threads 2]

MODEL: a shipped name or exported file (default: water-revpbe0d3); the frames of ``--split``
are those recorded in the (first) model's metadata. Each frame goes in one class:
- ``intact``: every H has a nearest O within 1.35 Å and every O gets exactly two H
  (``symbreak.analysis.molecules.find_waters`` succeeds);
- ``ions``: otherwise (OH⁻/H₃O⁺ pairs, shared or stretched protons), with no H–H pair
  closer than 1.0 Å;
- ``H2``: some H–H pair closer than 1.0 Å (molecular hydrogen: bond breaking).
For every model and class it prints the frames, energy MAE (meV/atom), force MAE and RMSE
(meV/Å) and the worst atom (the largest |ΔF| vector, eV/Å: frame and atom index), plain model
(no averaging), and then the force MAE of the atoms within ``--defect-radius`` Å (default 3)
of a defect O (one nearest to other than two H: ``symbreak.analysis.molecules.near_defects``)
against that of the other atoms of the same frames. Sitting 8 found that the revPBE0-D3
frames are not all liquid water near equilibrium: 65 of 160 hold ions or H2, and those carry
most of the error.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from symbreak import load_model
from symbreak.analysis.molecules import WATER_FRAME_CLASSES, near_defects, water_frame_class
from symbreak.ase import SymbreakCalculator
from symbreak.training_data import read_labelled

CLASSES = (*WATER_FRAME_CLASSES, "all")


def errors(model: str, frames: list) -> tuple[np.ndarray, list[np.ndarray]]:
    """Energy errors (meV/atom) [F] and force errors (meV/Å) [F][N, 3] of ``model``."""
    calc = SymbreakCalculator(model)
    e_err, f_err = [], []
    for atoms in frames:
        copy = atoms.copy()
        copy.calc = calc
        e_err.append((copy.get_potential_energy() - atoms.get_potential_energy()) / len(atoms))
        f_err.append(copy.get_forces() - atoms.get_forces())
    return 1e3 * np.array(e_err), [1e3 * f for f in f_err]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["water-revpbe0d3"])
    parser.add_argument("--data", default="data/water_revpbe0d3_160.xyz")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--defect-radius", type=float, default=3.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    indices = load_model(args.models[0]).metadata.training["split"][args.split]
    all_frames = read_labelled(args.data)
    frames = [all_frames[k] for k in indices]
    classes = np.array(
        [water_frame_class(a.numbers, a.positions, a.cell.array, a.pbc) for a in frames]
    )
    near = [
        near_defects(a.numbers, a.positions, a.cell.array, a.pbc, args.defect_radius)
        for a in frames
    ]
    with_defects = [k for k, m in enumerate(near) if m.any()]
    print(f"{args.split} frames of {args.data}:")
    for c in WATER_FRAME_CLASSES:
        members = np.array(indices)[classes == c]
        print(f"  {c:7s} {len(members):3d}: {', '.join(map(str, members))}")
    header = (
        f"{'model':34s} {'class':7s} {'frames':>6s} {'E MAE':>7s} {'F MAE':>7s} {'F RMSE':>7s}"
        f" {'worst atom':>20s}"
    )
    print(
        f"\n{header}\n{'':34s} {'':7s} {'':6s} {'meV/at':>7s} {'meV/Å':>7s} {'meV/Å':>7s}"
        f" {'eV/Å (frame:atom)':>20s}"
    )
    for model in args.models:
        e_err, f_err = errors(model, frames)
        for c in CLASSES:
            pick = np.ones(len(frames), bool) if c == "all" else classes == c
            if not pick.any():
                continue
            f = np.concatenate([f_err[k].ravel() for k in np.flatnonzero(pick)])
            worst = max(
                (
                    float(np.linalg.norm(f_err[k], axis=1).max()),
                    indices[k],
                    int(np.linalg.norm(f_err[k], axis=1).argmax()),
                )
                for k in np.flatnonzero(pick)
            )
            print(
                f"{model[-34:]:34s} {c:7s} {pick.sum():6d} {np.abs(e_err[pick]).mean():7.2f} "
                f"{np.abs(f).mean():7.1f} {np.sqrt((f**2).mean()):7.1f}"
                f" {worst[0] / 1e3:8.2f} ({worst[1]}:{worst[2]})".rjust(21)
            )
        if with_defects:
            at = np.concatenate([np.abs(f_err[k])[near[k]].ravel() for k in with_defects])
            rest = np.concatenate([np.abs(f_err[k])[~near[k]].ravel() for k in with_defects])
            print(
                f"{'':34s} F MAE of the {at.size // 3} atoms within {args.defect_radius:g} Å of "
                f"a defect O: {at.mean():.1f} meV/Å; of the other {rest.size // 3} atoms of "
                f"those {len(with_defects)} frames: {rest.mean():.1f} meV/Å"
            )


if __name__ == "__main__":
    main()
