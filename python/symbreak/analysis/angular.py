"""Angular momentum and torque of an isolated molecule (or cluster) about its centre
of mass — the gas-phase diagnostics of broken rotational symmetry.

A rotationally invariant potential conserves L and exerts zero net torque
τ = Σ_i (x_i − x_com) × F_i; a non-equivariant one does neither. Units: positions Å,
velocities Å/ps, masses amu, L in amu·Å²/ps (× 0.15746 = ħ), forces eV/Å, τ in eV.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .molecules import minimum_image, unwrap
from .report import new_figure, save_figure
from .stats import LinearFit, block_average, linear_fit
from .units import AMU_A2_PER_PS_IN_HBAR


def make_whole(positions: np.ndarray, cells: np.ndarray | None = None, pbc=None) -> np.ndarray:
    """Positions (F, N, 3) Å of one molecule/cluster made whole and continuous in time:
    frame 0 by minimum image around atom 0, later frames by unwrapping each atom's
    path. Identity without periodicity."""
    x = np.asarray(positions, dtype=np.float64)
    if pbc is None or cells is None or not np.any(pbc):
        return x.copy()
    cells = np.broadcast_to(cells, (x.shape[0], 3, 3))
    x = x.copy()
    x[0] = x[0, 0] + minimum_image(x[0] - x[0, 0], cells[0], pbc)
    return unwrap(x, cells, pbc)


def centre_of_mass(x: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Mass-weighted mean over the atom axis: x (..., N, 3) → (..., 3)."""
    m = np.asarray(masses, dtype=np.float64)
    return np.einsum("...ni,n->...i", x, m) / m.sum()


def inertia_tensor(positions: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Inertia tensor (..., 3, 3) in amu·Å² about the centre of mass, positions (..., N, 3)."""
    m = np.asarray(masses, dtype=np.float64)
    r = positions - centre_of_mass(positions, m)[..., None, :]
    r2 = np.einsum("...ni,...ni->...n", r, r)
    eye = np.eye(3)
    return np.einsum("n,...n,ij->...ij", m, r2, eye) - np.einsum("n,...ni,...nj->...ij", m, r, r)


def angular_momentum(
    positions: np.ndarray,
    masses: np.ndarray,
    velocities: np.ndarray | None = None,
    frame_dt_ps: float | None = None,
) -> tuple[np.ndarray, str]:
    """Angular momentum about the centre of mass, L(t) = Σ m (x − x_com) × (v − v_com).

    positions (F, N, 3) Å (whole molecule: see :func:`make_whole`), masses (N,) amu,
    velocities (F, N, 3) Å/ps. Without velocities they come from the positions by
    finite differences (``numpy.gradient``: central differences, second order in
    ``frame_dt_ps``, one-sided at the two end frames), which needs a frame interval
    much shorter than the rotational period (write positions every MD step or few).
    Returns (L (F, 3) in amu·Å²/ps, a string stating the source of the velocities).
    """
    x = np.asarray(positions, dtype=np.float64)
    m = np.asarray(masses, dtype=np.float64)
    if velocities is None:
        if frame_dt_ps is None or x.shape[0] < 3:
            raise ValueError("finite-difference velocities need >= 3 frames and frame_dt_ps")
        v = np.gradient(x, frame_dt_ps, axis=0)
        source = f"finite differences of positions (central, dt = {frame_dt_ps:g} ps)"
    else:
        v = np.asarray(velocities, dtype=np.float64)
        source = "velocities"
    r = x - centre_of_mass(x, m)[..., None, :]
    u = v - centre_of_mass(v, m)[..., None, :]
    return np.einsum("n,...ni->...i", m, np.cross(r, u)), source


def torques(positions: np.ndarray, forces: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Net torque about the centre of mass, τ = Σ (x − x_com) × F: positions and forces
    (F, N, 3) (Å, eV/Å), masses (N,) amu → (F, 3) eV. (Σ F × x_com is removed
    with x − x_com, so a non-zero net force does not contribute.)"""
    x = np.asarray(positions, dtype=np.float64)
    r = x - centre_of_mass(x, masses)[..., None, :]
    return np.cross(r, np.asarray(forces, dtype=np.float64)).sum(axis=-2)


@dataclass
class AngularMomentumResult:
    """L(t) (F, 3) amu·Å²/ps at times (F,) ps, how velocities were obtained, the drift
    of each component and of |L| (slopes in amu·Å²/ps², block-jackknife errors) and the
    standard deviation of each component over the run."""

    time: np.ndarray
    L: np.ndarray
    source: str
    drift: list[LinearFit]
    drift_norm: LinearFit
    std: np.ndarray
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "units": {"L": "amu*A^2/ps", "time": "ps", "slope": "amu*A^2/ps^2"},
            "hbar_per_unit": AMU_A2_PER_PS_IN_HBAR,
            "velocity_source": self.source,
            "n_frames": len(self.time),
            "L_initial": self.L[0],
            "L_final": self.L[-1],
            "L_mean": self.L.mean(axis=0),
            "L_std": self.std,
            "L_norm_mean": float(np.linalg.norm(self.L, axis=1).mean()),
            "drift_per_component": [d.to_dict() for d in self.drift],
            "drift_norm": self.drift_norm.to_dict(),
            **self.summary,
        }


