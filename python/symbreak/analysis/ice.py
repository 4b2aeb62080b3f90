"""Relative energies of a set of structures (e.g. proton-disordered ice Ih cells
relaxed with each model) from the plain and the averaged model.

Input (JSON), energies in eV per cell unless ``"per_molecule": true``:

    {"structures": [{"name": "ih-1", "n_molecules": 96,
                     "plain": -1234.5, "averaged": -1234.4}, ...]}

or the mapping form ``{"ih-1": {"n_molecules": 96, "plain": ..., "averaged": ...}, ...}``.
Per model, energies per molecule are taken relative to the set's mean (the default
reference, invariant to a constant shift of a model) and to its lowest structure.
δ_i = ΔE_i(averaged) − ΔE_i(plain); its RMS over structures (relative-to-mean
convention) is the headline number, in meV/molecule, with the largest |δ|, the
Kendall rank correlation of the two orderings, and the mean and spread of the absolute
per-molecule difference E_averaged − E_plain. No statistical error: the inputs are
single relaxed energies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .report import new_figure, save_figure


@dataclass
class IceEnergies:
    names: list[str]
    n_molecules: np.ndarray
    plain: np.ndarray  # eV/molecule
    averaged: np.ndarray  # eV/molecule


def read_ice_energies(path_or_data) -> IceEnergies:
    """Parse the JSON format described in the module doc (path or already-loaded dict)."""
    data = path_or_data
    if isinstance(path_or_data, (str, Path)):
        data = json.loads(Path(path_or_data).read_text())
    per_mol = bool(data.get("per_molecule", False)) if isinstance(data, dict) else False
    if isinstance(data, dict) and "structures" in data:
        items = [(s.get("name", str(i)), s) for i, s in enumerate(data["structures"])]
    elif isinstance(data, dict):
        items = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    else:
        items = [(s.get("name", str(i)), s) for i, s in enumerate(data)]
    if len(items) < 2:
        raise ValueError("need at least two structures")
    names, n, ep, ea = [], [], [], []
    for name, s in items:
        for key in ("plain", "averaged"):
            if key not in s:
                raise ValueError(f"structure {name!r} has no {key!r} energy")
        nm = int(s.get("n_molecules", 1))
        if nm < 1:
            raise ValueError(f"structure {name!r}: n_molecules must be >= 1")
        div = 1 if per_mol else nm
        names.append(str(name))
        n.append(nm)
        ep.append(float(s["plain"]) / div)
        ea.append(float(s["averaged"]) / div)
    return IceEnergies(names, np.array(n), np.array(ep), np.array(ea))


@dataclass
class IceResult:
    energies: IceEnergies
    rel_mean_plain: np.ndarray  # eV/molecule
    rel_mean_averaged: np.ndarray
    rel_min_plain: np.ndarray
    rel_min_averaged: np.ndarray

    def to_dict(self) -> dict:
        from scipy.stats import kendalltau

        d_mean = self.rel_mean_averaged - self.rel_mean_plain
        d_min = self.rel_min_averaged - self.rel_min_plain
        absdiff = self.energies.averaged - self.energies.plain
        tau = kendalltau(self.energies.plain, self.energies.averaged).statistic
        meV = 1e3
        return {
            "definition": "relative energy per molecule, w.r.t. the set mean (and lowest); "
            "delta = rel(averaged) - rel(plain)",
            "units": "meV/molecule",
            "n_structures": len(self.energies.names),
            "rms_difference_rel_mean": meV * float(np.sqrt(np.mean(d_mean**2))),
            "max_abs_difference_rel_mean": meV * float(np.max(np.abs(d_mean))),
            "rms_difference_rel_lowest": meV * float(np.sqrt(np.mean(d_min**2))),
            "kendall_tau": float(tau),
            "same_lowest": bool(
                np.argmin(self.energies.plain) == np.argmin(self.energies.averaged)
            ),
            "absolute_difference_mean": meV * float(absdiff.mean()),
            "absolute_difference_std": meV * float(absdiff.std()),
            "structures": [
                {
                    "name": nm,
                    "n_molecules": int(self.energies.n_molecules[i]),
                    "rel_mean_plain": meV * self.rel_mean_plain[i],
                    "rel_mean_averaged": meV * self.rel_mean_averaged[i],
                    "rel_lowest_plain": meV * self.rel_min_plain[i],
                    "rel_lowest_averaged": meV * self.rel_min_averaged[i],
                    "delta_rel_mean": meV * d_mean[i],
                }
                for i, nm in enumerate(self.energies.names)
            ],
        }


def relative_energies(energies: IceEnergies) -> IceResult:
    """Relative energies per molecule (see the module doc)."""
    p, a = energies.plain, energies.averaged
    return IceResult(energies, p - p.mean(), a - a.mean(), p - p.min(), a - a.min())


def plot_ice(res: IceResult, path, title: str = ""):
    """Relative energies (meV/molecule, w.r.t. the mean) of each structure, both models,
    and their parity plot → PNG."""
    fig, (a1, a2) = new_figure(1, 2, (10.0, 3.8))
    k = np.arange(len(res.energies.names))
    a1.bar(k - 0.2, 1e3 * res.rel_mean_plain, 0.4, label="plain")
    a1.bar(k + 0.2, 1e3 * res.rel_mean_averaged, 0.4, label="averaged")
    a1.set_xticks(k, res.energies.names, rotation=45, fontsize=7)
    a1.set_ylabel("E − ⟨E⟩ (meV/molecule)")
    a1.legend(fontsize=8)
    a1.set_title(title, fontsize=9)
    x, y = 1e3 * res.rel_mean_plain, 1e3 * res.rel_mean_averaged
    a2.plot(x, y, "o")
    lim = [min(x.min(), y.min()), max(x.max(), y.max())]
    a2.plot(lim, lim, "k--", lw=0.7)
    a2.set_xlabel("plain (meV/molecule)")
    a2.set_ylabel("averaged (meV/molecule)")
    return save_figure(fig, path)
