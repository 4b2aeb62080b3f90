"""Lab-frame orientation free energy of molecular axes (e.g. the water bisector =
dipole direction), F(cos θ, φ) in units of k_B T.

Definition: θ and φ are the polar and azimuthal angles of the unit vector u in the
lab frame (the frame of the trajectory file; for i-PI, a along x and b in the xy
plane), cos θ = u_z, φ = atan2(u_y, u_x) ∈ [−π, π). Bins are uniform in cos θ ∈ [−1, 1]
(n_cos bins) and φ (n_phi bins), so each bin subtends the same solid angle and an
isotropic distribution puts probability p_iso = 1 / (n_cos · n_phi) in every bin:

    F(cos θ, φ) / k_B T = −ln( p_bin / p_iso ),

zero everywhere for isotropic orientations, negative where orientations are favoured.
Errors: the histogram is accumulated per block of frames (``n_blocks`` contiguous
blocks, all molecules pooled); p_bin is the mean over blocks, σ_p its standard error,
and σ_F = σ_p / p_bin (first-order propagation). Flatness is summarised by
χ² = Σ ((p − p_iso)/σ_p)² over bins (≈ number of bins for an isotropic system) and by the
largest |F| in units of its error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .report import new_figure, save_figure
from .stats import block_average


def angles(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cos θ, φ) of vectors u (..., 3) (normalised here); φ in [−π, π)."""
    u = np.asarray(u, dtype=np.float64)
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    phi = np.arctan2(u[..., 1], u[..., 0])
    phi = np.where(phi >= np.pi, phi - 2 * np.pi, phi)
    return np.clip(u[..., 2], -1.0, 1.0), phi


@dataclass
class OrientationResult:
    """cos_edges (n_cos+1,), phi_edges (n_phi+1,) rad; p, p_err (n_cos, n_phi) bin
    probabilities; F, F_err (n_cos, n_phi) in k_B T (inf where a bin is empty);
    F_cos, F_cos_err (n_cos,): the φ-integrated profile F(cos θ); mean_u (3,),
    mean_u_err (3,): mean orientation vector (net polarisation); P2, P2_err: ⟨P₂(cos θ)⟩."""

    cos_edges: np.ndarray
    phi_edges: np.ndarray
    p: np.ndarray
    p_err: np.ndarray
    F: np.ndarray
    F_err: np.ndarray
    F_cos: np.ndarray
    F_cos_err: np.ndarray
    mean_u: np.ndarray
    mean_u_err: np.ndarray
    P2: float
    P2_err: float
    n_samples: int
    n_blocks: int

    @property
    def chi2(self) -> float:
        ok = self.p_err > 0
        p_iso = 1.0 / self.p.size
        return float(np.sum(((self.p[ok] - p_iso) / self.p_err[ok]) ** 2))

    def to_dict(self) -> dict:
        finite = np.isfinite(self.F) & (self.F_err > 0)
        z = np.abs(self.F[finite]) / self.F_err[finite]
        return {
            "definition": "F/kT = -ln(p_bin / p_iso), bins uniform in cos(theta) in [-1,1] "
            "and phi in [-pi,pi), p_iso = 1/(n_cos*n_phi); errors from block averaging",
            "units": "k_B T",
            "n_cos": len(self.cos_edges) - 1,
            "n_phi": len(self.phi_edges) - 1,
            "n_samples": self.n_samples,
            "n_blocks": self.n_blocks,
            "chi2": self.chi2,
            "n_bins": int(self.p.size),
            "chi2_per_bin": self.chi2 / self.p.size,
            "max_abs_F": float(np.max(np.abs(self.F[np.isfinite(self.F)]), initial=0.0)),
            "max_abs_F_over_err": float(z.max(initial=0.0)),
            "empty_bins": int(np.sum(self.p == 0)),
            "F_range": float(np.ptp(self.F[np.isfinite(self.F)])) if finite.any() else None,
            "cos_centres": 0.5 * (self.cos_edges[1:] + self.cos_edges[:-1]),
            "F_cos": self.F_cos,
            "F_cos_err": self.F_cos_err,
            "mean_u": self.mean_u,
            "mean_u_err": self.mean_u_err,
            "P2_mean": self.P2,
            "P2_err": self.P2_err,
            "F": self.F,
            "F_err": self.F_err,
        }