def analyse_angular_momentum(
    time_ps: np.ndarray,
    positions: np.ndarray,
    masses: np.ndarray,
    velocities: np.ndarray | None = None,
    n_blocks: int = 5,
) -> AngularMomentumResult:
    """L(t) and its drift (see :func:`angular_momentum`); time_ps (F,) equally spaced."""
    t = np.asarray(time_ps, dtype=np.float64)
    dt = float(t[1] - t[0]) if len(t) > 1 else None
    L, source = angular_momentum(positions, masses, velocities, dt)
    nb = n_blocks if len(t) >= 2 * n_blocks else None
    drift = [linear_fit(t, L[:, k], nb) for k in range(3)]
    drift_norm = linear_fit(t, np.linalg.norm(L, axis=1), nb)
    return AngularMomentumResult(t, L, source, drift, drift_norm, L.std(axis=0))


@dataclass
class TorqueResult:
    """Torque τ(t) (F, 3) eV; mean |τ| with its block-averaged standard error, the mean
    vector ⟨τ⟩ (its errors too) and the RMS |τ|."""

    tau: np.ndarray
    mean_norm: float
    mean_norm_err: float
    mean_vector: np.ndarray
    mean_vector_err: np.ndarray
    rms_norm: float

    def to_dict(self) -> dict:
        return {
            "units": {"torque": "eV"},
            "n_frames": len(self.tau),
            "mean_abs_torque": self.mean_norm,
            "mean_abs_torque_err": self.mean_norm_err,
            "rms_abs_torque": self.rms_norm,
            "mean_torque_vector": self.mean_vector,
            "mean_torque_vector_err": self.mean_vector_err,
        }


def mean_torque(
    positions: np.ndarray, forces: np.ndarray, masses: np.ndarray, n_blocks: int = 5
) -> TorqueResult:
    """Mean |τ| over frames (see :func:`torques`), with block-averaged errors."""
    tau = torques(positions, forces, masses)
    norm = np.linalg.norm(tau, axis=1)
    if len(tau) >= 2 * n_blocks:
        mn, mn_err = block_average(norm, n_blocks)
        mv, mv_err = block_average(tau, n_blocks)
    else:
        mn, mn_err = float(norm.mean()), float("nan")
        mv, mv_err = tau.mean(axis=0), np.full(3, np.nan)
    return TorqueResult(tau, mn, mn_err, mv, mv_err, float(np.sqrt(np.mean(norm**2))))


def plot_angular_momentum(
    res: AngularMomentumResult, path, torque: TorqueResult | None = None, title: str = ""
):
    """L components and |L| against time (and |τ|(t) if given) → PNG."""
    n = 2 if torque is not None else 1
    fig, axes = new_figure(n, 1, (6.0, 3.2 * n))
    ax = axes[0] if n > 1 else axes
    for k, c in enumerate("xyz"):
        ax.plot(res.time, res.L[:, k], lw=0.8, label=f"$L_{c}$")
    ax.plot(res.time, np.linalg.norm(res.L, axis=1), "k", lw=1.0, label="|L|")
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("L (amu Å$^2$/ps)")
    ax.legend(fontsize=8, ncol=4, loc="best")
    ax.set_title(title or f"angular momentum ({res.source.split(' (')[0]})", fontsize=9)
    if torque is not None:
        axes[1].plot(res.time[: len(torque.tau)], np.linalg.norm(torque.tau, axis=1), lw=0.6)
        axes[1].axhline(torque.mean_norm, color="k", ls="--", lw=0.8)
        axes[1].set_xlabel("time (ps)")
        axes[1].set_ylabel("|τ| (eV)")
        axes[1].set_title(
            f"mean |τ| = {torque.mean_norm:.3g} ± {torque.mean_norm_err:.2g} eV", fontsize=9
        )
    return save_figure(fig, path)
