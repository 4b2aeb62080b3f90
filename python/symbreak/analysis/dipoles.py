"""Distance-resolved correlations between molecular dipole directions.

For each pair of molecules i ≠ j at centre-of-mass separation r = |r_ij| (minimum
image), with unit dipole (bisector) vectors u_i, u_j and r̂ = r_ij / r, the conditional
averages over all pairs in a shell [r, r + dr) are

- total:        C(r)   = ⟨ u_i · u_j ⟩
- longitudinal: C_L(r) = ⟨ (u_i · r̂)(u_j · r̂) ⟩          (components along the pair axis)
- transverse:   C_T(r) = ½ ⟨ u_i · u_j − (u_i · r̂)(u_j · r̂) ⟩  (per perpendicular axis)

so that C = C_L + 2 C_T; all three vanish for independent isotropic orientations. The
projections of the pair correlation h(12) on the rotational invariants of dielectric
theory (Wertheim; Stell, Patey & Høye), Δ(12) = u_i·u_j and D(12) = 3(u_i·r̂)(u_j·r̂) −
u_i·u_j, are

    h_Δ(r) = 3 g(r) ⟨Δ⟩_r = 3 g(r) C(r),
    h_D(r) = (3/2) g(r) ⟨D⟩_r = (3/2) g(r) (3 C_L − C) = 3 g(r) (C_L − C_T),

(from ⟨Δ²⟩ = 1/3, ⟨D²⟩ = 2/3, ⟨ΔD⟩ = 0 over isotropic orientations), with g(r) the
centre-of-mass RDF of the same pairs (so that h(12) = h_S(r) + h_Δ(r) Δ(12) +
h_D(r) D(12) + …). The Kirkwood-type running sum
G_K(R) = 1 + (1/M) Σ_{j≠i, r_ij<R} u_i·u_j is reported as well. Errors are block
averages over frames (the conditional averages of each block are averaged). Dipoles
are taken as unit vectors: fixed-charge point dipoles would scale all three by μ².

A second, geometric reading of "longitudinal / transverse" (used e.g. by Elton &
Fernández-Serra for water) selects *where* j sits relative to the dipole of i:
C_axial(r) = ⟨u_i·u_j⟩ over pairs with |u_i·r̂| ≥ cos θ_c (j within a double cone of
half-angle θ_c around the dipole axis of i) and C_equatorial(r) = ⟨u_i·u_j⟩ over pairs
with |u_i·r̂| ≤ sin θ_c (j near the plane perpendicular to it); each ordered pair (i, j)
and (j, i) is tested. Both are reported (θ_c = 30° by default). The study's exact
definitions (SI) were not available here; these are the standard ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .rdf import max_rdf_radius, pair_vectors
from .report import new_figure, save_figure


@dataclass
class DipoleCorrelationResult:
    """Bin centres r (n_bins,) Å and, per bin, C, C_L, C_T, h_Δ, h_D, g and their
    errors (arrays (n_bins,), NaN in bins without pairs); G_K(R) at the bin upper
    edges."""

    r: np.ndarray
    edges: np.ndarray
    C: np.ndarray
    C_err: np.ndarray
    CL: np.ndarray
    CL_err: np.ndarray
    CT: np.ndarray
    CT_err: np.ndarray
    g: np.ndarray
    h_delta: np.ndarray
    h_D: np.ndarray
    G_K: np.ndarray
    G_K_err: np.ndarray
    C_axial: np.ndarray
    C_axial_err: np.ndarray
    C_equatorial: np.ndarray
    C_equatorial_err: np.ndarray
    cone_deg: float
    n_frames: int
    n_blocks: int
    n_pairs: np.ndarray

    def to_dict(self) -> dict:
        first = int(np.argmax(self.n_pairs > 0)) if np.any(self.n_pairs > 0) else 0
        return {
            "definitions": {
                "C": "<u_i.u_j>_r",
                "C_L": "<(u_i.rhat)(u_j.rhat)>_r",
                "C_T": "0.5*<u_i.u_j - (u_i.rhat)(u_j.rhat)>_r",
                "h_delta": "3 g(r) C(r)",
                "h_D": "1.5 g(r) (3 C_L(r) - C(r))",
                "G_K": "1 + (1/M) sum_{j!=i, r_ij<R} u_i.u_j",
                "C_axial": "<u_i.u_j> over ordered pairs with |u_i.rhat| >= cos(cone)",
                "C_equatorial": "<u_i.u_j> over ordered pairs with |u_i.rhat| <= sin(cone)",
                "u": "unit bisector (dipole) vectors; r between centres of mass",
            },
            "cone_deg": self.cone_deg,
            "units": {"r": "angstrom"},
            "n_frames": self.n_frames,
            "n_blocks": self.n_blocks,
            "first_shell": {
                "r": self.r[first],
                "C": self.C[first],
                "C_L": self.CL[first],
                "C_T": self.CT[first],
            },
            "G_K_at_rmax": self.G_K[-1],
            "G_K_at_rmax_err": self.G_K_err[-1],
            "r": self.r,
            "C": self.C,
            "C_err": self.C_err,
            "C_L": self.CL,
            "C_L_err": self.CL_err,
            "C_T": self.CT,
            "C_T_err": self.CT_err,
            "h_delta": self.h_delta,
            "h_D": self.h_D,
            "g": self.g,
            "G_K": self.G_K,
            "C_axial": self.C_axial,
            "C_axial_err": self.C_axial_err,
            "C_equatorial": self.C_equatorial,
            "C_equatorial_err": self.C_equatorial_err,
        }


def dipole_correlations(
    centres: np.ndarray,
    u: np.ndarray,
    cells: np.ndarray,
    r_max: float | None = None,
    n_bins: int = 60,
    n_blocks: int = 5,
    cone_deg: float = 30.0,
) -> DipoleCorrelationResult:
    """C(r), C_L(r), C_T(r), h_Δ, h_D and G_K (see module doc) from molecular centres
    (F, M, 3) Å and unit dipole directions u (F, M, 3), fully periodic cells (F, 3, 3)."""
    x = np.asarray(centres, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    F, M = x.shape[:2]
    cells = np.broadcast_to(np.asarray(cells, dtype=np.float64), (F, 3, 3))
    rmax_ok = max_rdf_radius(cells)
    r_max = rmax_ok if r_max is None else r_max
    if r_max > rmax_ok * (1 + 1e-12):
        raise ValueError(f"r_max = {r_max} Å exceeds half the smallest cell width ({rmax_ok:.3f})")
    edges = np.linspace(0.0, r_max, n_bins + 1)
    nblk = max(1, min(n_blocks, F))
    bl = F // nblk
    # per block sums: counts, Σ u_i·u_j, Σ (u_i·r̂)(u_j·r̂), volume-weighted ideal counts
    S = np.zeros((nblk, 7, n_bins))
    cc, sc = np.cos(np.deg2rad(cone_deg)), np.sin(np.deg2rad(cone_deg))
    ideal = np.zeros((nblk, n_bins))
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    pbc = np.ones(3, dtype=bool)
    for f in range(bl * nblk):
        k = f // bl
        i, j, d = pair_vectors(x[f], x[f], cells[f], pbc, r_max, same=True)
        r = np.linalg.norm(d, axis=1)
        rh = d / r[:, None]
        dot = np.einsum("ij,ij->i", u[f, i], u[f, j])
        pi = np.abs(np.einsum("ij,ij->i", u[f, i], rh))
        pj = np.abs(np.einsum("ij,ij->i", u[f, j], rh))
        lon = np.einsum("ij,ij->i", u[f, i], rh) * np.einsum("ij,ij->i", u[f, j], rh)
        wax = (pi >= cc).astype(float) + (pj >= cc)
        weq = (pi <= sc).astype(float) + (pj <= sc)
        b = np.minimum((r / r_max * n_bins).astype(np.int64), n_bins - 1)
        S[k, 0] += np.bincount(b, minlength=n_bins)
        S[k, 1] += np.bincount(b, weights=dot, minlength=n_bins)
        S[k, 2] += np.bincount(b, weights=lon, minlength=n_bins)
        S[k, 3] += np.bincount(b, weights=wax, minlength=n_bins)
        S[k, 4] += np.bincount(b, weights=wax * dot, minlength=n_bins)
        S[k, 5] += np.bincount(b, weights=weq, minlength=n_bins)
        S[k, 6] += np.bincount(b, weights=weq * dot, minlength=n_bins)
        vol = abs(np.linalg.det(cells[f]))
        ideal[k] += 0.5 * M * (M - 1) / vol * shell
    cnt = S[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        Cb = S[:, 1] / cnt
        CLb = S[:, 2] / cnt
        CTb = 0.5 * (Cb - CLb)
        CAb = S[:, 4] / S[:, 3]
        CEb = S[:, 6] / S[:, 5]
        gb = cnt / ideal
        GKb = 1.0 + 2.0 * np.cumsum(S[:, 1], axis=1) / (M * bl)

    def mean_err(a):
        m = np.nanmean(a, axis=0)
        if nblk < 2:
            return m, np.full(a.shape[1], np.nan)
        n = np.sum(np.isfinite(a), axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            e = np.nanstd(a, axis=0, ddof=1) / np.sqrt(n)
        return m, e

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        C, C_err = mean_err(Cb)
        CL, CL_err = mean_err(CLb)
        CT, CT_err = mean_err(CTb)
        g, _ = mean_err(gb)
        GK, GK_err = mean_err(GKb)
        CA, CA_err = mean_err(CAb)
        CE, CE_err = mean_err(CEb)
    return DipoleCorrelationResult(
        0.5 * (edges[1:] + edges[:-1]),
        edges,
        C,
        C_err,
        CL,
        CL_err,
        CT,
        CT_err,
        g,
        3.0 * g * C,
        1.5 * g * (3.0 * CL - C),
        GK,
        GK_err,
        CA,
        CA_err,
        CE,
        CE_err,
        float(cone_deg),
        bl * nblk,
        nblk,
        cnt.sum(axis=0),
    )


def plot_dipole_correlations(res: DipoleCorrelationResult, path, title: str = ""):
    """C, C_L, C_T (error bars); C_axial, C_equatorial; h_Δ, h_D against r → PNG."""
    fig, (a1, a2, a3) = new_figure(1, 3, (14.0, 3.8))
    for y, e, lab in (
        (res.C, res.C_err, "⟨u$_i$·u$_j$⟩"),
        (res.CL, res.CL_err, "C$_L$"),
        (res.CT, res.CT_err, "C$_T$"),
    ):
        a1.errorbar(res.r, y, yerr=e, lw=0.9, ms=2, fmt="o-", capsize=1.5, label=lab)
    a1.set_ylabel("correlation")
    a1.set_title(title, fontsize=9)
    for y, e, lab in (
        (res.C_axial, res.C_axial_err, f"axial (±{res.cone_deg:g}°)"),
        (res.C_equatorial, res.C_equatorial_err, f"equatorial (±{res.cone_deg:g}°)"),
    ):
        a2.errorbar(res.r, y, yerr=e, lw=0.9, ms=2, fmt="o-", capsize=1.5, label=lab)
    a2.set_ylabel("⟨u$_i$·u$_j$⟩")
    a3.plot(res.r, res.h_delta, label="h$_Δ$(r)")
    a3.plot(res.r, res.h_D, label="h$_D$(r)")
    for ax in (a1, a2, a3):
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("r (Å)")
        ax.legend(fontsize=8)
    return save_figure(fig, path)
