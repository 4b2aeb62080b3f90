"""Scan one O–H bond of an isolated water molecule with a model, term by term.

    python scripts/oh_scan.py [MODEL ...] [--plot oh_scan.png] [--labels A,B,...]

MODEL: a shipped name or exported file (default: water-revpbe0d3); several are compared.
The molecule: O at the origin, one H at r (0.80–1.30 Å every 0.02 Å), the other at 0.97 Å,
H–O–H 104.5°, alone in a non-periodic 100 Å box; float64. Prints, for each model, the energy
(meV, each row shifted to its own minimum) of the whole model, its invariant priors (pair +
three-body, ``prior_energies``) and its learned part (``learned_energies``), then the
minima of the whole model and the largest curvature d²E/dr² (eV/Å²; a real O–H stretch has
~50). This is the check that found the sitting-5 model's double well (a 0.5 eV bump of the
learned part along the stretch) and that the gas-phase term of training
(``symbreak train --gas-weight``) removes.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from symbreak import load_model
from symbreak.graph import build_graph

R = np.round(np.arange(0.80, 1.3001, 0.02), 2)


def scan(name: str) -> dict[str, np.ndarray]:
    """Energies (eV) [len(R)] of the whole model, its priors and its learned part."""
    loaded = load_model(name)
    module, meta = loaded.module.double(), loaded.metadata
    out: dict[str, list[float]] = {"model": [], "priors": [], "learned": []}
    theta = np.radians(104.5)
    for r in R:
        pos = np.array([[0, 0, 0], [r, 0, 0], [0.97 * np.cos(theta), 0.97 * np.sin(theta), 0]])
        box, pbc = np.eye(3) * 100.0, [False] * 3
        g = build_graph(np.array([8, 1, 1]), pos + 50.0, box, pbc, meta.cutoff, meta.species)
        sp, ce, ne, ve, rv = (torch.from_numpy(x) for x in (g.species, g.centers, g.neighbors,
                              g.vectors, g.reverse))  # fmt: skip
        with torch.no_grad():
            out["model"].append(float(module.atomic_energies(sp, ce, ne, ve, rv).sum()))
            out["priors"].append(float(module.prior_energies(sp, ce, ne, ve).sum()))
            out["learned"].append(float(module.learned_energies(sp, ce, ne, ve, rv).sum()))
    return {k: np.array(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["water-revpbe0d3"])
    parser.add_argument("--plot", help="write the whole models' curves to this PNG")
    parser.add_argument("--labels", help="comma-separated legend labels, one per model")
    args = parser.parse_args()
    labels = args.labels.split(",") if args.labels else args.models
    if len(labels) != len(args.models):
        parser.error(f"--labels has {len(labels)} labels for {len(args.models)} models")
    print("r (Å):".ljust(34) + " ".join(f"{r:5.2f}" for r in R[::2]))
    curves = {}
    for name, label in zip(args.models, labels, strict=True):
        terms = scan(name)
        curves[label] = terms["model"]
        for term, e in terms.items():
            mev = 1e3 * (e - e.min())
            print(f"{name[-22:]:>22} {term:>10}: " + " ".join(f"{v:5.0f}" for v in mev[::2]))
        e = terms["model"]
        minima = [float(R[k]) for k in range(1, len(R) - 1) if e[k] < e[k - 1] and e[k] < e[k + 1]]
        curvature = np.diff(e, 2) / 0.02**2
        print(f"{'':>22} minima at {minima} Å; max d²E/dr² {curvature.max():.0f} eV/Å²")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, e in curves.items():
            ax.plot(R, 1e3 * (e - e.min()), marker="o", ms=3, label=name)
        ax.set(xlabel="r(O–H) / Å", ylabel="E − E_min / meV", ylim=(-20, 1000))
        ax.set_title("isolated H2O, one O–H stretched", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
