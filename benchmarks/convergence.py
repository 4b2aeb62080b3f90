"""Convergence of rotational averaging on held-out frames, against a large reference grid.

For each grid (Legendre L = 1..4, Lebedev L = 3, 5, 7, 9, each with and without inversion)
and each test frame, the averaged energy and forces are compared with the reference grid
(default ``lebedev:13+inv``, 1924 rotations, exact to l = 13): mean |E_grid - E_ref|
(meV/structure) and mean |F_grid - F_ref| over atoms and Cartesian components (meV/Å),
printed next to the study's energies (Langer, Pozdnyakov, Ceriotti 2024, test frames:
5.09 (1) -> 2.57 (i) -> 0.56 (18) -> 0.28 (36) -> 0.16 (75) meV/structure, Legendre grids,
which are ours). Also: the plain model's symmetry breaking against the reference in
meV/atom and meV/Å (study: 0.027 and 2.04), and which grid family first gets 10x below the
plain model's error, with how many rotations.

Frames: the test split recorded in the model (``metadata.training["split"]["test"]``,
indices into ``data/water_revpbe0d3_160.xyz``), or its last 16 frames for a model without
one. ``--frames N`` keeps the first N of them.

Cost: a grid with inversion is {R_k} ∪ {-R_k} with equal weights, so
E_inv(x) = [E(x) + E(-x)] / 2 and F_inv(x) = [F(x) - F(-x)] / 2 (forces of the inverted
structure, which is the structure x -> -x with cell -h). Every grid is therefore evaluated
without inversion on x and -x (one batched call of two structures); the reference's two
halves also give the SO(3)-only average, whose distance to the O(3) one is the floor of the
grids without inversion. With the defaults that is 2 x 1864 = 3728 rotated evaluations per
frame: about 8 minutes per 192-atom frame for the default-size model at 0.12 s each (one
quiet core); 38 minutes were measured on the shared 2 cores. Use ``--frames`` and smaller
grid lists for a quick look.

Precision: float32 (the default) leaves a noise of ~0.1 meV in each 192-atom energy (measured
against float64 on a random default-size model) and ~0.002 meV/Å in the forces; use
``--float64`` when the errors of interest approach that.

Usage: ``python benchmarks/convergence.py [--model water-revpbe0d3] [--frames N]
[--json OUT]``; ``--model random`` uses a default-size random PET (the numbers then only
check that the script works).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from symbreak.reproduce import study

from common import WATER_160, export_random_model

# The study's energy errors (meV/structure) against its largest grid, by (family, L, inversion)
# of its Legendre grids, and the plain model's breaking on test frames (meV/atom, meV/Å).
STUDY_ENERGY = study.GRID_ENERGY_ERROR_BY_POLICY
STUDY_PLAIN = study.BREAKING["test"]


def held_out_frames(metadata, n_frames: int | None) -> tuple[list[int], str]:
    """Indices into WATER_160 of the held-out frames, and where they come from."""
    import ase.io

    split = (metadata.training or {}).get("split") or {}
    if split.get("test"):
        frames, source = [int(k) for k in split["test"]], "the model's test split"
    else:
        n = len(ase.io.read(WATER_160, ":"))
        frames, source = list(range(n - 16, n)), "the last 16 frames (no split in the model)"
    if n_frames is not None:
        frames = frames[:n_frames]
    return frames, source


def inverted(atoms):
    """The structure -x: positions and cell negated (a left-handed cell)."""
    out = atoms.copy()
    out.set_cell(-atoms.cell.array, scale_atoms=False)
    out.positions = -atoms.positions
    return out


def evaluate_halves(ev, atoms, spec: str) -> dict:
    """Grid ``spec`` (no inversion) on x and on -x: energies (eV) and forces [N, 3] (eV/Å)
    of the SO(3) grid and of its improper half, both for the structure x."""
    from symbreak.evaluator import Structure

    plus, minus = ev.compute([Structure.from_atoms(atoms), Structure.from_atoms(inverted(atoms))],
                             spec)  # fmt: skip
    return {
        "proper": (plus.energy, plus.forces),
        "improper": (minus.energy, -minus.forces),  # -∇_x E(-x) = -F(-x)
    }


def combine(halves: dict, inversion: bool) -> tuple[float, np.ndarray]:
    e, f = halves["proper"]
    if not inversion:
        return e, f
    e2, f2 = halves["improper"]
    return 0.5 * (e + e2), 0.5 * (f + f2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="water-revpbe0d3", help="model name/file or 'random'")
    parser.add_argument("--frames", type=int, help="use only the first N test frames")
    parser.add_argument("--json", help="write the table and per-frame errors to this file")
    parser.add_argument("--reference", default="lebedev:13+inv", help="reference grid")
    parser.add_argument("--legendre", default="1,2,3,4", help="Legendre orders L")
    parser.add_argument("--lebedev", default="3,5,7,9", help="Lebedev orders L")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--rotation-batch", type=int, help="rotations per model call")
    parser.add_argument("--float64", action="store_true", help="evaluate in float64")
    args = parser.parse_args(argv)

    import ase.io
    import torch

    from symbreak.evaluator import Evaluator, Structure
    from symbreak.export import load_model
    from symbreak.rotations import AveragingPolicy, exactness_degree

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="symbreak-conv-")
    model_path = args.model
    if args.model == "random":
        model_path = export_random_model(Path(tmp.name) / "random-default.pt")
    loaded = load_model(model_path)
    dtype = torch.float64 if args.float64 else torch.float32
    ev = Evaluator(loaded, rotation_batch=args.rotation_batch, dtype=dtype)
    frames, source = held_out_frames(loaded.metadata, args.frames)
    ref_policy = AveragingPolicy.parse(args.reference)
    if ref_policy.is_random:
        raise SystemExit("the reference must be a grid")

    grids = [("legendre", int(L)) for L in args.legendre.split(",")]
    grids += [("lebedev", int(L)) for L in args.lebedev.split(",")]
    specs = sorted({"none" if L == 1 else f"{fam}:{L}" for fam, L in grids} | {ref_policy.spec})

    per_frame: list[dict] = []
    n_atoms = []
    t_start = time.perf_counter()
    for count, index in enumerate(frames):
        atoms = ase.io.read(WATER_160, index)
        n_atoms.append(len(atoms))
        halves = {spec: evaluate_halves(ev, atoms, spec) for spec in specs}
        per_frame.append(halves)
        elapsed = time.perf_counter() - t_start
        print(f"frame {index} ({count + 1}/{len(frames)}) done, {elapsed:.0f} s", file=sys.stderr)

    def error(spec: str, inversion: bool) -> tuple[float, float, list]:
        """Mean |ΔE| (meV/structure), mean |ΔF| (meV/Å) against the reference."""
        de, df, rows = [], [], []
        for halves in per_frame:
            e, f = combine(halves[spec], inversion)
            e_ref, f_ref = combine(halves[ref_policy.spec], ref_policy.inversion)
            de.append(1e3 * abs(e - e_ref))
            df.append(1e3 * np.mean(np.abs(f - f_ref)))
            rows.append({"energy_mev": de[-1], "forces_mev_per_a": df[-1]})
        return float(np.mean(de)), float(np.mean(df)), rows

    # Check of the halves trick on the first frame with the smallest grid: a direct call.
    check_spec = min(
        (s for s in specs if s != "none"), key=lambda s: AveragingPolicy.parse(s).n_rotations
    )
    first = ase.io.read(WATER_160, frames[0])
    direct = ev.compute(Structure.from_atoms(first), AveragingPolicy(check_spec, True))[0]
    e_c, f_c = combine(per_frame[0][check_spec], True)
    check = (abs(direct.energy - e_c), float(np.abs(direct.forces - f_c).max()))
    print(
        f"check: {check_spec}+inv direct vs from the x/-x halves: |dE| = {check[0]:.2e} eV, "
        f"max |dF| = {check[1]:.2e} eV/A"
    )
    ref_k = ref_policy.n_rotations
    print(
        f"reference: {ref_policy} ({ref_k} rotations, exact to l = "
        f"{exactness_degree(ref_policy.spec, ref_policy.inversion)}); model: {args.model}; "
        f"{len(frames)} frame(s) of {WATER_160.name} ({source}), "
        f"{np.mean(n_atoms):.0f} atoms each; {str(dtype).replace('torch.', '')}"
    )
    header = (
        f"{'grid':>11} {'K':>5} {'l_max':>5} {'|dE| meV/str':>12} {'|dF| meV/A':>10} | "
        f"{'+inv K':>6} {'l_max':>5} {'|dE| meV/str':>12} {'|dF| meV/A':>10} | study meV/str"
    )
    print(header)
    print("-" * len(header))
    table = []
    for fam, L in grids:
        spec = "none" if L == 1 else f"{fam}:{L}"
        cells = []
        for inversion in (False, True):
            de, df, rows = error(spec, inversion)
            policy = AveragingPolicy(spec, inversion)
            entry = {
                "family": fam,
                "order": L,
                "inversion": inversion,
                "spec": str(policy),
                "n_rotations": policy.n_rotations,
                "exactness_degree": policy.exactness_degree,
                "energy_mev_per_structure": de,
                "forces_mev_per_a": df,
                "per_frame": rows,
            }
            table.append(entry)
            cells.append(entry)
        study = [
            f"{STUDY_ENERGY[(fam, L, inv)]} ({'i' if L == 1 and inv else c['n_rotations']})"
            for inv, c in zip((False, True), cells, strict=True)
            if (fam, L, inv) in STUDY_ENERGY
        ]
        a, b = cells
        print(
            f"{fam + ':' + str(L):>11} {a['n_rotations']:>5} {a['exactness_degree']:>5} "
            f"{a['energy_mev_per_structure']:>12.4g} {a['forces_mev_per_a']:>10.4g} | "
            f"{b['n_rotations']:>6} {b['exactness_degree']:>5} "
            f"{b['energy_mev_per_structure']:>12.4g} {b['forces_mev_per_a']:>10.4g} | "
            f"{', '.join(study)}"
        )

    # The plain model against the reference, per atom.
    plain_e = np.mean(
        [
            1e3
            * abs(h["none"]["proper"][0] - combine(h[ref_policy.spec], ref_policy.inversion)[0])
            / n
            for h, n in zip(per_frame, n_atoms, strict=True)
        ]
    )
    plain = next(t for t in table if t["n_rotations"] == 1)
    print(
        f"plain model vs reference: {plain_e:.4g} meV/atom, {plain['forces_mev_per_a']:.4g} meV/A "
        f"(mean |component|; study: {STUDY_PLAIN[0]} meV/atom, {STUDY_PLAIN[1]} meV/A)"
    )
    gap = {}
    if ref_policy.inversion:
        so3 = [combine(h[ref_policy.spec], False) for h in per_frame]
        o3 = [combine(h[ref_policy.spec], True) for h in per_frame]
        gap = {
            "energy_mev_per_structure": float(
                np.mean([1e3 * abs(a[0] - b[0]) for a, b in zip(so3, o3, strict=True)])
            ),
            "forces_mev_per_a": float(
                np.mean([1e3 * np.mean(np.abs(a[1] - b[1])) for a, b in zip(so3, o3, strict=True)])
            ),
        }
        print(
            f"SO(3)-only vs O(3) reference (floor of the grids without inversion): "
            f"{gap['energy_mev_per_structure']:.4g} meV/structure, "
            f"{gap['forces_mev_per_a']:.4g} meV/A"
        )

    summary = {}
    for quantity, key, unit in (
        ("energy", "energy_mev_per_structure", "meV/structure"),
        ("forces", "forces_mev_per_a", "meV/A"),
    ):
        target = plain[key] / 10
        firsts = {}
        for fam in ("legendre", "lebedev"):
            for inversion in (False, True):
                ok = [
                    t
                    for t in table
                    if t["family"] == fam and t["inversion"] == inversion and t[key] < target
                ]
                name = fam + ("+inv" if inversion else "")
                firsts[name] = min(ok, key=lambda t: t["n_rotations"]) if ok else None
        reached = [(t["n_rotations"], name, t) for name, t in firsts.items() if t is not None]
        text = ", ".join(
            f"{name} {t['spec']} ({t['n_rotations']} rot.)" if t else f"{name} never"
            for name, t in firsts.items()
        )
        print(f"10x below plain for {quantity} (< {target:.3g} {unit}): {text}")
        if reached:
            k, name, t = min(reached, key=lambda r: r[0])
            print(f"  first: {name}, {t['spec']}, with {k} rotations")
        summary[quantity] = {
            "target": target,
            "first": {name: (t["spec"] if t else None) for name, t in firsts.items()},
        }
    if args.json:
        out = {
            "model": str(args.model),
            "reference": str(ref_policy),
            "reference_rotations": ref_k,
            "frames": frames,
            "frame_source": source,
            "dtype": str(dtype),
            "table": table,
            "plain_mev_per_atom": float(plain_e),
            "plain_forces_mev_per_a": plain["forces_mev_per_a"],
            "so3_vs_o3_reference": gap,
            "ten_times_below_plain": summary,
            "study": {
                "energy_mev_per_structure": {str(k): v for k, v in STUDY_ENERGY.items()},
                "plain_mev_per_atom_and_mev_per_a": STUDY_PLAIN,
            },  # fmt: skip
        }
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
