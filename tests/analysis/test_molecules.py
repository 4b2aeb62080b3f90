"""Water molecules found by distance, whatever the atom order and wrapping."""

import numpy as np
import pytest

from symbreak.analysis.io import abc_to_cell
from symbreak.analysis.molecules import (
    MASS_H,
    MASS_O,
    find_waters,
    minimum_image,
    near_defects,
    perpendicular_widths,
    unwrap,
    water_frame_class,
    water_geometry,
)

from .synthetic import cubic_lattice, random_rotations, waters


def _shuffled_wrapped_box(seed=0):
    rng = np.random.default_rng(seed)
    cell = abc_to_cell(9.5, 10.0, 10.5, 75.0, 100.0, 65.0)  # strongly triclinic
    centres = cubic_lattice(2, 3.4) + rng.uniform(-0.3, 0.3, (8, 3)) + 1.0
    rots = random_rotations(8, rng)
    x = waters(centres, rots)
    symbols = np.array(["O", "H", "H"] * 8)
    perm = rng.permutation(len(x))  # shuffled atom i is original atom perm[i]
    xs = x[perm]
    # wrap every atom into the cell, then shift some by whole lattice vectors
    s = xs @ np.linalg.inv(cell)
    s = s - np.floor(s) + rng.integers(-2, 3, size=s.shape)
    return symbols[perm], s @ cell, cell, x, centres, rots, perm


def test_find_waters_after_shuffling_and_wrapping():
    symbols, xs, cell, x, centres, rots, perm = _shuffled_wrapped_box()
    w = find_waters(symbols, xs, cell, (True, True, True))
    assert w.shape == (8, 3)
    # map back to original indices: each molecule is {3k, 3k+1, 3k+2}, O first
    orig = perm[w]
    assert np.all(orig[:, 0] % 3 == 0)
    assert sorted(map(tuple, np.sort(orig, axis=1))) == [
        (3 * k, 3 * k + 1, 3 * k + 2) for k in range(8)
    ]
    geo = water_geometry(xs, cell, (True, True, True), w)
    k = orig[:, 0] // 3
    np.testing.assert_allclose(geo.bisector, rots[k][:, :, 2], atol=1e-12)
    com_true = centres[k] + rots[k][:, :, 2] * 2 * MASS_H * 0.9572 * np.cos(np.deg2rad(52.26)) / (
        MASS_O + 2 * MASS_H
    )
    d = minimum_image(geo.com - com_true, cell, (True, True, True))
    np.testing.assert_allclose(d, 0, atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(geo.oh, axis=-1), 0.9572, atol=1e-12)


def test_without_minimum_image_the_wrapped_box_fails():
    """Sanity check that the test above exercises periodicity."""
    symbols, xs, cell, *_ = _shuffled_wrapped_box()
    with pytest.raises(ValueError):
        find_waters(symbols, xs, None)


def test_find_waters_errors():
    rng = np.random.default_rng(1)
    x = waters(cubic_lattice(2, 4.0), random_rotations(8, rng))
    sym = np.array(["O", "H", "H"] * 8)
    assert find_waters(sym, x).tolist() == [[3 * k, 3 * k + 1, 3 * k + 2] for k in range(8)]
    with pytest.raises(ValueError, match="not neutral"):
        find_waters(sym[:-1], x[:-1])
    far = x.copy()
    far[1] = x[0] + 1.8 * (x[1] - x[0])  # O-H stretched to 1.72 Å
    with pytest.raises(ValueError, match="from its nearest O"):
        find_waters(sym, far)
    with pytest.raises(ValueError, match="type map"):
        find_waters(np.array(["X", "He", "He"]), x[:3])
    # H3O+ / OH- pair: an H of molecule 1 moved next to O of molecule 0
    swap = x.copy()
    swap[4] = x[0] - 0.96 * (x[1] + x[2] - 2 * x[0]) / np.linalg.norm(x[1] + x[2] - 2 * x[0])
    with pytest.raises(ValueError, match="exactly two"):
        find_waters(sym, swap)


def test_minimum_image_and_widths():
    cell = abc_to_cell(6.0, 7.0, 8.0, 70.0, 110.0, 60.0)
    w = perpendicular_widths(cell)
    rng = np.random.default_rng(2)
    d = rng.normal(size=(500, 3))
    d *= (0.49 * w.min() * rng.uniform(size=500) / np.linalg.norm(d, axis=1))[:, None]
    shifted = d + rng.integers(-3, 4, size=(500, 3)) @ cell
    np.testing.assert_allclose(minimum_image(shifted, cell, [True] * 3), d, atol=1e-12)
    # non-periodic z: no wrapping along c
    slab = np.diag([6.0, 7.0, 0.0])
    out = minimum_image(np.array([[5.0, 0.0, 30.0]]), slab, [True, True, False])
    np.testing.assert_allclose(out, [[-1.0, 0.0, 30.0]])


