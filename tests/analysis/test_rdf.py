"""g(r) of lattices (known peaks and coordination numbers) and of an ideal gas."""

import numpy as np
import pytest

from symbreak.analysis.io import abc_to_cell
from symbreak.analysis.rdf import max_rdf_radius, rdf

from .synthetic import cubic_lattice


def _coordination_at(res, r):
    k = np.searchsorted(res.edges[1:], r)
    return res.coordination[k]


def test_simple_cubic_lattice_peaks_and_coordination_numbers():
    a, n = 3.0, 6
    x = cubic_lattice(n, a) + 0.1
    cell = np.eye(3) * n * a
    rng = np.random.default_rng(0)
    frames = x[None] + rng.normal(0, 0.02, size=(4, len(x), 3))  # small thermal noise
    res = rdf(frames, cell, ["O"] * len(x), "OO", n_bins=450, n_blocks=2)
    assert res.edges[-1] == pytest.approx(max_rdf_radius(cell)) == pytest.approx(9.0)
    shells = [(a, 6), (a * np.sqrt(2), 12), (a * np.sqrt(3), 8), (2 * a, 6)]
    total = 0
    for r0, z in shells:
        total += z
        # running coordination number just above each shell
        assert _coordination_at(res, r0 + 0.15) == pytest.approx(total)
        # the peak of g sits at the shell radius
        win = (res.r > r0 - 0.2) & (res.r < r0 + 0.2)
        assert abs(res.r[win][np.argmax(res.g[win])] - r0) < 0.05
    assert _coordination_at(res, a - 0.2) == 0
    assert res.peaks()["first_peak_r"] == pytest.approx(a, abs=0.05)
    # the integral of g over the first shell gives its coordination number
    rho = len(x) / (n * a) ** 3
    first = (res.r > a - 0.3) & (res.r < a + 0.3)
    dr = res.edges[1] - res.edges[0]
    assert np.sum(4 * np.pi * rho * res.r[first] ** 2 * res.g[first] * dr) == pytest.approx(
        6 * len(x) / (len(x) - 1), rel=0.02
    )


def test_cscl_like_lattice_OH_and_HH():
    """O on a cubic lattice, H at the cube centres: g_OH first peak at √3 a / 2 with 8
    neighbours; g_HH like g_OO."""
    a, n = 3.2, 5
    xo = cubic_lattice(n, a)
    xh = xo + a / 2
    x = np.vstack([xo, xh])[None]
    sym = ["O"] * len(xo) + ["H"] * len(xh)
    cell = np.eye(3) * n * a
    oh = rdf(x, cell, sym, "OH", n_bins=400, n_blocks=1)
    r1 = np.sqrt(3) * a / 2
    assert _coordination_at(oh, r1 - 0.05) == 0
    assert _coordination_at(oh, r1 + 0.05) == pytest.approx(8)
    hh = rdf(x, cell, sym, ("H", "H"), n_bins=400, n_blocks=1)
    assert _coordination_at(hh, a + 0.05) == pytest.approx(6)
    # intramolecular exclusion: pair each O with the H at +a/2 → 7 left at r1
    mol = np.concatenate([np.arange(len(xo)), np.arange(len(xo))])
    ex = rdf(x, cell, sym, "OH", n_bins=400, n_blocks=1, molecule_ids=mol)
    assert _coordination_at(ex, r1 + 0.05) == pytest.approx(7)


def test_ideal_gas_in_triclinic_cell_gives_g_equal_one():
    rng = np.random.default_rng(1)
    cell = abc_to_cell(12.0, 13.0, 14.0, 70.0, 100.0, 80.0)
    N, F = 200, 40
    x = rng.uniform(size=(F, N, 3)) @ cell
    res = rdf(x, cell, ["O"] * N, "OO", n_bins=20, n_blocks=5)
    inner = res.r > 1.5
    z = (res.g[inner] - 1.0) / res.g_err[inner]
    assert np.all(np.abs(z) < 4.5)
    assert np.abs(res.g[inner].mean() - 1.0) < 0.02
    # coordination = ρ (N-1)/N 4π r³/3
    R = res.edges[-1]
    rho = (N - 1) / abs(np.linalg.det(cell))
    assert res.coordination[-1] == pytest.approx(rho * 4 / 3 * np.pi * R**3, rel=0.03)


def test_rdf_refuses_inexact_radius_and_missing_species():
    cell = np.eye(3) * 10
    x = np.zeros((1, 2, 3))
    with pytest.raises(ValueError, match="exceeds"):
        rdf(x, cell, ["O", "O"], "OO", r_max=5.5)
    with pytest.raises(ValueError, match="no O or no H"):
        rdf(x, cell, ["O", "O"], "OH")
    with pytest.raises(ValueError, match="periodic"):
        rdf(x, np.zeros((3, 3)), ["O", "O"], "OO")


def test_kdtree_and_generic_paths_agree_under_a_rigid_rotation():
    """The same periodic system, cubic (periodic k-d tree) and rigidly rotated (generic
    minimum image), gives the same pairs and g(r)."""
    from symbreak.analysis.rdf import pair_vectors

    from .synthetic import random_rotations

    rng = np.random.default_rng(4)
    L = 9.0
    x = rng.uniform(0, L, size=(3, 120, 3))
    sym = ["O"] * 40 + ["H"] * 80
    R = random_rotations(1, rng)[0]
    cell = np.eye(3) * L
    for pair in ("OO", "OH"):
        a = rdf(x, cell, sym, pair, n_bins=30, n_blocks=1)
        b = rdf(x @ R.T, cell @ R.T, sym, pair, n_bins=30, n_blocks=1)
        np.testing.assert_allclose(a.g, b.g, atol=1e-12)
    for same, xa, xb in ((False, x[0, :40], x[0, 40:]), (True, x[0], x[0])):
        i1, j1, d1 = pair_vectors(xa, xb, cell, [True] * 3, 4.4, same=same, method="kdtree")
        i2, j2, d2 = pair_vectors(xa @ R.T, xb @ R.T, cell @ R.T, [True] * 3, 4.4, same=same)
        i3, j3, _ = pair_vectors(xa, xb, cell, [True] * 3, 4.4, same=same, method="dense")
        assert len(i1) == len(i2) == len(i3) > 100
        o1, o2 = np.lexsort((j1, i1)), np.lexsort((j2, i2))
        np.testing.assert_array_equal(i1[o1], i2[o2])
        np.testing.assert_array_equal(j1[o1], j2[o2])
        np.testing.assert_allclose(d1[o1] @ R.T, d2[o2], atol=1e-10)
    with pytest.raises(ValueError):
        pair_vectors(x[0], x[0], cell @ R.T, [True] * 3, 4.4, method="kdtree")
