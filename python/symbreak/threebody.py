"""An invariant three-body prior: angular splines over the pairs of edges of each atom.

For every atom i and every ordered pair of its neighbours (j, k), j ≠ k, within
``cutoff``::

    ε_i = ½ Σ_(j≠k) Σ_(a,b,l) c[ch, a, b, l] B_a(r_ij) B_b(r_ik) P_l(cos θ_jik)

with B the uniform cubic B-splines of :mod:`symbreak.pair` (their support ends by the
cutoff, so energies are C² as a neighbour leaves), P_l Legendre polynomials (l ≤ lmax) and
one channel ``ch`` per centre species and unordered pair of neighbour species. For unlike
neighbour species the legs are put in a fixed order (lower species index first), so each
unordered triplet counts twice with the same value: the ½ makes it once.

Why: the PET that reads raw Cartesian vectors leaves a large, systematic angular
residual. Fitted by linear least squares to the residual of a trained PET (1080
coefficients, minutes), this term cut the test force MAE of the shipped water model from
148 to 109 meV/Å (``training/water-revpbe0d3/README.md``). It is exactly invariant, so it
changes no symmetry-breaking diagnostic: the transformer alone breaks the symmetry.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from .pair import local_cubic_basis, locate, n_basis
from .short_range import soft_floor


def edge_pairs(centers: Tensor, n_atoms: int, ordered: bool = True) -> tuple[Tensor, Tensor]:
    """All ordered pairs (e1, e2), e1 ≠ e2, of edges with the same centre atom, [T] each;
    with ``ordered=False`` each unordered pair once."""
    n_edges = centers.shape[0]
    device = centers.device
    order = torch.sort(centers, stable=True)[1]
    counts = torch.bincount(centers, minlength=n_atoms)
    first = torch.cumsum(counts, 0) - counts
    centers_sorted = centers[order]
    repeats = counts[centers_sorted]  # each edge meets every edge of its centre
    pos1 = torch.repeat_interleave(torch.arange(n_edges, device=device), repeats)
    block_start = torch.cumsum(repeats, 0) - repeats
    partner = torch.arange(pos1.shape[0], device=device) - block_start[pos1]
    pos2 = first[centers_sorted[pos1]] + partner
    keep = pos1 != pos2 if ordered else pos2 > pos1
    return order[pos1[keep]], order[pos2[keep]]


def legendre(x: Tensor, lmax: int) -> Tensor:
    """P_0 .. P_lmax at x [T], [T, lmax + 1] (Bonnet's recursion)."""
    p = [torch.ones_like(x), x]
    for n in range(1, lmax):
        p.append(((2 * n + 1) * x * p[n] - n * p[n - 1]) / (n + 1))
    return torch.stack(p[: lmax + 1], dim=1)


def legendre_derivative(x: Tensor, lmax: int) -> Tensor:
    """dP_l/dx at x [T], [T, lmax + 1]."""
    p = [torch.ones_like(x), x]
    dp = [torch.zeros_like(x), torch.ones_like(x)]
    for n in range(1, lmax):
        p.append(((2 * n + 1) * x * p[n] - n * p[n - 1]) / (n + 1))
        dp.append(dp[n - 1] + (2 * n + 1) * p[n])  # P'_(n+1) = P'_(n-1) + (2n+1) P_n
    return torch.stack(dp[: lmax + 1], dim=1)


class ThreeBodyPrior(nn.Module):
    """Angular three-body energies (see the module docstring).

    ``coefficients`` [C, n, n, lmax + 1] (eV), C = S · S(S+1)/2 channels for S species,
    n radial B-splines on [r_min, cutoff] every ``spacing`` Å.
    """

    def __init__(
        self,
        n_species: int,
        cutoff: float,
        r_min: float = 0.5,
        spacing: float = 0.5,
        lmax: int = 4,
    ):
        super().__init__()
        self.cutoff = float(cutoff)
        self.r_min = float(r_min)
        self.spacing = float(spacing)
        self.lmax = int(lmax)
        self.n_basis = n_basis(r_min, cutoff, spacing)
        n_pairs = n_species * (n_species + 1) // 2
        channel = torch.zeros(n_species, n_species, n_species, dtype=torch.long)
        for c in range(n_species):
            k = 0
            for a in range(n_species):
                for b in range(a, n_species):
                    channel[c, a, b] = channel[c, b, a] = c * n_pairs + k
                    k += 1
        self.register_buffer("channel", channel)
        like = torch.zeros(n_species * n_pairs, dtype=torch.bool)
        for c in range(n_species):
            for a in range(n_species):
                like[channel[c, a, a]] = True
        self.register_buffer("like_legs", like)  # channels whose two legs are one species
        self.coefficients = nn.Parameter(
            torch.zeros(n_species * n_pairs, self.n_basis, self.n_basis, self.lmax + 1)
        )

    def _pairs(
        self,
        species: Tensor,
        centers: Tensor,
        neighbors: Tensor,
        vectors: Tensor,
        ordered: bool,
        floor: Tensor,
        floor_width: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Pairs of edges of one centre within the cutoff, legs in channel order (lower
        neighbour species first): edge lengths r [E] (Å), the edges inside the cutoff
        ``inside`` [E'], the pairs as positions p1, p2 [T] into ``inside``, their channels
        [T] and cos θ [T].

        The lengths of the legs and the distance between the two neighbours pass through
        the short-range floor ``floor`` [S, S] (Å, :mod:`symbreak.short_range`; zeros: off)
        and cos θ is that of the triangle they make, so that the term sees no contact
        shorter than its data had; r and cos θ are bit-identical where nothing is below
        its floor."""
        r_raw = torch.linalg.vector_norm(vectors, dim=1)
        floor = floor.to(vectors.dtype)
        r = soft_floor(r_raw, floor[species[centers], species[neighbors]], floor_width)
        inside = torch.nonzero(r_raw < self.cutoff).squeeze(1)
        p1, p2 = edge_pairs(centers[inside], species.shape[0], ordered)
        s1, s2 = species[neighbors[inside[p1]]], species[neighbors[inside[p2]]]
        swap = s1 > s2
        p1, p2 = torch.where(swap, p2, p1), torch.where(swap, p1, p2)
        e1, e2 = inside[p1], inside[p2]
        channel = self.channel.long()[species[centers[e1]], s1.minimum(s2), s1.maximum(s2)]
        r1, r2, q1, q2 = r_raw[e1], r_raw[e2], r[e1], r[e2]
        cos = (vectors[e1] * vectors[e2]).sum(1) / (r1 * r2)
        d = torch.linalg.vector_norm(vectors[e1] - vectors[e2], dim=1)
        q = soft_floor(d, floor[s1, s2], floor_width)
        # Law of cosines with the floored sides: 2 q1 q2 cos' = q1² + q2² - q², written as
        # corrections to cos that are exactly 0 where no side is floored.
        change = 0.5 * ((q1 - r1) * (q1 + r1) + (q2 - r2) * (q2 + r2) - (q - d) * (q + d))
        cos = cos + ((r1 * r2 - q1 * q2) * cos + change) / (q1 * q2)
        return r, inside, p1, p2, channel, cos.clamp(-1.0, 1.0)

    def radial_basis(self, r: Tensor) -> Tensor:
        """All n radial B-splines at each r [E] (Å), dense [E, n] (at most four non-zero)."""
        i, t = locate(r, self.r_min, self.spacing, self.n_basis)
        values = local_cubic_basis(t)[0]
        width = self.n_basis + 6
        dense = torch.zeros(r.shape[0] * width, dtype=r.dtype, device=r.device)
        flat = (torch.arange(r.shape[0], device=r.device) * width)[:, None] + i[:, None]
        index = (flat + torch.arange(4, device=r.device)).reshape(-1)
        dense = dense.scatter(0, index, values.reshape(-1))
        return dense.view(-1, width)[:, 3 : 3 + self.n_basis]

    def atomic_energies(
        self,
        species: Tensor,
        centers: Tensor,
        neighbors: Tensor,
        vectors: Tensor,
        floor: Tensor,
        floor_width: float,
    ) -> Tensor:
        """ε_i [N] (eV, dtype of ``vectors`` [E, 3] Å) over a full edge list, read through
        the short-range floor ``floor`` [S, S] (Å, zeros: off; see ``_pairs``)."""
        n_atoms = species.shape[0]
        dtype, device = vectors.dtype, vectors.device
        n, lp1 = self.n_basis, self.lmax + 1
        r, inside, p1, p2, channel, cos = self._pairs(
            species, centers, neighbors, vectors, False, floor, floor_width
        )
        radial = self.radial_basis(r[inside])  # [E', n], once per edge
        # Each unordered pair of neighbours once (half the work of the ordered sum in the
        # docstring). For like neighbour species that needs c symmetric in its two
        # radial indices: ½ Σ_(j≠k) c_ab B_a(r_j) B_b(r_k) = Σ_(j<k) ½(c_ab + c_ba) ...
        coef = self.coefficients.to(dtype)
        coef = torch.where(
            (self.like_legs != 0)[:, None, None, None], 0.5 * (coef + coef.transpose(1, 2)), coef
        )
        angular = legendre(cos, self.lmax)  # [T, l+1]
        # Second leg contracted per edge for every channel: h[e, ch, a, l], then one row
        # of it per pair: [T, n(l+1)] gathered instead of a [T, n(l+1)] x [n(l+1), C n]
        # product per pair.
        n_channels = coef.shape[0]
        h = radial @ coef.permute(2, 0, 1, 3).reshape(n, n_channels * n * lp1)
        h = h.view(-1, n * lp1)[p2 * n_channels + channel].view(-1, n, lp1)
        e_t = ((h * angular[:, None, :]).sum(2) * radial[p1]).sum(1)
        energy = torch.zeros(n_atoms, dtype=dtype, device=device)
        return energy.index_add(0, centers[inside[p1]], e_t)

    @torch.jit.unused
    def design(
        self, species: Tensor, centers: Tensor, neighbors: Tensor, vectors: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Linear-model rows for a least-squares fit (float64): the energy row [P] with
        E = row · c and the force matrix [3N, P] with F (flattened) = matrix · c, for the
        P = coefficients.numel() coefficients. Analytic derivatives, no autograd."""
        n_atoms = species.shape[0]
        n_coef = self.coefficients.numel()
        lp1 = self.lmax + 1
        vectors = vectors.double()
        # Fitting data lie above the floors by construction (they set them): none here.
        no_floor = torch.zeros(self.channel.shape[0], self.channel.shape[0], dtype=torch.float64)
        r, inside, p1, p2, channel, cos = self._pairs(
            species, centers, neighbors, vectors, True, no_floor, 1.0
        )
        e1, e2 = inside[p1], inside[p2]
        r1, r2 = r[e1], r[e2]
        i1, t1 = locate(r1, self.r_min, self.spacing, self.n_basis)
        i2, t2 = locate(r2, self.r_min, self.spacing, self.n_basis)
        b1, db1 = local_cubic_basis(t1)
        b2, db2 = local_cubic_basis(t2)
        db1, db2 = db1 / self.spacing, db2 / self.spacing
        p = legendre(cos, self.lmax)
        dp = legendre_derivative(cos, self.lmax)
        # Basis indices of the four non-zero splines of each leg; those off the grid
        # (below 0 or past n - 1) carry no coefficient.
        four = torch.arange(4)
        a = (i1[:, None] + four - 3)[:, :, None, None]
        b = (i2[:, None] + four - 3)[:, None, :, None]
        valid = (a >= 0) & (a < self.n_basis) & (b >= 0) & (b < self.n_basis)
        valid = valid.expand(-1, 4, 4, lp1)
        column = ((channel[:, None, None, None] * self.n_basis + a) * self.n_basis + b) * lp1
        column = (column + torch.arange(lp1))[valid]
        outer = b1[:, :, None, None] * b2[:, None, :, None]
        value = 0.5 * (outer * p[:, None, None, :])
        d_r1 = 0.5 * db1[:, :, None, None] * b2[:, None, :, None] * p[:, None, None, :]
        d_r2 = 0.5 * b1[:, :, None, None] * db2[:, None, :, None] * p[:, None, None, :]
        d_cos = 0.5 * outer * dp[:, None, None, :]
        energy_row = torch.zeros(n_coef, dtype=torch.float64).index_add(0, column, value[valid])
        # ∂/∂v of r = |v| and of cos θ = v1·v2 / (r1 r2).
        u1 = vectors[e1] / r1[:, None]
        u2 = vectors[e2] / r2[:, None]
        dcos_v1 = (u2 - cos[:, None] * u1) / r1[:, None]
        dcos_v2 = (u1 - cos[:, None] * u2) / r2[:, None]
        forces = torch.zeros(3 * n_atoms * n_coef, dtype=torch.float64)
        for edges, d_r, unit, dcos in ((e1, d_r1, u1, dcos_v1), (e2, d_r2, u2, dcos_v2)):
            for x in range(3):
                # dε/dv_x for every entry; v = x_j - x_i: F_j -= dε/dv, F_i += dε/dv
                g = d_r * unit[:, x, None, None, None] + d_cos * dcos[:, x, None, None, None]
                g = g[valid]
                for atoms, sign in ((neighbors[edges], -1.0), (centers[edges], 1.0)):
                    rows = (3 * atoms + x)[:, None, None, None].expand(valid.shape)[valid]
                    forces.index_add_(0, rows * n_coef + column, sign * g)
        return energy_row, forces.view(3 * n_atoms, n_coef)


def _forces(prior: ThreeBodyPrior, graph) -> np.ndarray:
    """Forces [N, 3] (eV/Å, float64) of the term alone on a Graph."""
    vectors = torch.from_numpy(graph.vectors).double().requires_grad_(True)
    centers, neighbors = torch.from_numpy(graph.centers), torch.from_numpy(graph.neighbors)
    n_species = prior.channel.shape[0]
    no_floor = torch.zeros(n_species, n_species, dtype=torch.float64)
    energy = prior.atomic_energies(
        torch.from_numpy(graph.species), centers, neighbors, vectors, no_floor, 1.0
    )
    (grad,) = torch.autograd.grad(energy.sum(), vectors)
    forces = torch.zeros(graph.n_atoms, 3, dtype=torch.float64)
    return forces.index_add(0, centers, grad).index_add(0, neighbors, -grad).numpy()


def fit_three_body(
    prior: ThreeBodyPrior,
    graphs: list,
    energies: list[float],
    forces: list[np.ndarray],
    n_species: int,
    energy_weight: float = 100.0,
    ridge: float = 1e-3,
) -> tuple[np.ndarray, dict]:
    """Least-squares fit of ``prior.coefficients`` and a per-species energy shift to
    target energies (eV) and forces [N, 3] (eV/Å) of ``graphs`` (symbreak.graph.Graph):
    normally the *residual* of a model without the term. Per-atom energies weigh
    ``energy_weight`` (eV/atom)⁻² against force components (eV/Å)⁻², as in training.
    ``ridge`` is relative to the mean diagonal of the column-normalised normal matrix;
    1e-3 was best on the water validation frames (1e-6: the coefficients of rarely seen
    geometries blow up there). Sets the coefficients; returns the energy shift per species
    [n_species] (eV/atom, to add to the model's baseline) and the force RMSE/MAE (eV/Å)
    of the targets before and after, on these graphs."""
    n_coef = prior.coefficients.numel()
    n_col = n_coef + n_species
    normal = np.zeros((n_col, n_col))
    rhs = np.zeros(n_col)
    for graph, energy, force in zip(graphs, energies, forces, strict=True):
        row, matrix = prior.design(
            torch.from_numpy(graph.species),
            torch.from_numpy(graph.centers),
            torch.from_numpy(graph.neighbors),
            torch.from_numpy(graph.vectors),
        )
        counts = np.bincount(graph.species, minlength=n_species).astype(float)
        row = np.concatenate([row.numpy(), counts])
        matrix = matrix.numpy()
        w = energy_weight / graph.n_atoms**2
        normal[:n_coef, :n_coef] += matrix.T @ matrix
        normal += w * np.outer(row, row)
        rhs[:n_coef] += matrix.T @ np.ravel(force)
        rhs += w * row * energy
    scale = np.sqrt(np.diag(normal)) + 1e-12
    scaled = normal / scale[:, None] / scale[None, :]
    damping = ridge * np.trace(scaled) / n_col
    solution = np.linalg.solve(scaled + damping * np.eye(n_col), rhs / scale) / scale
    with torch.no_grad():
        prior.coefficients.copy_(torch.from_numpy(solution[:n_coef]).view_as(prior.coefficients))
    # What remains, from the module itself (the design matrices, 3N x P each, are not kept)
    before = np.concatenate([np.ravel(f) for f in forces])
    after = np.concatenate(
        [np.ravel(f) - _forces(prior, g).ravel() for g, f in zip(graphs, forces, strict=True)]
    )
    return solution[n_coef:], {
        "force_rmse_before": float(math.sqrt((before**2).mean())),
        "force_mae_before": float(np.abs(before).mean()),
        "force_rmse": float(math.sqrt((after**2).mean())),
        "force_mae": float(np.abs(after).mean()),
    }
