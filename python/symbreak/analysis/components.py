"""Energy and force differences between the averaged and the plain model along one
trajectory, from i-PI's per-component outputs (e.g. an MTS run with the plain model
and the averaged model as two force fields: ``pot_component_raw(k)`` properties and
``forces_component_raw(k)`` trajectories, which are unweighted).

ΔE(t) = E_averaged(t) − E_plain(t) (eV) is reported per molecule; its mean has a
block-averaged error. Its fluctuating part (ΔE − ⟨ΔE⟩) is what affects dynamics (a
constant offset does not). Force differences ΔF = F_averaged − F_plain (eV/Å): mean
absolute value over Cartesian components (the study's "mean absolute" force error),
RMS, and the per-frame RMS over atoms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .report import new_figure, save_figure
from .stats import mean_and_error


@dataclass
class EnergyDifference:
    """time (T,) ps; dE (T,) eV per molecule (averaged − plain); statistics."""

    time: np.ndarray
    dE: np.ndarray
    n_molecules: int
    plain: str
    averaged: str
    n_blocks: int

    def to_dict(self) -> dict:
        mean, err = mean_and_error(self.dE, self.n_blocks)
        mae, mae_err = mean_and_error(np.abs(self.dE), self.n_blocks)
        fl = self.dE - self.dE.mean()
        return {
            "definition": f"dE = [{self.averaged}] - [{self.plain}], per molecule",
            "units": "meV/molecule",
            "n_molecules": self.n_molecules,
            "n_frames": len(self.dE),
            "mean": 1e3 * mean,
            "mean_err": 1e3 * err,
            "mean_abs": 1e3 * mae,
            "mean_abs_err": 1e3 * mae_err,
            "rms": 1e3 * float(np.sqrt(np.mean(self.dE**2))),
            "std": 1e3 * float(self.dE.std()),
            "max_abs_fluctuation": 1e3 * float(np.max(np.abs(fl))),
        }


def energy_difference(
    time_ps: np.ndarray,
    e_plain: np.ndarray,
    e_averaged: np.ndarray,
    n_molecules: int = 1,
    plain: str = "plain",
    averaged: str = "averaged",
    n_blocks: int = 5,
) -> EnergyDifference:
    """ΔE per molecule from two energy series (T,) in eV."""
    d = (np.asarray(e_averaged, float) - np.asarray(e_plain, float)) / max(int(n_molecules), 1)
    return EnergyDifference(
        np.asarray(time_ps, float), d, int(n_molecules), plain, averaged, n_blocks
    )


@dataclass
class ForceDifference:
    """Per-frame RMS over atoms and components of ΔF (F,) eV/Å, and totals."""

    rms_per_frame: np.ndarray
    mae: float
    mae_err: float
    rms: float
    max_abs: float
    n_blocks: int

    def to_dict(self) -> dict:
        return {
            "definition": "dF = F_averaged - F_plain; MAE and RMS over frames, atoms and "
            "Cartesian components",
            "units": "meV/angstrom",
            "n_frames": len(self.rms_per_frame),
            "mae": 1e3 * self.mae,
            "mae_err": 1e3 * self.mae_err,
            "rms": 1e3 * self.rms,
            "max_abs": 1e3 * self.max_abs,
        }


def force_difference(
    f_plain: np.ndarray, f_averaged: np.ndarray, n_blocks: int = 5
) -> ForceDifference:
    """Statistics of F_averaged − F_plain, both (F, N, 3) eV/Å."""
    d = np.asarray(f_averaged, float) - np.asarray(f_plain, float)
    per_frame_mae = np.abs(d).mean(axis=(1, 2))
    mae, err = mean_and_error(per_frame_mae, n_blocks)
    return ForceDifference(
        np.sqrt((d**2).mean(axis=(1, 2))),
        mae,
        err,
        float(np.sqrt(np.mean(d**2))),
        float(np.abs(d).max()),
        n_blocks,
    )


def plot_components(
    e: EnergyDifference, path, f: ForceDifference | None = None, time_f: np.ndarray | None = None
):
    """ΔE(t) per molecule (and the per-frame force RMS difference) → PNG."""
    n = 2 if f is not None else 1
    fig, axes = new_figure(n, 1, (6.0, 3.2 * n))
    ax = axes[0] if n > 1 else axes
    ax.plot(e.time, 1e3 * e.dE, lw=0.7)
    ax.axhline(1e3 * e.dE.mean(), color="k", ls="--", lw=0.8)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("E$_{avg}$ − E$_{plain}$ (meV/molecule)")
    if f is not None:
        tf = np.arange(len(f.rms_per_frame)) if time_f is None else time_f
        axes[1].plot(tf, 1e3 * f.rms_per_frame, lw=0.7)
        axes[1].set_xlabel("time (ps)" if time_f is not None else "frame")
        axes[1].set_ylabel("RMS ΔF (meV/Å)")
    return save_figure(fig, path)
