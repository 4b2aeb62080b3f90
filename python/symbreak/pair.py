"""A radial pair prior: one cubic B-spline φ_ab(r) per pair of species.

Most of the force variance of water is radial and stiff (the O–H stretch is ~50 eV/Å²;
forces have a standard deviation of ~2.3 eV/Å on the training frames). A network that reads
raw coordinates of order 1 must grow large weights to express that curvature, which costs
many optimiser steps. A species-pair spline expresses it directly, and being linear in its
coefficients it is fitted by least squares before training (a few seconds). The PET then
learns the many-body remainder, which is smaller and smoother. The spline stays a trainable
part of the model. It is rotationally invariant; the transformer, which reads raw Cartesian
edge vectors, is what breaks the symmetry.

Spline: uniform knots t_k = r_min + (k - 3) h; the n = (cutoff - r_min)/h basis functions
whose support ends by the cutoff. φ and its first two derivatives therefore vanish at the
cutoff (energies stay C² as atoms cross it).

Below ``wall_radius`` (the training data's shortest distance of the pair, see
:mod:`symbreak.short_range`) the spline gives way to a repulsive wall
φ(r) = φ(r_w) + a ρ (exp((r_w - r)/ρ) - 1), with the spline's value, slope (a = -φ'(r_w))
and curvature (ρ = a / φ''(r_w), within [0.1, 0.5] Å) at r_w: continuous to the second
derivative wherever the spline is repulsive and convex at r_w, which the fit ensures.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn


def n_basis(r_min: float, cutoff: float, spacing: float) -> int:
    """Number of basis functions per species pair; ValueError if the grid is not uniform."""
    n = (cutoff - r_min) / spacing
    if spacing <= 0 or n < 1 or abs(n - round(n)) > 1e-6:
        raise ValueError(
            f"pair spline: (cutoff - r_min) / spacing = ({cutoff} - {r_min}) / {spacing} "
            "must be a positive whole number"
        )
    return int(round(n))


def local_cubic_basis(s: Tensor) -> tuple[Tensor, Tensor]:
    """The four non-zero uniform cubic B-splines at local coordinate s ∈ [0, 1), [E, 4],
    and their derivatives with respect to s."""
    s2 = s * s
    s3 = s2 * s
    t = 1.0 - s
    values = torch.stack(
        [t * t * t, 3.0 * s3 - 6.0 * s2 + 4.0, -3.0 * s3 + 3.0 * s2 + 3.0 * s + 1.0, s3], dim=1
    ) * (1.0 / 6.0)
    derivs = torch.stack([-0.5 * t * t, 1.5 * s2 - 2.0 * s, -1.5 * s2 + s + 0.5, 0.5 * s2], dim=1)
    return values, derivs


def locate(r: Tensor, r_min: float, spacing: float, n: int) -> tuple[Tensor, Tensor]:
    """Interval index i [E] (its four non-zero basis functions are i - 3 .. i) and the
    local coordinate s ∈ [0, 1] [E] of each r (Å) on the uniform grid of ``n_basis``."""
    u = (r - (r_min - 3.0 * spacing)) / spacing
    i = torch.floor(u.detach()).clamp(0, n + 2)
    s = (u - i).clamp(0.0, 1.0)
    return i.long(), s


class PairPrior(nn.Module):
    """E_pair = ½ Σ_(i,j) φ_(s_i s_j)(r_ij) over a full edge list (each pair seen twice).

    ``coefficients`` [P, n] (eV), one row per unordered species pair, P = S(S+1)/2;
    ``wall_radius`` [P] (Å) where the wall takes over (0: no wall).
    """

    def __init__(self, n_species: int, cutoff: float, r_min: float = 0.5, spacing: float = 0.1):
        super().__init__()
        self.r_min = float(r_min)
        self.spacing = float(spacing)
        self.cutoff = float(cutoff)
        self.n_basis = n_basis(r_min, cutoff, spacing)
        pairs = torch.zeros(n_species, n_species, dtype=torch.long)
        k = 0
        for a in range(n_species):
            for b in range(a, n_species):
                pairs[a, b] = k
                pairs[b, a] = k
                k += 1
        self.register_buffer("pair_index", pairs)
        self.coefficients = nn.Parameter(torch.zeros(k, self.n_basis))
        self.register_buffer("wall_radius", torch.zeros(k, dtype=torch.float64))
        # The wall's decay length ρ (Å) stays in [rho_min, rho_max] (0.1 Å bounds its energy
        # at r = 0); its slope is at least about min_slope (eV/Å), even where the spline is
        # not repulsive at r_w.
        self.rho_min = 0.1
        self.rho_max = 0.5
        self.min_slope = 0.1

    def set_walls(self, shortest: Tensor) -> None:
        """Walls at the shortest distance [S, S] (Å) of each species pair (0: none)."""
        with torch.no_grad():
            s = self.pair_index.shape[0]
            for a in range(s):
                for b in range(a, s):
                    self.wall_radius[self.pair_index[a, b]] = float(shortest[a, b])

    def spline_at(self, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """φ, φ' and φ'' of every pair's spline at r [P] (Å, one radius per pair), [P] each
        (eV, eV/Å, eV/Å²), in the dtype of ``r``."""
        i, s = self._locate(r)
        t = 1.0 - s
        values, derivs = local_cubic_basis(s)
        second = torch.stack([t, 3.0 * s - 2.0, 1.0 - 3.0 * s, s], dim=1)
        coef = torch.nn.functional.pad(self.coefficients.to(r.dtype), (3, 3))
        rows = torch.arange(coef.shape[0], device=r.device)[:, None]
        local = coef[rows, i[:, None] + torch.arange(4, device=r.device)]
        h = self.spacing
        return (
            (local * values).sum(1),
            (local * derivs).sum(1) / h,
            (local * second).sum(1) / (h * h),
        )

    def wall_parameters(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per pair [P] each: r_w (Å), φ(r_w) (eV), the slope a > 0 (eV/Å) and the decay
        length ρ (Å) of the wall (module docstring)."""
        r_w = self.wall_radius.to(dtype)
        value, slope, curvature = self.spline_at(r_w)
        # a = -φ'(r_w) where that is well above min_slope (to 1e-7 eV/Å at a = 15 min_slope)
        a = self.min_slope * torch.nn.functional.softplus(-slope / self.min_slope)
        rho = (a / curvature.clamp(min=a / self.rho_max)).clamp(min=self.rho_min)
        return r_w, value, a, rho

    def _locate(self, r: Tensor) -> tuple[Tensor, Tensor]:
        return locate(r, self.r_min, self.spacing, self.n_basis)

    def local_basis(self, r: Tensor) -> tuple[Tensor, Tensor]:
        """For each r [E] (Å): the interval index i [E] (its four non-zero basis
        functions are i-3 .. i, i.e. columns i .. i+3 of coefficients padded by three
        zeros on each side) and their values [E, 4]."""
        i, s = self._locate(r)
        return i, local_cubic_basis(s)[0]

    def edge_energies(
        self, species: Tensor, centers: Tensor, neighbors: Tensor, r: Tensor
    ) -> Tensor:
        """φ(r_ij) for every edge [E] (eV), in the dtype of ``r`` [E] (Å)."""
        # .long(): C++ Module::to(dtype) casts every buffer, integer ones too (LAMMPS float64)
        pair = self.pair_index.long()[species[centers], species[neighbors]]
        i, s = self._locate(r)
        values, _ = local_cubic_basis(s)
        # Coefficients padded with three zeros on each side: interval i touches padded
        # entries i .. i+3 (basis functions i-3 .. i).
        coef = torch.nn.functional.pad(self.coefficients.to(r.dtype), (3, 3))
        flat = pair[:, None] * (self.n_basis + 6) + i[:, None] + torch.arange(4, device=r.device)
        spline = (coef.reshape(-1)[flat] * values).sum(1)
        r_w, value, a, rho = self.wall_parameters(r.dtype)
        r_w, value, a, rho = r_w[pair], value[pair], a[pair], rho[pair]
        depth = (r_w - r).clamp(min=0.0)  # 0 above the wall: no overflow in either branch
        wall = value + a * rho * torch.expm1(depth / rho)
        return torch.where(r < r_w, wall, spline)

    def design(
        self, species: Tensor, centers: Tensor, neighbors: Tensor, r: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Dense basis [E, P·n] and its r-derivative (1/Å) for the least-squares fit."""
        pair = self.pair_index[species[centers], species[neighbors]]
        i, s = self._locate(r)
        values, derivs = local_cubic_basis(s)
        derivs = derivs / self.spacing
        width = self.n_basis + 6
        basis = torch.zeros(r.shape[0], self.pair_index.max().item() + 1, width, dtype=r.dtype)
        dbasis = torch.zeros_like(basis)
        rows = torch.arange(r.shape[0])[:, None].expand(-1, 4)
        cols = i[:, None] + torch.arange(4)
        pairs = pair[:, None].expand(-1, 4)
        basis[rows, pairs, cols] = values
        dbasis[rows, pairs, cols] = derivs
        keep = slice(3, 3 + self.n_basis)
        return basis[:, :, keep].reshape(r.shape[0], -1), dbasis[:, :, keep].reshape(r.shape[0], -1)


def fit_pair_prior(
    prior: PairPrior,
    samples: list,
    n_species: int,
    energy_weight: float = 10.0,
    ridge: float = 1e-6,
    monotone_below: np.ndarray | None = None,
    smoothing: float = 0.0,
    targets: list[tuple[float, np.ndarray]] | None = None,
) -> tuple[np.ndarray, dict]:
    """Least-squares fit of the spline coefficients and a per-species energy baseline to
    forces (eV/Å) and per-atom energies (eV/atom, weighted by ``energy_weight``) of
    ``samples`` (training_data.Sample), or to ``targets`` (energy eV, forces [N, 3] eV/Å per
    sample, e.g. the residual of the rest of a model). Sets ``prior.coefficients``;
    returns the baseline [n_species] (eV/atom) and the fit's force RMSE/MAE (eV/Å).

    Where the data are thin the fit is shaped, not free:

    * ``monotone_below`` [S, S] (Å): the spline of each species pair is non-increasing
      (repulsive) for r up to about this distance: its B-spline coefficients there are
      constrained non-increasing, which makes the curve so (a bounded least-squares
      problem, ``scipy.optimize.lsq_linear``);
    * ``smoothing`` (eV²/Å⁻³ per force component): weight of ∫ φ''(r)² dr, the roughness
      of the curves, against the mean square force residual; a few samples then set a
      smooth curve instead of an oscillating one.
    """
    from scipy.optimize import lsq_linear

    n_coef = prior.coefficients.numel()
    n_pairs, n = prior.coefficients.shape
    rows, values = [], []
    for k, sample in enumerate(samples):
        g = sample.graph
        energy, forces_target = (sample.energy, sample.forces) if targets is None else targets[k]
        vectors = torch.from_numpy(g.vectors)
        r = torch.linalg.vector_norm(vectors, dim=1)
        basis, dbasis = prior.design(
            torch.from_numpy(g.species),
            torch.from_numpy(g.centers),
            torch.from_numpy(g.neighbors),
            r,
        )
        unit = (vectors / r[:, None]).numpy()
        # F_i = Σ_j φ'(r_ij) r̂_ij over edges of centre i (full list: each pair twice, ½ E).
        forces = np.zeros((g.n_atoms, 3, n_coef))
        np.add.at(forces, g.centers, dbasis.numpy()[:, None, :] * unit[:, :, None])
        counts = np.bincount(g.species, minlength=n_species).astype(float)
        energy_row = np.concatenate([0.5 * basis.numpy().sum(0), counts]) / g.n_atoms
        rows.append(
            np.concatenate([forces.reshape(-1, n_coef), np.zeros((3 * g.n_atoms, n_species))], 1)
        )
        values.append(np.ravel(forces_target))
        rows.append(energy_weight * energy_row[None])
        values.append([energy_weight * energy / g.n_atoms])
    a = np.concatenate(rows)
    y = np.concatenate(values)
    force_rows = np.concatenate(
        [np.ones(3 * s.graph.n_atoms, bool).tolist() + [False] for s in samples]
    )
    n_force = int(force_rows.sum())
    # Roughness: second differences of each pair's coefficients are h² φ'' at the knots.
    h = prior.spacing
    second = np.zeros((n_pairs * (n - 2), a.shape[1]))
    for p in range(n_pairs):
        for k in range(n - 2):
            second[p * (n - 2) + k, p * n + k : p * n + k + 3] = [1.0, -2.0, 1.0]
    penalty = np.sqrt(smoothing * n_force * h) / h**2 * second
    # Monotone part: c_k = c_K + Σ_(j=k..K-1) d_j with d_j ≥ 0 for the basis functions
    # k < K whose centre r_min + (k - 1) h lies below the pair's bound.
    transform = np.eye(a.shape[1])
    lower = np.full(a.shape[1], -np.inf)
    if monotone_below is not None:
        for sa in range(n_species):
            for sb in range(sa, n_species):
                p = int(prior.pair_index[sa, sb])
                centres = prior.r_min + (np.arange(n) - 1) * h
                last = int(np.searchsorted(centres, monotone_below[sa, sb], side="right")) - 1
                for k in range(last):
                    transform[p * n + k, p * n + k : p * n + last + 1] = 1.0
                    lower[p * n + k] = 0.0
    design = np.concatenate([a, penalty]) @ transform
    target = np.concatenate([y, np.zeros(len(penalty))])
    # Scale the columns so the ridge acts alike on spline and baseline coefficients; the
    # bounds (0 or -inf) are unchanged by a positive scale.
    scale = np.sqrt((design**2).mean(0)) + 1e-12
    design = np.concatenate([design / scale, np.sqrt(ridge * len(y)) * np.eye(a.shape[1])])
    target = np.concatenate([target, np.zeros(a.shape[1])])
    q, r_factor = np.linalg.qr(design)
    z = lsq_linear(r_factor, q.T @ target, bounds=(lower, np.inf), method="bvls").x
    solution = transform @ (z / scale)
    residual = a @ solution - y
    with torch.no_grad():
        prior.coefficients.copy_(torch.from_numpy(solution[:n_coef]).view_as(prior.coefficients))
    stats = {
        "force_rmse": float(math.sqrt((residual[force_rows] ** 2).mean())),
        "force_mae": float(np.abs(residual[force_rows]).mean()),
    }
    return solution[n_coef:], stats
