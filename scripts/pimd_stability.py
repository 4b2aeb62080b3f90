"""Stability of a model in path-integral MD: the shipped 8-bead PIMD input, run by the real
i-PI, every bead's bonds checked.

Runs ``ipi_inputs/pimd_water64`` (64 H2O, 8 beads, PILE-L, 300 K, 0.5 fs) for ``--ps`` ps
with ``symbreak run`` (model ``--model``, policy ``--average``), from the frame of the
training data whose O–H bonds are closest to 0.97 Å (as ``stability_md.py``; the beads
start together and i-PI gives them thermal ring-polymer velocities), writing every bead's
positions every ``--stride`` steps. Then it checks, over all beads and the frames after
``--equilibration`` ps, that every intramolecular O–H distance stays within
[``--oh-min``, ``--oh-max``] Å and every O–O distance above ``--oo-min`` Å, and reports the
extremes of the equilibration too, and the quantum g_OO (over every bead of those frames).
Beads reach further than a classical run: the ring polymer of each H spreads over ~0.15 Å
at 300 K.

Usage: ``python scripts/pimd_stability.py [--model water-revpbe0d3] [--ps 1] [--out runs/pimd]``;
writes ``pimd_stability.json`` and the i-PI run under ``--out``; exit code 0 if every
distance stayed in range, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
INPUT = REPO / "ipi_inputs" / "pimd_water64"


def write_input(out: Path, steps: int, stride: int, average: str) -> Path:
    """The shipped PIMD input with ``steps`` steps, all beads' positions every ``stride``
    steps, and the policy ``average``."""
    tree = ET.parse(INPUT / "input.xml")
    root = tree.getroot()
    root.find("total_steps").text = str(steps)
    output = root.find("output")
    for node in list(output):
        if node.tag == "checkpoint":
            output.remove(node)
    beads = ET.SubElement(output, "trajectory", filename="beads", stride=str(stride))
    beads.set("format", "xyz")
    beads.set("cell_units", "angstrom")
    beads.text = " positions{angstrom} "
    root.find("ffsocket/parameters").text = f"{{average: {average}}}"
    (out / "water_64h2o.xyz").write_bytes((INPUT / "water_64h2o.xyz").read_bytes())
    path = out / "input.xml"
    tree.write(path)
    return path


def regular_frame(path: str):
    """The frame of ``path`` whose intramolecular O–H distances are closest to 0.97 Å."""
    import ase.io

    from symbreak.analysis.molecules import find_waters

    def irregularity(a) -> float:
        try:
            w = find_waters(a.get_chemical_symbols(), a.positions, a.cell.array, a.pbc)
        except ValueError:  # a frame with a stretched-off proton
            return np.inf
        d = [a.get_distance(o, h, mic=True) for o, h1, h2 in w for h in (h1, h2)]
        return float(np.abs(np.array(d) - 0.97).max())

    return min(ase.io.read(path, ":"), key=irregularity)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="water-revpbe0d3")
    p.add_argument("--average", default="none")
    p.add_argument("--ps", type=float, default=1.0, help="simulated time (ps), 0.5 fs steps")
    p.add_argument("--stride", type=int, default=10, help="steps between checked frames")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--oh-min", type=float, default=0.75)
    p.add_argument("--oh-max", type=float, default=1.35)
    p.add_argument("--oo-min", type=float, default=2.2)
    p.add_argument("--equilibration", type=float, default=0.1, help="ps not checked")
    p.add_argument("--data", default=str(REPO / "data" / "water_revpbe0d3_160.xyz"))
    p.add_argument("--out", default="runs/pimd_stability")
    args = p.parse_args(argv)

    from symbreak.analysis.io import read_ipi_xyz
    from symbreak.analysis.molecules import find_waters, minimum_image

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = int(round(args.ps * 2000))
    xml = write_input(out, steps, args.stride, args.average)
    start = regular_frame(args.data)
    start.write(out / "start.xyz")
    run_dir = out / "run"
    command = [
        sys.executable, "-m", "symbreak", "run", str(xml), "--model", args.model,
        "--run-dir", str(run_dir), "--threads", str(args.threads),
        "--structure", str(out / "start.xyz"),
    ]  # fmt: skip
    t0 = time.perf_counter()
    code = subprocess.call(command)
    wall = time.perf_counter() - t0
    files = sorted(run_dir.glob("sim.beads_*.xyz"))
    if code != 0 or not files:
        print(f"symbreak run ended with code {code}; bead files: {len(files)}", file=sys.stderr)
        return 1
    first_checked = int(round(args.equilibration * 2000))
    extremes = {"equilibration": [np.inf, -np.inf, np.inf], "checked": [np.inf, -np.inf, np.inf]}
    frames = 0
    waters = None
    rdf_positions, rdf_cells = [], []  # every bead's checked frames, for the quantum g_OO
    for path in files:
        traj = read_ipi_xyz(path)
        if waters is None:
            waters = find_waters(traj.symbols, traj.values[0], traj.cells[0], traj.pbc)
            oxygens = waters[:, 0]
        for x, cell, step in zip(traj.values, traj.cells, traj.steps, strict=True):
            oh = minimum_image(x[waters[:, 1:]] - x[waters[:, :1]], cell, traj.pbc)
            r = np.linalg.norm(oh, axis=-1)
            d = minimum_image(x[oxygens][:, None] - x[oxygens][None], cell, traj.pbc)
            oo = np.linalg.norm(d, axis=-1)[np.triu_indices(len(oxygens), 1)]
            e = extremes["checked" if step >= first_checked else "equilibration"]
            e[:] = [min(e[0], r.min()), max(e[1], r.max()), min(e[2], oo.min())]
            if step >= first_checked:
                frames += 1
                rdf_positions.append(x)
                rdf_cells.append(cell)
    g_oo = {}
    if len(rdf_positions) > 10:
        from symbreak.analysis.rdf import rdf

        result = rdf(np.array(rdf_positions), np.array(rdf_cells), traj.symbols, "OO")
        g_oo = result.summary()
    oh_lo, oh_hi, oo_lo = extremes["checked"]
    stable = oh_lo >= args.oh_min and oh_hi <= args.oh_max and oo_lo >= args.oo_min
    summary = {
        "model": args.model,
        "average": args.average,
        "beads": len(files),
        "simulated_ps": steps * 0.5e-3,
        "equilibration_ps": args.equilibration,
        "bead_frames_checked": frames,
        "oh_min_A": float(oh_lo),
        "oh_max_A": float(oh_hi),
        "oo_min_A": float(oo_lo),
        "equilibration_extremes_A": dict(
            zip(("oh_min", "oh_max", "oo_min"), map(float, extremes["equilibration"]), strict=True)
        ),
        "limits": {"oh": [args.oh_min, args.oh_max], "oo_min": args.oo_min},
        "stable": bool(stable),
        "wall_seconds": wall,
        "g_OO": g_oo,
    }
    (out / "pimd_stability.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "g_OO"}, indent=1))
    print("g_OO:", {k: v for k, v in g_oo.items() if k not in ("r", "g")})
    return 0 if stable else 1


if __name__ == "__main__":
    raise SystemExit(main())
