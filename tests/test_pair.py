"""The radial pair prior: the spline against scipy, C² at the cutoff, the least-squares
fit, and the spline readout of the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline

from helpers import small_water, tiny_pet
from symbreak.graph import build_graph
from symbreak.pair import PairPrior, fit_pair_prior, n_basis
from symbreak.training_data import Sample


def scipy_spline(prior: PairPrior, coefficients: np.ndarray) -> BSpline:
    """The same spline built by scipy from its definition: knots t_k = r_min + (k-3) h,
    padded with three zero coefficients on each side so that scipy's base interval covers
    every r where the spline is not zero (below r_min - 3h and beyond the cutoff it is)."""
    h = prior.spacing
    padded = np.concatenate([np.zeros(3), coefficients, np.zeros(3)])
    knots = prior.r_min + h * (np.arange(len(padded) + 4) - 6)
    return BSpline(knots, padded, 3, extrapolate=False)


def test_spline_and_its_derivative_match_scipy():
    prior = PairPrior(2, cutoff=3.5, r_min=0.5, spacing=0.1).double()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        prior.coefficients.copy_(torch.from_numpy(rng.normal(size=(3, prior.n_basis))))
    r = torch.from_numpy(rng.uniform(0.1, 3.5, 2000)).requires_grad_(True)
    species = torch.tensor([0, 1])
    for a, b, pair in ((0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 2)):
        centers_a = torch.full((len(r),), a)
        neighbors_b = torch.full((len(r),), b)
        phi = prior.edge_energies(species, centers_a, neighbors_b, r)
        (dphi,) = torch.autograd.grad(phi.sum(), r)
        ref = scipy_spline(prior, prior.coefficients[pair].detach().numpy())
        x = r.detach().numpy()
        np.testing.assert_allclose(phi.detach().numpy(), np.nan_to_num(ref(x)), atol=1e-12)
        np.testing.assert_allclose(dphi.numpy(), np.nan_to_num(ref.derivative()(x)), atol=1e-10)


def test_spline_vanishes_with_two_derivatives_at_the_cutoff():
    prior = PairPrior(1, cutoff=3.5, r_min=0.5, spacing=0.1).double()
    with torch.no_grad():
        prior.coefficients.normal_(0.0, 1.0)
    ref = scipy_spline(prior, prior.coefficients[0].detach().numpy())
    near = 3.5 - 1e-12  # φ^(n) ~ φ''' δ^(3-n) just inside
    for order in range(3):
        assert abs(ref.derivative(order)(near) if order else ref(near)) < 1e-6
    # and the model's own evaluation agrees just inside the cutoff
    zero = torch.zeros(1, dtype=torch.long)
    value = prior.edge_energies(zero, zero, zero, torch.tensor([near], dtype=torch.float64))
    assert abs(value.item()) < 1e-6


def test_grid_must_be_whole():
    with pytest.raises(ValueError, match="whole number"):
        n_basis(0.5, 3.5, 0.07)


def test_least_squares_recovers_a_known_pair_potential():
    """Labels made by a known spline + baseline are fitted back exactly."""
    truth = PairPrior(2, cutoff=3.5).double()
    torch.manual_seed(0)
    with torch.no_grad():
        truth.coefficients.normal_(0.0, 0.5)
    baseline = np.array([-13.6, -430.0])
    samples = []
    for seed in range(3):
        atoms = small_water(8, seed=seed)
        g = build_graph(atoms.numbers, atoms.positions, atoms.cell.array, True, 3.5, [1, 8])
        vectors = torch.from_numpy(g.vectors).requires_grad_(True)
        r = torch.linalg.vector_norm(vectors, dim=1)
        phi = truth.edge_energies(
            torch.from_numpy(g.species),
            torch.from_numpy(g.centers),
            torch.from_numpy(g.neighbors),
            r,
        )
        energy = 0.5 * phi.sum()
        (grad,) = torch.autograd.grad(energy, vectors)
        forces = np.zeros((g.n_atoms, 3))
        np.add.at(forces, g.centers, grad.numpy())
        np.add.at(forces, g.neighbors, -grad.numpy())
        total = energy.item() + baseline[g.species].sum()
        samples.append(Sample(g, total, forces))
    fitted = PairPrior(2, cutoff=3.5).double()
    fitted_baseline, stats = fit_pair_prior(fitted, samples, 2, ridge=1e-14)
    assert stats["force_rmse"] < 1e-6
    # Only coefficients of distances that occur are determined: compare the functions
    # over each pair's sampled range, less one knot interval at its short end.
    species = torch.tensor([0, 1])
    for a, b in ((0, 0), (0, 1), (1, 1)):
        shortest = min(
            np.linalg.norm(s.graph.vectors, axis=1)[
                (s.graph.species[s.graph.centers] == a) & (s.graph.species[s.graph.neighbors] == b)
            ].min()
            for s in samples
        )
        r = torch.linspace(shortest + 0.1, 3.45, 200, dtype=torch.float64)
        ca, cb = torch.full((200,), a), torch.full((200,), b)
        diff = fitted.edge_energies(species, ca, cb, r) - truth.edge_energies(species, ca, cb, r)
        # the energy offset per species may trade against the pair energies; forces may not
        assert torch.diff(diff).abs().max() < 1e-5
    assert np.isfinite(fitted_baseline).all()


def test_spline_readout_changes_forces_and_keeps_the_cutoff_smooth():
    """A non-zero spline readout moves the forces (it is wired in) and, being made of the
    same B-splines, keeps energies C² at the cutoff (checked in test_model for the model)."""
    model, cfg = tiny_pet(seed=1)
    model = model.double()
    atoms = small_water(6, seed=2)
    g = build_graph(atoms.numbers, atoms.positions, atoms.cell.array, True, cfg.cutoff, cfg.species)
    args = [torch.from_numpy(x) for x in (g.species, g.centers, g.neighbors, g.vectors, g.reverse)]
    base = model.atomic_energies(*args).sum()
    with torch.no_grad():
        model.layers[0].head_edge.fc2.weight[:-1].zero_()
        model.layers[0].head_edge.fc2.bias[:-1].zero_()
    changed = model.atomic_energies(*args).sum()
    assert abs(changed - base) > 1e-6
