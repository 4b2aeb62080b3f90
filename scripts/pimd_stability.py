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

It also reports the distribution of the beads' O–H distances (mean, standard deviation,
how far out the extremes lie in standard deviations, how many of the bond samples leave the
limits) and the extremes of the ring polymers' centroids, to tell a single bead's quantum
excursion from a broken bond.

Usage: ``python scripts/pimd_stability.py [--model water-revpbe0d3] [--ps 1] [--out runs/pimd]``;
writes ``pimd_stability.json``, ``pimd_oh.png`` (the O–H histograms) and the i-PI run under
``--out``
(``--analyse-only`` checks a finished run there again); exit code 0 if every distance stayed
in range, 1 otherwise.
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
OH_STRETCH_LIQUID = 3400.0  # cm^-1, centre of liquid water's O-H stretch band (IR/Raman)
MU_OH = 15.999 * 1.008 / (15.999 + 1.008)  # amu


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


def check_beads(
    files: list[Path], first_checked: int, limits: argparse.Namespace, temperature: float
) -> dict:
    """Bond extremes and distributions of the i-PI bead trajectories ``files`` (one per bead,
    same frames), over the frames at step >= ``first_checked``: every bead's intramolecular
    O–H (min, max, mean, standard deviation, 1e-4 quantiles, how many bond samples fall
    outside ``limits.oh_min``/``oh_max`` and how many a normal distribution of that mean
    and width would put there; the width of a harmonic O–H stretch at the liquid's
    frequency with as many beads at ``temperature`` K, for reference) and O–O, the same O–H
    extremes for the ring polymers' centroids, and the quantum g_OO over every bead.
    Distances in Å."""

    from symbreak.analysis.beads import harmonic_bead_std, tail_summary
    from symbreak.analysis.io import read_ipi_xyz
    from symbreak.analysis.molecules import find_waters, minimum_image
    from symbreak.analysis.rdf import rdf

    trajs = [read_ipi_xyz(path) for path in files]
    first = trajs[0]
    waters = find_waters(first.symbols, first.values[0], first.cells[0], first.pbc)
    oxygens = waters[:, 0]
    pairs = np.triu_indices(len(oxygens), 1)
    pbc = first.pbc
    eq = [np.inf, -np.inf, np.inf]
    bead_oh, centroid_oh, oo_min = [], [], np.inf
    rdf_positions, rdf_cells = [], []
    for k, (cell, step) in enumerate(zip(first.cells, first.steps, strict=True)):
        beads = np.array([t.values[k] for t in trajs])  # [P, N, 3]
        oh = minimum_image(beads[:, waters[:, 1:]] - beads[:, waters[:, :1]], cell, pbc)
        r = np.linalg.norm(oh, axis=-1)  # [P, W, 2]
        d = minimum_image(beads[:, oxygens, None] - beads[:, None, oxygens], cell, pbc)
        oo = np.linalg.norm(d, axis=-1)[:, pairs[0], pairs[1]]
        if step < first_checked:
            eq = [min(eq[0], r.min()), max(eq[1], r.max()), min(eq[2], oo.min())]
            continue
        bead_oh.append(r.ravel())
        # each bead's O-H vector is minimum-imaged, so the centroid's is their mean
        centroid_oh.append(np.linalg.norm(oh.mean(axis=0), axis=-1).ravel())
        oo_min = min(oo_min, oo.min())
        rdf_positions.extend(beads)
        rdf_cells.extend([cell] * len(beads))
    bead_oh, centroid_oh = np.concatenate(bead_oh), np.concatenate(centroid_oh)
    stable = (
        bead_oh.min() >= limits.oh_min and bead_oh.max() <= limits.oh_max
    ) and oo_min >= limits.oo_min
    edges = np.linspace(0.6, 1.5, 181)
    summary = {
        "bead_frames_checked": len(rdf_positions),
        "oh_min_A": float(bead_oh.min()),
        "oh_max_A": float(bead_oh.max()),
        "oo_min_A": float(oo_min),
        "bead_oh_distribution_A": {
            **tail_summary(bead_oh, limits.oh_min, limits.oh_max),
            "harmonic_std_at_3400_per_cm": harmonic_bead_std(
                OH_STRETCH_LIQUID, temperature, len(files), MU_OH
            ),
        },
        "oh_histogram": {
            "edges_A": edges.tolist(),
            "beads": np.histogram(bead_oh, edges)[0].tolist(),
            "centroids": np.histogram(centroid_oh, edges)[0].tolist(),
        },
        "centroid_oh_min_A": float(centroid_oh.min()),
        "centroid_oh_max_A": float(centroid_oh.max()),
        "equilibration_extremes_A": dict(
            zip(("oh_min", "oh_max", "oo_min"), map(float, eq), strict=True)
        ),
        "limits": {"oh": [limits.oh_min, limits.oh_max], "oo_min": limits.oo_min},
        "stable": bool(stable),
        "g_OO": rdf(np.array(rdf_positions), np.array(rdf_cells), first.symbols, "OO").summary()
        if len(rdf_positions) > 10
        else {},
    }
    return summary


