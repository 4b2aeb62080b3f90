"""Orientation free energy: flat for isotropic rotors, the right profile for a
known biased distribution."""

import numpy as np
import pytest

from symbreak.analysis.orientation import angles, orientation_free_energy

from .synthetic import random_rotations


def test_isotropic_rigid_rotors_give_flat_F_within_errors():
    rng = np.random.default_rng(0)
    F_, M = 200, 64
    u = random_rotations(F_ * M, rng)[:, :, 2].reshape(F_, M, 3)  # bisector = local z
    res = orientation_free_energy(u, n_cos=8, n_phi=10, n_blocks=10)
    d = res.to_dict()
    # ~0 everywhere: χ² per bin near its expectation (n-1)/(n-3) ≈ 1.29 for 10 blocks
    assert 0.6 < d["chi2_per_bin"] < 2.0
    assert np.all(np.abs(res.F) < 5 * res.F_err)
    assert np.abs(res.F).mean() < 0.1  # ~160 samples per bin: 8 % noise
    assert np.all(np.abs(res.F_cos) < 4 * res.F_cos_err)
    assert np.all(np.abs(res.mean_u) < 4 * res.mean_u_err)
    assert abs(res.P2) < 4 * res.P2_err
    assert res.p.sum() == pytest.approx(1.0)
    assert d["n_samples"] == F_ * M


def test_biased_distribution_matches_analytic_F():
    """p(cos θ) ∝ exp(a cos θ) (a dipole in a field, a = μE/kT): F(c) = −a c + ln(sinh a / a),
    bin-averaged; the isotropy test must fail."""
    rng = np.random.default_rng(1)
    a, n = 1.5, 400 * 50
    # inverse CDF of p(c) = a e^{ac} / (2 sinh a)
    c = np.log(np.exp(-a) + rng.uniform(size=n) * (np.exp(a) - np.exp(-a))) / a
    phi = rng.uniform(-np.pi, np.pi, n)
    s = np.sqrt(1 - c**2)
    u = np.stack([s * np.cos(phi), s * np.sin(phi), c], axis=-1).reshape(400, 50, 3)
    n_cos = 10
    res = orientation_free_energy(u, n_cos=n_cos, n_phi=6, n_blocks=10)
    edges = np.linspace(-1, 1, n_cos + 1)
    p_bin = (np.exp(a * edges[1:]) - np.exp(a * edges[:-1])) / (2 * np.sinh(a))
    F_exact = -np.log(p_bin * n_cos)
    assert np.all(np.abs(res.F_cos - F_exact) < 4 * res.F_cos_err)
    assert np.abs(res.F_cos - F_exact).max() < 0.12
    # the 2D map has the same profile in every φ column
    assert np.all(np.abs(res.F - F_exact[:, None]) < 5 * res.F_err)
    assert res.to_dict()["chi2_per_bin"] > 100
    mean_c = 1 / np.tanh(a) - 1 / a  # Langevin function
    assert res.mean_u[2] == pytest.approx(mean_c, abs=4 * res.mean_u_err[2])


def test_angles():
    c, phi = angles(np.array([[0.0, 0.0, 2.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]))
    np.testing.assert_allclose(c, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(phi, [0.0, -np.pi, -np.pi / 2])
