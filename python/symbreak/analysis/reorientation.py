"""Orientational time correlation of molecular axes, C_1(t) = ⟨u_i(0) · u_i(t)⟩ (first
Legendre polynomial), averaged over molecules and all time origins (FFT), with
block-averaged errors. Reported times: τ_int = ∫₀^{t*} C_1 dt up to the first zero
crossing t* (or the longest lag), and τ_1/e, where C_1 first falls below 1/e (linear
interpolation). For rotational diffusion C_1 = exp(−2 D_r t). Units: ps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .diffusion import _autocorr_sum
from .report import new_figure, save_figure
from .stats import block_average


def c1(u: np.ndarray, max_lag: int | None = None) -> np.ndarray:
    """C_1 (max_lag+1,) for unit vectors u (T, M, 3), lags 0..max_lag frames."""
    u = np.asarray(u, dtype=np.float64)
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    T, M = u.shape[:2]
    max_lag = T - 1 if max_lag is None else min(int(max_lag), T - 1)
    m = np.arange(max_lag + 1)
    return _autocorr_sum(u, max_lag) / ((T - m) * M)


def _tau_int(t: np.ndarray, c: np.ndarray) -> float:
    neg = np.nonzero(c <= 0)[0]
    end = neg[0] + 1 if len(neg) else len(c)
    tt, cc = t[:end], c[:end]
    return float(np.sum(0.5 * (cc[1:] + cc[:-1]) * np.diff(tt)))


def _tau_e(t: np.ndarray, c: np.ndarray) -> float:
    k = np.nonzero(c < np.exp(-1.0))[0]
    if len(k) == 0 or k[0] == 0:
        return float("nan")
    k = k[0]
    return float(t[k - 1] + (np.exp(-1) - c[k - 1]) * (t[k] - t[k - 1]) / (c[k] - c[k - 1]))


@dataclass
class ReorientationResult:
    """time (K,) ps, C_1 and its error (K,), τ_int and τ_1/e (ps) with errors."""

    time: np.ndarray
    c1: np.ndarray
    c1_err: np.ndarray
    tau_int: float
    tau_int_err: float
    tau_e: float
    tau_e_err: float
    n_blocks: int

    def to_dict(self) -> dict:
        return {
            "definition": "C1(t) = <u_i(0).u_i(t)>, all origins, per-block then block mean",
            "units": {"time": "ps"},
            "tau_int_ps": self.tau_int,
            "tau_int_err": self.tau_int_err,
            "tau_1_over_e_ps": self.tau_e,
            "tau_1_over_e_err": self.tau_e_err,
            "n_blocks": self.n_blocks,
            "time": self.time,
            "c1": self.c1,
            "c1_err": self.c1_err,
        }


def reorientation(
    u: np.ndarray, frame_dt_ps: float, n_blocks: int = 5, max_lag: int | None = None
) -> ReorientationResult:
    """C_1(t) of unit vectors u (T, M, 3) sampled every ``frame_dt_ps`` ps; per block
    of T // n_blocks frames, lags up to half a block unless ``max_lag`` (frames)."""
    u = np.asarray(u, dtype=np.float64)
    T = u.shape[0]
    n_blocks = max(1, int(n_blocks))
    bl = T // n_blocks
    lag = bl // 2 if max_lag is None else min(int(max_lag), bl - 1)
    t = np.arange(lag + 1) * frame_dt_ps
    curves = np.stack([c1(u[k * bl : (k + 1) * bl], lag) for k in range(n_blocks)])
    ti = np.array([_tau_int(t, c) for c in curves])
    te = np.array([_tau_e(t, c) for c in curves])
    if n_blocks >= 2:
        m, e = block_average(curves, n_blocks)
        a, ae = block_average(ti, n_blocks)
        b, be = (
            block_average(te, n_blocks) if np.all(np.isfinite(te)) else (float("nan"), float("nan"))
        )
    else:
        m, e, a, ae, b, be = curves[0], np.full(len(t), np.nan), ti[0], np.nan, te[0], np.nan
    return ReorientationResult(t, m, e, float(a), float(ae), float(b), float(be), n_blocks)


def plot_reorientation(res: ReorientationResult, path, title: str = ""):
    """C_1(t) with its error band → PNG."""
    fig, ax = new_figure(size=(6.0, 3.8))
    ax.plot(res.time, res.c1, lw=1.0)
    ax.fill_between(res.time, res.c1 - res.c1_err, res.c1 + res.c1_err, alpha=0.3, lw=0)
    ax.axhline(np.exp(-1), color="k", ls=":", lw=0.8)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("C$_1$(t)")
    ax.set_title(
        title or f"τ$_{{1/e}}$ = {res.tau_e:.3g} ps, τ$_{{int}}$ = {res.tau_int:.3g} ps", fontsize=9
    )
    return save_figure(fig, path)
