"""Drift of the conserved quantity of an MD run (energy conservation check).

A straight line is fitted to the conserved quantity (i-PI's ``conserved``) against
time; the slope, divided by the number of molecules, is the drift in eV per molecule
per ps. Its error is a delete-one-block jackknife over contiguous blocks (robust to
the strongly correlated fluctuations of a conserved quantity). The RMS deviation from
the line measures the short-time fluctuations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .report import new_figure, save_figure
from .stats import LinearFit, linear_fit


@dataclass
class DriftResult:
    """time (T,) ps, conserved (T,) eV; fit of the total (eV/ps); per-molecule slope and
    error (eV/molecule/ps); RMS fluctuation about the fit (eV/molecule)."""

    time: np.ndarray
    conserved: np.ndarray
    fit: LinearFit
    n_molecules: int
    slope: float
    slope_err: float
    rms_fluctuation: float

    def to_dict(self) -> dict:
        span = float(self.time[-1] - self.time[0])
        return {
            "definition": "least-squares slope of conserved(t) / n_molecules; "
            f"error: {self.fit.method}",
            "units": {"drift": "eV/molecule/ps", "fluctuation": "eV/molecule"},
            "n_molecules": self.n_molecules,
            "n_points": len(self.time),
            "time_span_ps": span,
            "drift": self.slope,
            "drift_err": self.slope_err,
            "drift_meV_per_molecule_per_ps": 1e3 * self.slope,
            "total_change_per_molecule": self.slope * span,
            "rms_fluctuation": self.rms_fluctuation,
            "fit_total_eV_per_ps": self.fit.to_dict(),
        }


def conserved_drift(
    time_ps: np.ndarray, conserved_eV: np.ndarray, n_molecules: int = 1, n_blocks: int = 5
) -> DriftResult:
    """Drift of conserved_eV (T,) against time_ps (T,), per molecule (see module doc)."""
    t = np.asarray(time_ps, dtype=np.float64)
    e = np.asarray(conserved_eV, dtype=np.float64)
    nb = n_blocks if len(t) >= 2 * n_blocks else None
    fit = linear_fit(t, e, nb)
    res = e - (fit.slope * t + fit.intercept)
    n = max(int(n_molecules), 1)
    return DriftResult(
        t, e, fit, n, fit.slope / n, fit.slope_err / n, float(np.sqrt(np.mean(res**2)) / n)
    )


def plot_drift(res: DriftResult, path, title: str = ""):
    """Conserved quantity per molecule against time with the fitted line → PNG."""
    fig, ax = new_figure(size=(6.0, 3.8))
    n = res.n_molecules
    e0 = res.conserved[0]
    ax.plot(res.time, (res.conserved - e0) / n * 1e3, lw=0.7, label="conserved")
    ax.plot(
        res.time,
        (res.fit.slope * res.time + res.fit.intercept - e0) / n * 1e3,
        "k--",
        label=f"drift {1e3 * res.slope:.3g} ± {1e3 * res.slope_err:.2g} meV/mol/ps",
    )
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("ΔE$_{cons}$ (meV/molecule)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