def plot_oh(summary: dict, path: Path) -> None:
    """The beads' and centroids' O–H histograms (log scale) with the limits, a normal
    distribution of the beads' mean and width, and one of the harmonic reference width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist, dist = summary["oh_histogram"], summary["bead_oh_distribution_A"]
    edges = np.array(hist["edges_A"])
    mid, width = 0.5 * (edges[1:] + edges[:-1]), np.diff(edges)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label in (("beads", "every bead"), ("centroids", "ring-polymer centroids")):
        counts = np.array(hist[key], float)
        density = np.where(counts > 0, counts / (counts.sum() * width), np.nan)
        # markers show the lone samples of the tails, which a step line leaves out
        ax.plot(
            mid,
            density,
            drawstyle="steps-mid",
            marker=".",
            ms=3,
            label=f"{label} ({int(counts.sum())} bonds)",
        )
    r = np.linspace(edges[0], edges[-1], 400)
    for std, label, style in (
        (dist["std"], f"normal, the beads' width {dist['std']:.3f} Å", "--"),
        (dist["harmonic_std_at_3400_per_cm"], "normal, harmonic 3400 cm⁻¹, same beads", ":"),
    ):
        g = np.exp(-0.5 * ((r - dist["mean"]) / std) ** 2) / (std * np.sqrt(2 * np.pi))
        ax.plot(r, g, style, color="k", lw=1, label=label)
    lo, hi = summary["limits"]["oh"]
    for x in (lo, hi):
        ax.axvline(x, color="r", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylim(0.3 / (dist["samples"] * width[0]), None)
    ax.set_xlabel("intramolecular O–H distance (Å)")
    ax.set_ylabel("probability density (1/Å)")
    ax.set_title(f"{summary['beads']}-bead PIMD, {summary['simulated_ps']} ps: O–H limits in red")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


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
    p.add_argument(
        "--analyse-only",
        action="store_true",
        help="check the bead files already in OUT/run again (a finished run), run nothing",
    )
    args = p.parse_args(argv)

    out = Path(args.out).resolve()
    run_dir = out / "run"
    steps = int(round(args.ps * 2000))
    code, wall = 0, None
    if not args.analyse_only:
        out.mkdir(parents=True, exist_ok=True)
        xml = write_input(out, steps, args.stride, args.average)
        start = regular_frame(args.data)
        start.write(out / "start.xyz")
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
    ensemble = ET.parse(INPUT / "input.xml").getroot().find(".//ensemble/temperature")
    temperature = float(ensemble.text)
    checked = check_beads(files, int(round(args.equilibration * 2000)), args, temperature)
    summary = {
        "model": args.model,
        "average": args.average,
        "beads": len(files),
        "simulated_ps": steps * 0.5e-3,
        "equilibration_ps": args.equilibration,
        **checked,
        "wall_seconds": wall,
    }
    if wall is None:  # --analyse-only: keep the run's own wall time
        previous = out / "pimd_stability.json"
        if previous.exists():
            summary["wall_seconds"] = json.loads(previous.read_text()).get("wall_seconds")
    (out / "pimd_stability.json").write_text(json.dumps(summary, indent=1))
    plot_oh(summary, out / "pimd_oh.png")
    shown = {k: v for k, v in summary.items() if k not in ("g_OO", "oh_histogram")}
    print(json.dumps(shown, indent=1))
    print("g_OO:", {k: v for k, v in summary["g_OO"].items() if k not in ("r", "g")})
    return 0 if summary["stable"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
