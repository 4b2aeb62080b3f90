"""Dipole correlations on lattices with known arrangements, and random dipoles."""

import numpy as np
import pytest

from symbreak.analysis.dipoles import dipole_correlations

from .synthetic import cubic_lattice, random_rotations

A, N = 3.0, 6


def _first_shell(res):
    k = np.nonzero(res.n_pairs > 0)[0][0]
    assert res.r[k] == pytest.approx(A, abs=res.edges[1])
    return k


def test_parallel_dipoles_on_a_cubic_lattice():
    x = cubic_lattice(N, A)[None] + 0.01
    u = np.zeros_like(x)
    u[..., 2] = 1.0
    res = dipole_correlations(x, u, np.eye(3) * N * A, n_bins=30, n_blocks=1)
    k = _first_shell(res)
    # 6 neighbours, 2 along z: C = 1, C_L = 1/3, C_T = 1/3
    assert res.C[k] == pytest.approx(1.0)
    assert res.CL[k] == pytest.approx(1 / 3)
    assert res.CT[k] == pytest.approx(1 / 3)
    assert res.h_D[k] == pytest.approx(3 * res.g[k] * (res.CL[k] - res.CT[k]), abs=1e-12)
    assert res.C_axial[k] == pytest.approx(1.0)
    assert res.C_equatorial[k] == pytest.approx(1.0)
    # all dipoles aligned: G_K(R) = 1 + number of neighbours within R
    assert res.G_K[k] == pytest.approx(7.0)


def test_antiparallel_layers_separate_longitudinal_from_transverse():
    """u = ±z alternating between z-layers: the two axial neighbours are antiparallel,
    the four equatorial ones parallel."""
    x = cubic_lattice(N, A)
    layer = np.round(x[:, 2] / A).astype(int)
    u = np.zeros_like(x)
    u[:, 2] = np.where(layer % 2 == 0, 1.0, -1.0)
    res = dipole_correlations(x[None], u[None], np.eye(3) * N * A, n_bins=30, n_blocks=1)
    k = _first_shell(res)
    assert res.C[k] == pytest.approx(1 / 3)  # (2·(−1) + 4·1)/6
    assert res.CL[k] == pytest.approx(-1 / 3)
    assert res.CT[k] == pytest.approx(1 / 3)
    assert res.C_axial[k] == pytest.approx(-1.0)
    assert res.C_equatorial[k] == pytest.approx(1.0)
    assert res.h_delta[k] == pytest.approx(3 * res.g[k] / 3)


def test_independent_random_dipoles_are_uncorrelated():
    rng = np.random.default_rng(0)
    F, M, L = 30, 100, 14.0
    x = rng.uniform(0, L, size=(F, M, 3))
    u = random_rotations(F * M, rng)[:, :, 0].reshape(F, M, 3)
    res = dipole_correlations(x, u, np.eye(3) * L, n_bins=8, n_blocks=5)
    ok = res.r > 2.0
    for y, e in ((res.C, res.C_err), (res.CL, res.CL_err), (res.CT, res.CT_err)):
        assert np.all(np.abs(y[ok]) < 4.5 * e[ok])
    assert np.nanmax(np.abs(res.g[ok] - 1)) < 0.15
    assert res.G_K[-1] == pytest.approx(1.0, abs=4.5 * res.G_K_err[-1] + 1e-9)