def test_unwrap_recovers_continuous_paths_fixed_and_fluctuating_cell():
    rng = np.random.default_rng(3)
    x = np.cumsum(rng.normal(0, 0.4, size=(300, 5, 3)), axis=0)
    cell = abc_to_cell(5.0, 5.5, 6.0, 80.0, 95.0, 75.0)
    s = x @ np.linalg.inv(cell)
    wrapped = (s - np.floor(s)) @ cell
    np.testing.assert_allclose(unwrap(wrapped, cell, [True] * 3), x - x[0] + wrapped[0], atol=1e-9)
    # cell breathing by ±2 %: the unwrapped step is the true step minus the change of
    # the previous image shift, n(t-1) (h(t) - h(t-1)) -- no jumps by whole cells
    cells = cell[None] * (1 + 0.02 * np.sin(np.arange(300) / 10))[:, None, None]
    sw = np.einsum("fni,fij->fnj", x, np.linalg.inv(cells))
    n = np.floor(sw)
    wrapped = np.einsum("fni,fij->fnj", sw - n, cells)
    u = unwrap(wrapped, cells, [True] * 3)
    expected = np.diff(x, axis=0) - np.einsum("fni,fij->fnj", n[:-1], np.diff(cells, axis=0))
    np.testing.assert_allclose(np.diff(u, axis=0), expected, atol=1e-9)
    assert np.abs(np.diff(u, axis=0) - np.diff(x, axis=0)).max() < 0.1


def _lattice_water(seed=0):
    """8 intact molecules on a 3.4 Å lattice in a 6.8 Å periodic box, order O, H, H."""
    rng = np.random.default_rng(seed)
    cell = np.eye(3) * 6.8
    centres = cubic_lattice(2, 3.4) + 0.5
    x = waters(centres, random_rotations(8, rng))
    return np.array([8, 1, 1] * 8), x, cell


def test_water_frame_class_by_construction():
    numbers, x, cell = _lattice_water()
    pbc = (True, True, True)
    assert water_frame_class(numbers, x, cell, pbc) == "intact"

    # a proton of molecule 0 moved to molecule 1's O, opposite its H: OH⁻ + H₃O⁺
    ions = x.copy()
    bisector = x[4] + x[5] - 2 * x[3]
    ions[1] = x[3] - 1.0 * bisector / np.linalg.norm(bisector)
    assert water_frame_class(numbers, ions, cell, pbc) == "ions"
    # a stretched proton (1.45 Å from its O, no other O near): not intact either
    stretched = x.copy()
    stretched[1] = x[0] + 1.45 * (x[1] - x[0]) / np.linalg.norm(x[1] - x[0])
    assert water_frame_class(numbers, stretched, cell, pbc) == "ions"

    # two H of different molecules 0.74 Å apart, through the periodic boundary
    h2 = x.copy()
    h2[4] = h2[1] + np.array([0.74, 0.0, 0.0]) + cell[0]
    assert water_frame_class(numbers, h2, cell, pbc) == "H2"
    # the same H far apart without periodicity is no longer H2
    assert water_frame_class(numbers, h2, cell, (False, False, False)) == "ions"

    # not water: another element, or no O
    assert water_frame_class(np.r_[numbers[:-1], 11], x, cell, pbc) is None
    assert water_frame_class(np.ones(len(x), dtype=int), x, cell, pbc) is None


def test_near_defects_by_construction():
    """Atoms near a defect O, against brute-force minimum-image distances from ASE."""
    from ase.geometry import get_distances

    numbers, x, cell = _lattice_water()
    pbc = (True, True, True)
    assert not near_defects(numbers, x, cell, pbc).any()  # intact water has none

    # a proton of molecule 0 moved to molecule 1's O: OH⁻ at O 0, H₃O⁺ at O 3
    ions = x.copy()
    bisector = x[4] + x[5] - 2 * x[3]
    ions[1] = x[3] - 1.0 * bisector / np.linalg.norm(bisector)
    for radius in (0.5, 2.0, 3.0):
        _, r = get_distances(ions[[0, 3]], ions, cell=cell, pbc=pbc)
        expect = (r <= radius).any(axis=0)
        mask = near_defects(numbers, ions, cell, pbc, radius)
        np.testing.assert_array_equal(mask, expect)
        assert mask[[0, 3]].all() and 0 < mask.sum() < len(x)
    # the mask follows the atoms, whatever their order
    perm = np.random.default_rng(1).permutation(len(x))
    np.testing.assert_array_equal(
        near_defects(numbers[perm], ions[perm], cell, pbc, 3.0),
        near_defects(numbers, ions, cell, pbc, 3.0)[perm],
    )
    # no O or no H: nothing to call a defect
    assert not near_defects(np.ones(len(x), dtype=int), x, cell, pbc).any()
    assert not near_defects(np.full(len(x), 8), x, cell, pbc).any()
