"""Radial distribution functions g_AB(r) of periodic systems (g_OO, g_OH, g_HH).

Pairs are counted with the minimum-image convention up to r_max ≤ half the smallest
perpendicular width of the cell, where it is exact (no pair missed or counted twice,
any triclinic cell). Normalisation by the ideal-gas expectation of each frame:

    g_AB(r) = ⟨ n_AB(r, r+dr) / ( N_A ρ_B 4π/3 [(r+dr)³ − r³] ) ⟩_frames,

with n_AB the number of ordered A–B pairs (i ≠ j) in the shell and ρ_B = N_B / V, or
(N_A − 1)/V for A = B (so an ideal gas gives g = 1 exactly, not 1 − 1/N). The running
coordination number n_AB(r) = (number of B within r of an A)/N_A is counted directly.
Errors are block averages over frames. Intramolecular pairs are included unless
molecule ids are given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .molecules import minimum_image, perpendicular_widths
from .report import new_figure, save_figure
from .stats import block_average


def max_rdf_radius(cells: np.ndarray) -> float:
    """Largest r_max (Å) for exact minimum-image counting: half the smallest
    perpendicular width over all frames, cells (F, 3, 3) or (3, 3)."""
    cells = np.asarray(cells).reshape(-1, 3, 3)
    return float(min(perpendicular_widths(c).min() for c in cells) / 2.0)


def _orthorhombic(cell: np.ndarray) -> bool:
    c = np.asarray(cell)
    return bool(np.all(c[~np.eye(3, dtype=bool)] == 0) and np.all(np.diag(c) > 0))


def _pairs_kdtree(xa, xb, L, r_max, same):
    """Candidate pairs within r_max in an orthorhombic box of sides L (periodic k-d tree)."""
    from scipy.spatial import cKDTree

    def wrap(x):
        w = np.mod(x, L)
        return np.where(w >= L, w - L, w)

    ta = cKDTree(wrap(xa), boxsize=L)
    if same:
        ij = ta.query_pairs(r_max, output_type="ndarray")
        return ij[:, 0], ij[:, 1]
    tb = cKDTree(wrap(xb), boxsize=L)
    m = ta.sparse_distance_matrix(tb, r_max, output_type="coo_matrix")
    return m.row.astype(np.int64), m.col.astype(np.int64)


def pair_vectors(
    xa: np.ndarray,
    xb: np.ndarray,
    cell: np.ndarray,
    pbc,
    r_max: float,
    same: bool = False,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    chunk_pairs: int = 2_000_000,
    method: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All minimum-image pairs (i in a, j in b) closer than r_max in one frame.

    xa (Na, 3), xb (Nb, 3) Å. With ``same`` (a and b the same set) each unordered pair
    is returned once (i < j). ``exclude``: group ids (Na,), (Nb,); pairs with equal ids
    are dropped (e.g. atoms of the same molecule). Returns (i (K,), j (K,), d (K, 3)
    vectors x_j − x_i in Å). ``method``: ``"dense"`` (chunked all-pairs minimum image,
    any cell), ``"kdtree"`` (periodic k-d tree from scipy, orthorhombic cells only) or
    ``"auto"`` (the k-d tree when the cell is orthorhombic and the cutoff sphere holds
    less than a tenth of the cell, where it pays off). Both are exact for r_max below
    half the smallest cell width."""
    xa = np.asarray(xa, dtype=np.float64)
    xb = np.asarray(xb, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    ortho = bool(np.all(pbc)) and _orthorhombic(cell)
    if method == "kdtree" and not ortho:
        raise ValueError("the k-d tree path needs a fully periodic orthorhombic cell")
    if method == "auto":
        small = ortho and 4.19 * r_max**3 < 0.1 * abs(np.linalg.det(cell))
        method = "kdtree" if small else "dense"
    if method == "kdtree":
        L = np.diag(cell).copy()
        i, j = _pairs_kdtree(xa, xb, L, r_max, same)
        if exclude is not None:
            keep = exclude[0][i] != exclude[1][j]
            i, j = i[keep], j[keep]
        d = xb[j] - xa[i]
        d -= L * np.round(d / L)
        keep = np.einsum("ij,ij->i", d, d) < r_max * r_max
        return i[keep], j[keep], d[keep]
    out_i, out_j, out_d = [], [], []
    step = max(1, chunk_pairs // max(len(xb), 1))
    for a0 in range(0, len(xa), step):
        d = minimum_image(xb[None, :, :] - xa[a0 : a0 + step, None, :], cell, pbc)
        r2 = np.einsum("ijk,ijk->ij", d, d)
        mask = r2 < r_max * r_max
        ii = np.arange(a0, a0 + d.shape[0])[:, None]
        jj = np.arange(len(xb))[None, :]
        if same:
            mask &= jj > ii
        if exclude is not None:
            mask &= exclude[0][a0 : a0 + d.shape[0], None] != exclude[1][None, :]
        i, j = np.nonzero(mask)
        out_i.append(i + a0)
        out_j.append(j)
        out_d.append(d[i, j])
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


@dataclass
class RDFResult:
    """r (n_bins,) bin centres Å; g, g_err (n_bins,); coordination n(r) at the bin's
    upper edge, n_err; pair label; mean density of B in Å⁻³."""

    r: np.ndarray
    edges: np.ndarray
    g: np.ndarray
    g_err: np.ndarray
    coordination: np.ndarray
    coordination_err: np.ndarray
    pair: str
    density_b: float
    n_frames: int
    n_blocks: int

    def peaks(self, window: float = 0.3, smooth: float = 0.1) -> dict:
        """First maximum of g and the first minimum after it, with n(r) there, located
        on g smoothed by a running mean over ``smooth`` Å: the first local maximum
        (over ±``window`` Å) with g > 1, then the lowest point within 1.5 Å beyond it."""
        if not np.any(self.g > 0):
            return {}
        dr = self.edges[1] - self.edges[0]
        w = max(1, int(round(smooth / dr)))
        gs = np.convolve(self.g, np.ones(w) / w, mode="same")
        h = max(1, int(round(window / dr)))
        kmax = None
        for k in np.nonzero(gs > 1.0)[0]:
            lo, hi = max(0, k - h), min(len(gs), k + h + 1)
            if gs[k] == gs[lo:hi].max():
                kmax = int(k)
                break
        if kmax is None:
            return {}
        hi = min(len(gs), kmax + 1 + int(round(1.5 / dr)))
        kmin = kmax + int(np.argmin(gs[kmax:hi]))
        return {
            "first_peak_r": self.r[kmax],
            "first_peak_g": self.g[kmax],
            "first_peak_g_err": self.g_err[kmax],
            "first_min_r": self.r[kmin],
            "first_min_g": self.g[kmin],
            "coordination_at_first_min": self.coordination[kmin],
            "coordination_at_first_min_err": self.coordination_err[kmin],
        }

    def summary(self) -> dict:
        """JSON-ready: the first peak and minimum (:meth:`peaks`), the number of frames
        and the curve (r, g rounded to 1e-4), as the stability scripts record it."""
        return {k: float(v) for k, v in self.peaks().items()} | {
            "frames": self.n_frames,
            "r": self.r.round(4).tolist(),
            "g": self.g.round(4).tolist(),
        }

    def to_dict(self) -> dict:
        return {
            "pair": self.pair,
            "definition": "g(r) = <n_AB(shell)/(N_A rho_B V_shell)>, rho_B = N_B/V "
            "((N_A-1)/V if A=B); minimum image, r_max <= half the smallest cell width",
            "units": {"r": "angstrom", "density": "1/angstrom^3"},
            "n_frames": self.n_frames,
            "n_blocks": self.n_blocks,
            "density_b": self.density_b,
            "bin_width": float(self.edges[1] - self.edges[0]),
            **self.peaks(),
            "r": self.r,
            "g": self.g,
            "g_err": self.g_err,
            "coordination": self.coordination,
        }


def rdf(
    positions: np.ndarray,
    cells: np.ndarray,
    symbols,
    pair: tuple[str, str] | str = ("O", "O"),
    r_max: float | None = None,
    n_bins: int = 200,
    n_blocks: int = 5,
    molecule_ids: np.ndarray | None = None,
) -> RDFResult:
    """g_AB(r) over frames: positions (F, N, 3) Å, cells (F, 3, 3) rows Å (fully
    periodic), symbols (N,), pair e.g. ("O", "H") or "OH". ``molecule_ids`` (N,):
    drop intramolecular pairs. r_max defaults to the largest exact value."""
    x = np.asarray(positions, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    F = x.shape[0]
    cells = np.broadcast_to(np.asarray(cells, dtype=np.float64), (F, 3, 3))
    if np.any(np.abs(np.linalg.det(cells)) < 1e-9):
        raise ValueError("g(r) needs a fully periodic cell with a volume")
    if isinstance(pair, str):
        pair = (pair[0], pair[1:]) if len(pair) == 2 else tuple(pair.split("-"))
    A, B = pair
    symbols = np.asarray(symbols).astype(str)
    ia, ib = np.nonzero(symbols == A)[0], np.nonzero(symbols == B)[0]
    if len(ia) == 0 or len(ib) == 0:
        raise ValueError(f"no {A} or no {B} atoms (species: {sorted(set(symbols))})")
    same = A == B
    rmax_ok = max_rdf_radius(cells)
    if r_max is None:
        r_max = rmax_ok
    elif r_max > rmax_ok * (1 + 1e-12):
        raise ValueError(f"r_max = {r_max} Å exceeds half the smallest cell width ({rmax_ok:.3f})")
    edges = np.linspace(0.0, r_max, n_bins + 1)
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    ex = None
    if molecule_ids is not None:
        mid = np.asarray(molecule_ids)
        ex = (mid[ia], mid[ib])
    counts = np.empty((F, n_bins))
    vols = np.abs(np.linalg.det(cells))
    pbc = np.ones(3, dtype=bool)
    for f in range(F):
        _, _, d = pair_vectors(x[f, ia], x[f, ib], cells[f], pbc, r_max, same, ex)
        h, _ = np.histogram(np.linalg.norm(d, axis=1), bins=edges)
        counts[f] = h * (2.0 if same else 1.0)  # ordered pairs
    nb_eff = (len(ib) - 1) if same else len(ib)
    rho = nb_eff / vols  # (F,)
    g_f = counts / (len(ia) * rho[:, None] * shell[None, :])
    n_f = np.cumsum(counts, axis=1) / len(ia)
    nblk = min(n_blocks, F)
    if nblk >= 2:
        g, g_err = block_average(g_f, nblk)
        n, n_err = block_average(n_f, nblk)
    else:
        g, g_err = g_f.mean(0), np.full(n_bins, np.nan)
        n, n_err = n_f.mean(0), np.full(n_bins, np.nan)
    return RDFResult(
        0.5 * (edges[1:] + edges[:-1]),
        edges,
        g,
        g_err,
        n,
        n_err,
        f"{A}{B}",
        float(np.mean(len(ib) / vols)),
        F,
        nblk,
    )


def plot_rdf(results: list[RDFResult], path, title: str = ""):
    """g(r) (with error band) and running coordination numbers of several pairs → PNG."""
    fig, (a1, a2) = new_figure(1, 2, (10.0, 3.8))
    for res in results:
        (line,) = a1.plot(res.r, res.g, lw=1.0, label=f"g$_{{{res.pair}}}$")
        a1.fill_between(
            res.r, res.g - res.g_err, res.g + res.g_err, alpha=0.3, color=line.get_color(), lw=0
        )
        a2.plot(res.edges[1:], res.coordination, lw=1.0, label=f"n$_{{{res.pair}}}$")
    a1.axhline(1.0, color="k", lw=0.5)
    a1.set_xlabel("r (Å)")
    a1.set_ylabel("g(r)")
    a1.legend(fontsize=8)
    a1.set_title(title, fontsize=9)
    a2.set_xlabel("r (Å)")
    a2.set_ylabel("n(r)")
    a2.legend(fontsize=8)
    return save_figure(fig, path)