def orientation_free_energy(
    u: np.ndarray, n_cos: int = 10, n_phi: int = 12, n_blocks: int = 10
) -> OrientationResult:
    """F(cos θ, φ) of unit vectors u (F, M, 3) (frames, molecules) — see module doc."""
    u = np.asarray(u, dtype=np.float64)
    if u.ndim == 2:
        u = u[:, None, :]
    c, phi = angles(u)
    ic = np.minimum(((c + 1.0) * 0.5 * n_cos).astype(np.int64), n_cos - 1)
    ip = np.minimum(((phi + np.pi) / (2 * np.pi) * n_phi).astype(np.int64), n_phi - 1)
    flat = ic * n_phi + ip  # (F, M)
    nF = u.shape[0]
    if nF < n_blocks:
        raise ValueError(f"{nF} frames cannot make {n_blocks} blocks")
    b = nF // n_blocks
    hist = np.stack(
        [
            np.bincount(flat[k * b : (k + 1) * b].ravel(), minlength=n_cos * n_phi)
            for k in range(n_blocks)
        ]
    ).astype(np.float64)
    pb = hist / hist.sum(axis=1, keepdims=True)  # (n_blocks, bins)
    p, p_err = block_average(pb, n_blocks)
    p_iso = 1.0 / (n_cos * n_phi)
    with np.errstate(divide="ignore", invalid="ignore"):
        F = -np.log(p / p_iso)
        F_err = np.where(p > 0, p_err / p, np.inf)
    pc_b = pb.reshape(n_blocks, n_cos, n_phi).sum(axis=2)
    pc, pc_err = block_average(pc_b, n_blocks)
    with np.errstate(divide="ignore", invalid="ignore"):
        F_cos = -np.log(pc * n_cos)
        F_cos_err = np.where(pc > 0, pc_err / pc, np.inf)
    used = u[: b * n_blocks]
    mu, mu_err = block_average(used.mean(axis=1), n_blocks)
    P2, P2_err = block_average((1.5 * c[: b * n_blocks] ** 2 - 0.5).mean(axis=1), n_blocks)
    return OrientationResult(
        np.linspace(-1, 1, n_cos + 1),
        np.linspace(-np.pi, np.pi, n_phi + 1),
        p.reshape(n_cos, n_phi),
        p_err.reshape(n_cos, n_phi),
        F.reshape(n_cos, n_phi),
        F_err.reshape(n_cos, n_phi),
        F_cos,
        F_cos_err,
        np.asarray(mu),
        np.asarray(mu_err),
        float(P2),
        float(P2_err),
        int(b * n_blocks * u.shape[1]),
        n_blocks,
    )


def plot_orientation(res: OrientationResult, path, title: str = ""):
    """Map of F(cos θ, φ) and the φ-integrated profile F(cos θ) with error bars → PNG."""
    fig, (a1, a2) = new_figure(1, 2, (10.0, 3.8))
    Fp = np.where(np.isfinite(res.F), res.F, np.nan)
    lim = np.nanmax(np.abs(Fp)) if np.isfinite(Fp).any() else 1.0
    im = a1.pcolormesh(res.phi_edges, res.cos_edges, Fp, cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig.colorbar(im, ax=a1, label="F / k$_B$T")
    a1.set_xlabel("φ (rad)")
    a1.set_ylabel("cos θ")
    a1.set_title(title or f"χ²/bin = {res.chi2 / res.p.size:.2f}", fontsize=9)
    cc = 0.5 * (res.cos_edges[1:] + res.cos_edges[:-1])
    a2.errorbar(cc, res.F_cos, yerr=res.F_cos_err, fmt="o-", ms=3, capsize=2)
    a2.axhline(0, color="k", lw=0.6)
    a2.set_xlabel("cos θ")
    a2.set_ylabel("F(cos θ) / k$_B$T")
    return save_figure(fig, path)
