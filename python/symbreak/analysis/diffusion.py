"""Mean-squared displacement of molecular centres of mass and the self-diffusion
coefficient.

MSD(τ) = ⟨ |x_i(t+τ) − x_i(t)|² ⟩ over molecules i and all time origins t (FFT
algorithm, O(T log T)), from *unwrapped* centres of mass, optionally after removing the
drift of the system's centre of mass (default; equal-mass molecules). The trajectory is
cut into ``n_blocks`` contiguous blocks; in each block the MSD is computed up to a
maximum lag of half the block (so every lag has at least half the block's origins) and
D = slope / 6 is fitted (least squares) on the window [fit_start, fit_end] ps, by default
[0.2, 1.0] × the maximum lag — leaving out the ballistic / cage regime at short lags.
D and the MSD curve are the block means, errors the standard errors over blocks.
No finite-size (Yeh–Hummer) correction is applied. Units: Å, ps, D in Å²/ps
(1 Å²/ps = 10⁻⁸ m²/s; water at 300 K ≈ 0.23 Å²/ps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .report import new_figure, save_figure
from .stats import block_average
from .units import A2_PER_PS_IN_1E9_M2_PER_S


def _autocorr_sum(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Σ over trailing axes and origins of x(t)·x(t+m), for m = 0..max_lag; x (T, ...)."""
    T = x.shape[0]
    n = 1 << int(np.ceil(np.log2(2 * T)))
    fx = np.fft.rfft(x.reshape(T, -1), n=n, axis=0)
    ac = np.fft.irfft((fx * fx.conj()).sum(axis=1), n=n)
    return ac[: max_lag + 1]


def msd(x: np.ndarray, max_lag: int | None = None) -> np.ndarray:
    """MSD (max_lag+1,) in Å² for lags 0..max_lag frames, averaged over particles and all
    time origins; x (T, M, 3) unwrapped positions in Å."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x[0]
    T = x.shape[0]
    max_lag = T - 1 if max_lag is None else min(int(max_lag), T - 1)
    sq = np.einsum("tmi,tmi->t", x, x)
    P = np.concatenate([[0.0], np.cumsum(sq)])
    m = np.arange(max_lag + 1)
    s1 = P[T - m] + (P[T] - P[m])
    s2 = _autocorr_sum(x, max_lag)
    return (s1 - 2.0 * s2) / ((T - m) * x.shape[1])


@dataclass
class DiffusionResult:
    """lag times (K,) ps; MSD and its error (K,) Å²; D ± err in Å²/ps; the fit window
    (ps) and how many blocks were used."""

    time: np.ndarray
    msd: np.ndarray
    msd_err: np.ndarray
    D: float
    D_err: float
    intercept: float
    fit_window: tuple[float, float]
    n_blocks: int
    n_molecules: int
    remove_com: bool

    def to_dict(self) -> dict:
        return {
            "definition": "MSD of unwrapped molecular centres of mass, all time origins; "
            "D = slope/6 of a least-squares line over the fit window, per block; "
            "mean and standard error over blocks",
            "units": {"time": "ps", "msd": "angstrom^2", "D": "angstrom^2/ps"},
            "D": self.D,
            "D_err": self.D_err,
            "D_1e-9_m2_per_s": self.D * A2_PER_PS_IN_1E9_M2_PER_S,
            "D_err_1e-9_m2_per_s": self.D_err * A2_PER_PS_IN_1E9_M2_PER_S,
            "fit_window_ps": list(self.fit_window),
            "fit_intercept": self.intercept,
            "n_blocks": self.n_blocks,
            "n_molecules": self.n_molecules,
            "system_com_removed": self.remove_com,
            "finite_size_correction": None,
            "time": self.time,
            "msd": self.msd,
            "msd_err": self.msd_err,
        }


def diffusion(
    x: np.ndarray,
    frame_dt_ps: float,
    n_blocks: int = 5,
    fit_start: float | None = None,
    fit_end: float | None = None,
    remove_com: bool = True,
) -> DiffusionResult:
    """MSD and D from unwrapped centres x (T, M, 3) Å sampled every ``frame_dt_ps`` ps
    (see the module doc for the blocks and the default fit window)."""
    x = np.asarray(x, dtype=np.float64)
    if remove_com:
        x = x - (x.mean(axis=1, keepdims=True) - x[:1].mean(axis=1, keepdims=True))
    T, M = x.shape[:2]
    n_blocks = max(1, int(n_blocks))
    bl = T // n_blocks
    max_lag = bl // 2
    if max_lag < 4:
        raise ValueError(f"{T} frames are too few for {n_blocks} blocks")
    t = np.arange(max_lag + 1) * frame_dt_ps
    t0 = 0.2 * t[-1] if fit_start is None else float(fit_start)
    t1 = t[-1] if fit_end is None else float(fit_end)
    win = (t >= t0 - 1e-12) & (t <= t1 + 1e-12)
    if win.sum() < 2:
        raise ValueError(f"fit window [{t0}, {t1}] ps holds < 2 lags (max lag {t[-1]} ps)")
    curves = np.stack([msd(x[k * bl : (k + 1) * bl], max_lag) for k in range(n_blocks)])
    slopes, icpts = [], []
    for c in curves:
        p = np.polyfit(t[win], c[win], 1)
        slopes.append(p[0] / 6.0)
        icpts.append(p[1])
    if n_blocks >= 2:
        m, e = block_average(curves, n_blocks)
        D, D_err = block_average(np.asarray(slopes), n_blocks)
    else:
        m, e = curves[0], np.full(len(t), np.nan)
        D, D_err = float(slopes[0]), float("nan")
    return DiffusionResult(
        t,
        m,
        e,
        float(D),
        float(D_err),
        float(np.mean(icpts)),
        (float(t[win][0]), float(t[win][-1])),
        n_blocks,
        M,
        remove_com,
    )


def plot_msd(res: DiffusionResult, path, title: str = ""):
    """MSD(t) with error band and the fitted line over the fit window → PNG."""
    fig, ax = new_figure(size=(6.0, 3.8))
    ax.plot(res.time, res.msd, lw=1.0, label="MSD")
    ax.fill_between(res.time, res.msd - res.msd_err, res.msd + res.msd_err, alpha=0.3, lw=0)
    tw = np.linspace(*res.fit_window, 20)
    ax.plot(
        tw,
        6 * res.D * tw + res.intercept,
        "k--",
        lw=1.0,
        label=f"D = {res.D:.4g} ± {res.D_err:.2g} Å²/ps",
    )
    ax.axvspan(*res.fit_window, color="0.9", zorder=0)
    ax.set_xlabel("lag time (ps)")
    ax.set_ylabel("MSD (Å$^2$)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
