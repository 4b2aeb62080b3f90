"""Neighbour lists: against a brute-force reference, ASE and vesin, plus edge cases and errors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from ase.neighborlist import primitive_neighbor_list
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from symbreak import _neighbors
from symbreak.neighbors import neighbor_list

vesin = pytest.importorskip("vesin")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared beside the checkout
# Pairs this close to the cutoff may legitimately differ between implementations
# (the last bits of |r| depend on the order of operations).
BOUNDARY = 1e-9


def brute_force(positions, cell, pbc, cutoff, full_list=True):
    """Every pair and image within the cutoff, enumerated over a box of shifts wide
    enough for all pairs (independent of any binning)."""
    pos = np.asarray(positions, dtype=float).reshape(-1, 3)
    cell = np.asarray(cell, dtype=float)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    n = len(pos)
    empty = (np.zeros(0, int), np.zeros(0, int), np.zeros((0, 3), int), np.zeros((0, 3)))
    if n == 0:
        return empty
    axes = np.flatnonzero(pbc)
    ranges = [np.zeros(1, int)] * 3
    if len(axes):
        # dual vectors of the periodic sublattice: (x . dual)_k is the coordinate along h_k
        dual = np.linalg.pinv(cell[axes])  # (3, n_periodic)
        frac = pos @ dual
        diff = frac[None, :, :] - frac[:, None, :]
        reach = cutoff * np.linalg.norm(dual, axis=0)
        for col, k in enumerate(axes):
            lo = int(np.floor(-diff[..., col].max() - reach[col])) - 1
            hi = int(np.ceil(-diff[..., col].min() + reach[col])) + 1
            ranges[k] = np.arange(lo, hi + 1)
    shifts = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    images = shifts @ cell
    found = []
    for i in range(n):  # one centre at a time keeps the memory small
        d = pos[None, :, :] - pos[i] + images[:, None, :]  # (n_shifts, n, 3)
        s, j = np.nonzero(np.einsum("sjk,sjk->sj", d, d) < cutoff * cutoff)
        found.append((np.full(len(j), i), j, s, d[s, j]))
    i, j, s, d = (np.concatenate(x) for x in zip(*found, strict=True))
    keep = ~((i == j) & (shifts[s] == 0).all(axis=1))
    i, j, s, d = i[keep], j[keep], s[keep], d[keep]
    if not full_list:
        S = shifts[s]
        first = np.argmax(S != 0, axis=1)
        positive = S[np.arange(len(S)), first] > 0
        keep = (i < j) | ((i == j) & positive)
        i, j, s, d = i[keep], j[keep], s[keep], d[keep]
    return i, j, shifts[s], d


def binned(positions, cell, pbc, cutoff, full_list=True, sub=0, n_threads=1):
    """The kernel with a forced bin size (bins per cutoff length), so that the tests cover
    every stencil shape whatever the automatic choice is; sub=0 is the public function."""
    if sub == 0:
        return neighbor_list(positions, cell, pbc, cutoff, full_list, n_threads=n_threads)
    pos = np.ascontiguousarray(positions, dtype=float).reshape(-1, 3)
    box = np.zeros((3, 3)) if cell is None else np.ascontiguousarray(cell, dtype=float)
    flags = [bool(x) for x in np.broadcast_to(pbc, (3,))]
    return _neighbors.neighbor_list(pos, box, flags, cutoff, full_list, n_threads, sub)


SUBS = st.sampled_from([0, 1, 2, 3, 5])


def as_dict(i, j, S, D):
    return {
        (int(a), int(b), *map(int, s)): np.asarray(v)
        for a, b, s, v in zip(
            i, j, np.asarray(S).reshape(-1, 3), np.asarray(D).reshape(-1, 3), strict=True
        )
    }


def sort_pairs(i, j, S, D):
    i, j, S, D = (np.asarray(x) for x in (i, j, S, D))
    S, D = S.reshape(-1, 3), D.reshape(-1, 3)
    order = np.lexsort((S[:, 2], S[:, 1], S[:, 0], j, i))
    return np.column_stack([i, j, S]).astype(np.int64)[order], D[order]


def assert_same(got, ref, cutoff, atol=1e-12, what=""):
    """Same set of (i, j, S) and vectors, up to pairs at the cutoff within rounding."""
    (ka, va), (kb, vb) = sort_pairs(*got), sort_pairs(*ref)
    if ka.shape == kb.shape and (ka == kb).all():  # fast path for big lists
        np.testing.assert_allclose(va, vb, rtol=0, atol=atol, err_msg=what)
        return
    a, b = as_dict(*got), as_dict(*ref)
    for key in set(a) ^ set(b):
        v = a.get(key, b.get(key))
        assert abs(np.linalg.norm(v) - cutoff) < BOUNDARY, (
            f"{what}: pair {key} at distance {np.linalg.norm(v)!r} (cutoff {cutoff}) is "
            f"{'extra' if key in a else 'missing'}"
        )
    common = sorted(set(a) & set(b))
    if common:
        np.testing.assert_allclose(
            np.array([a[k] for k in common]), np.array([b[k] for k in common]), rtol=0, atol=atol
        )


def check_output(result, positions, cell, n_atoms):
    """dtypes, shapes, definition of the vectors, and the documented order."""
    i, j, S, D = result
    assert i.dtype == np.int64 and j.dtype == np.int64
    assert S.dtype == np.int32 and D.dtype == np.float64
    assert i.shape == j.shape == (len(i),) and S.shape == D.shape == (len(i), 3)
    if len(i) == 0:
        return
    assert i.min() >= 0 and i.max() < n_atoms and j.min() >= 0 and j.max() < n_atoms
    pos = np.asarray(positions, dtype=float)
    expect = pos[j] - pos[i] + S @ np.asarray(cell, dtype=float)
    np.testing.assert_allclose(D, expect, rtol=0, atol=1e-12)
    # sorted by i, then j, then S lexicographically (strictly: no duplicates)
    keys = np.column_stack([i, j, S])
    order = np.lexsort(keys.T[::-1])
    assert (order == np.arange(len(i))).all(), "output is not sorted by (i, j, S)"
    assert len(np.unique(keys, axis=0)) == len(keys), "duplicate pairs"


def unit(x: float) -> st.SearchStrategy[float]:
    return st.floats(-x, x, allow_nan=False, allow_infinity=False)


@st.composite
def structures(draw):
    """Random triclinic cell (up to strongly skewed), pbc, atoms inside and outside."""
    lengths = draw(st.lists(st.floats(1.0, 6.0), min_size=3, max_size=3))
    skew = draw(st.sampled_from([0.0, 0.3, 1.0, 2.5]))
    cell = np.diag(lengths)
    for r, c in [(1, 0), (2, 0), (2, 1), (0, 1), (0, 2), (1, 2)]:
        cell[r, c] = draw(unit(skew)) * lengths[c]
    if draw(st.booleans()):  # a general orientation
        q = np.array(draw(st.lists(unit(1.0), min_size=4, max_size=4)))
        assume(np.linalg.norm(q) > 0.1)
        w, x, y, z = q / np.linalg.norm(q)
        rot = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
        )
        cell = cell @ rot.T
    norms = np.linalg.norm(cell, axis=1)
    assume(abs(np.linalg.det(cell)) > 0.05 * norms.prod())
    pbc = draw(st.lists(st.booleans(), min_size=3, max_size=3))
    n = draw(st.integers(0, 10))
    spread = draw(st.sampled_from([1.0, 3.0]))  # 3.0: fractional coordinates in [-1, 2]
    frac = draw(
        st.lists(
            st.lists(st.floats(0.5 - spread / 2, 0.5 + spread / 2), min_size=3, max_size=3),
            min_size=n,
            max_size=n,
        )
    )
    positions = np.array(frac, dtype=float).reshape(n, 3) @ cell
    # cutoff relative to the smallest plane spacing: from tiny to several box lengths
    spacing = abs(np.linalg.det(cell)) / np.linalg.norm(
        np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1
    )
    cutoff = draw(st.floats(0.02, 2.5)) * spacing.min()
    return positions, cell, pbc, cutoff


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures(), st.sampled_from([1, 2]), SUBS)
def test_against_brute_force(structure, n_threads, sub):
    positions, cell, pbc, cutoff = structure
    got = binned(positions, cell, pbc, cutoff, sub=sub, n_threads=n_threads)
    check_output(got, positions, cell, len(positions))
    assert_same(got, brute_force(positions, cell, pbc, cutoff), cutoff, what="brute force")
    half = binned(positions, cell, pbc, cutoff, full_list=False, sub=sub)
    check_output(half, positions, cell, len(positions))
    ref_half = brute_force(positions, cell, pbc, cutoff, full_list=False)
    assert_same(half, ref_half, cutoff, what="brute force, half list")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures())
def test_against_ase_and_vesin(structure):
    positions, cell, pbc, cutoff = structure
    got = neighbor_list(positions, cell, pbc, cutoff)
    ase_ref = primitive_neighbor_list(
        "ijSD", pbc, cell, positions, cutoff, self_interaction=False, use_scaled_positions=False
    )
    assert_same(got, ase_ref, cutoff, what="ASE")
    spacing = abs(np.linalg.det(cell)) / np.linalg.norm(
        np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1
    )
    if np.prod(spacing / cutoff) > 2e3:
        return  # vesin walks every cutoff-sized cell of the box: seconds at tiny cutoffs
    calc = vesin.NeighborList(cutoff=cutoff, full_list=True, n_threads=1)
    vi, vj, vS, vD = calc.compute(positions, cell, pbc, quantities="ijSD")
    assert_same(got, (vi.astype(np.int64), vj.astype(np.int64), vS, vD), cutoff, what="vesin")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures(), SUBS)
def test_half_list_is_half_of_full(structure, sub):
    positions, cell, pbc, cutoff = structure
    i, j, S, D = binned(positions, cell, pbc, cutoff, sub=sub)
    hi, hj, hS, hD = binned(positions, cell, pbc, cutoff, full_list=False, sub=sub)
    full = as_dict(i, j, S, D)
    forward = as_dict(hi, hj, hS, hD)
    backward = as_dict(hj, hi, -hS, -hD)
    assert not set(forward) & set(backward), "a half list holds a pair twice"
    assert set(forward) | set(backward) == set(full)
    for key, v in (forward | backward).items():
        np.testing.assert_allclose(v, full[key], rtol=0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(structures(), st.lists(st.integers(-40, 40), min_size=3, max_size=3))
def test_unwrapped_positions(structure, move):
    """Moving atoms by lattice vectors (periodic axes) changes S, not the vectors."""
    positions, cell, pbc, cutoff = structure
    assume(len(positions) > 0)
    rng = np.random.default_rng(len(positions))
    moves = rng.integers(-3, 4, size=(len(positions), 3)) * np.array(move)[None, :] // 3
    moves[:, ~np.array(pbc)] = 0
    moved = positions + moves @ cell
    i, j, S, D = neighbor_list(moved, cell, pbc, cutoff)
    i0, j0, S0, D0 = neighbor_list(positions, cell, pbc, cutoff)
    back = S + moves[j] - moves[i]
    assert_same((i, j, back, D), (i0, j0, S0, D0), cutoff, atol=1e-10, what="unwrapped")


def water_box():
    import ase.io

    atoms = ase.io.read(DATA / "liquid_512h2o.xyz")
    return atoms.positions, atoms.cell.array


@pytest.mark.parametrize("cutoff", [3.0, 5.0])
def test_liquid_water_against_vesin_and_threads(cutoff):
    """12288 atoms: enough for several threads (one per 2048 atoms at most)."""
    positions, cell = water_box()
    positions = np.concatenate([positions + np.array(s) @ cell for s in np.ndindex(2, 2, 2)])
    cell = 2 * cell
    got = neighbor_list(positions, cell, True, cutoff)
    check_output(got, positions, cell, len(positions))
    calc = vesin.NeighborList(cutoff=cutoff, full_list=True, n_threads=1)
    ref = calc.compute(positions, cell, True, quantities="ijSD")
    assert_same(got, (ref[0].astype(np.int64), ref[1].astype(np.int64), *ref[2:]), cutoff)
    for n_threads in (2, 3, 0):
        other = neighbor_list(positions, cell, True, cutoff, n_threads=n_threads)
        for a, b in zip(got, other, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", range(4))
def test_many_atoms_skewed_cell(seed):
    """Enough atoms for many bins, so that the stencil pruning in skewed cells matters."""
    rng = np.random.default_rng(seed)
    cell = np.diag(rng.uniform(6, 10, 3))
    cell[1, 0], cell[2, 0], cell[2, 1] = rng.uniform(-2.5, 2.5, 3) * cell[0, 0]
    pbc = [True, True, True] if seed < 2 else list(rng.integers(0, 2, 3).astype(bool))
    positions = rng.uniform(-0.2, 1.2, (150, 3)) @ cell
    cutoff = rng.uniform(1.0, 3.5)
    ref = brute_force(positions, cell, pbc, cutoff)
    for sub in (0, 1, 2, 3):
        got = binned(positions, cell, pbc, cutoff, sub=sub)
        check_output(got, positions, cell, len(positions))
        assert_same(got, ref, cutoff, what=f"{sub} bins per cutoff")


@pytest.mark.parametrize("seed", range(6))
def test_dense_random_against_vesin(seed):
    """Thousands of atoms, so that every bin offset of the stencil holds pairs close to
    the cutoff: a stencil that prunes even slightly too much loses pairs here."""
    rng = np.random.default_rng(100 + seed)
    cell = np.diag(rng.uniform(22, 30, 3))
    skew = [0.0, 0.5, 1.5][seed % 3]
    cell[1, 0], cell[2, 0], cell[2, 1] = rng.uniform(-skew, skew, 3) * cell[0, 0]
    pbc = [True, True, True] if seed < 3 else [True, False, True]
    positions = rng.uniform(0, 1, (2000, 3)) @ cell  # 0.1 atoms / Å^3, as water
    for cutoff in rng.uniform(2.0, 6.0, 2):
        calc = vesin.NeighborList(cutoff=cutoff, full_list=True, n_threads=1)
        ref = calc.compute(positions, cell, pbc, quantities="ijSD")
        ref = (ref[0].astype(np.int64), ref[1].astype(np.int64), *ref[2:])
        for sub in (0, 1, 2, 3, 4):
            got = binned(positions, cell, pbc, cutoff, sub=sub)
            assert_same(got, ref, cutoff, what=f"{sub} bins per cutoff")


def min_bin_distance(edges, d):
    """Exact distance between bin b and bin b + d: min |y @ edges| over y in [d-1, d+1]."""
    from scipy.optimize import lsq_linear

    d = np.asarray(d, dtype=float)
    res = lsq_linear(edges.T, np.zeros(3), bounds=(d - 1, d + 1), method="bvls", tol=1e-14)
    return np.linalg.norm(res.x @ edges)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures(), st.sampled_from([1, 2, 3]))
def test_stencil_is_exact(structure, sub):
    """Kept bin offsets are exactly those whose bins come closer than the cutoff: none is
    missing (that would lose pairs) and none is wasted (beyond the rounding margin)."""
    positions, cell, pbc, cutoff = structure
    # enough atoms that the bin count is not capped
    pos = np.random.default_rng(0).uniform(-0.5, 1.5, (400, 3)) @ cell
    info = _neighbors.grid_info(pos, np.ascontiguousarray(cell), pbc, cutoff, sub)
    n, m, edges = np.array(info["n_bins"]), np.array(info["reach_bins"]), info["bin_edges"]
    kept = set()
    for d0, d1, lo, hi in info["rows"]:
        kept |= {(d0, d1, d2) for d2 in range(lo, hi + 1)}
    # one layer beyond the stencil along periodic axes, to check that m is wide enough
    span = [range(-m[k] - pbc[k], m[k] + pbc[k] + 1) for k in range(3)]
    checked = 0
    for d in np.stack(np.meshgrid(*span, indexing="ij"), -1).reshape(-1, 3):
        dist = min_bin_distance(edges, d)
        if tuple(d) in kept:
            assert dist < cutoff * (1 + 1e-6), f"wasted offset {d}: {dist} >= {cutoff}"
            checked += 1
        elif all(pbc[k] or abs(d[k]) < n[k] for k in range(3)):
            # (offsets beyond the bins of a non-periodic axis never occur)
            assert dist >= cutoff * (1 - 1e-6), f"missing offset {d}: {dist} < {cutoff}"
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("cutoff", [3.5, 7.5])
def test_cutoff_much_larger_than_the_box(cutoff):
    """One atom in a small cubic cell: its own images, counted exactly (7.5 box lengths
    also takes the path for many image codes)."""
    a = 1.0
    i, j, S, D = neighbor_list([[0.3, 0.2, 0.1]], np.eye(3) * a, True, cutoff)
    grid = np.arange(-9, 10)
    lattice = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)
    r = np.linalg.norm(lattice, axis=1)
    expected = lattice[(r > 0) & (r < cutoff)]
    assert len(i) == len(expected) and (i == 0).all() and (j == 0).all()
    assert {tuple(s) for s in S} == {tuple(s) for s in expected}
    np.testing.assert_allclose(D, S.astype(float), rtol=0, atol=1e-12)
    hi, hj, hS, hD = neighbor_list([[0.3, 0.2, 0.1]], np.eye(3) * a, True, cutoff, False)
    assert 2 * len(hi) == len(i)
    # two atoms in a skewed cell, against brute force
    cell = np.array([[1.0, 0.0, 0.0], [0.7, 1.1, 0.0], [-0.4, 0.3, 0.9]])
    positions = np.array([[0.1, 0.2, 0.3], [1.9, -0.6, 0.4]])
    got = neighbor_list(positions, cell, True, cutoff / 2)
    assert_same(got, brute_force(positions, cell, True, cutoff / 2), cutoff / 2)


def test_zero_and_one_atom():
    for cell, pbc in [(np.eye(3) * 5, True), (None, False), (np.zeros((3, 3)), False)]:
        for positions in (np.zeros((0, 3)), [[1.0, 2.0, 3.0]]):
            i, j, S, D = neighbor_list(positions, cell, pbc, 3.0)
            assert len(i) == 0 and S.shape == (0, 3) and D.shape == (0, 3)
            assert S.dtype == np.int32 and i.dtype == np.int64
    i, j, S, D = neighbor_list([[1.0, 2.0, 3.0]], np.eye(3) * 2.0, True, 3.0)
    assert len(i) == 18  # 6 faces + 12 edges of the cube of images
    assert neighbor_list(np.zeros((0, 3)), np.eye(3), True, 0.0)[0].shape == (0,)


def test_zero_cutoff():
    positions = np.zeros((3, 3))
    assert len(neighbor_list(positions, np.eye(3), True, 0.0)[0]) == 0


def test_cell_none_and_zero_cell_for_molecules():
    rng = np.random.default_rng(1)
    positions = rng.uniform(-3, 3, (20, 3))
    ref = brute_force(positions, np.zeros((3, 3)), False, 2.5)
    for cell in (None, np.zeros((3, 3)), np.diag([0.0, 5.0, 0.0])):
        assert_same(neighbor_list(positions, cell, False, 2.5), ref, 2.5)
    # a periodic axis with the others zero, as in a wire
    cell = np.diag([4.0, 0.0, 0.0])
    got = neighbor_list(positions, cell, [True, False, False], 2.5)
    assert_same(got, brute_force(positions, cell, [True, False, False], 2.5), 2.5)


def test_water_molecule_in_vacuum_box():
    import ase.io

    atoms = ase.io.read(DATA / "molecule_h2o.xyz")
    assert len(atoms) == 3 and atoms.cell.lengths().min() >= 99
    for pbc in (False, True, [True, False, True]):
        i, j, S, D = neighbor_list(atoms.positions, atoms.cell.array, pbc, 4.0)
        assert len(i) == 6 and (S == 0).all()
        assert {(a, b) for a, b in zip(i.tolist(), j.tolist(), strict=True)} == {
            (a, b) for a in range(3) for b in range(3) if a != b
        }


def test_huge_boxes_stay_cheap():
    """A few atoms in a huge periodic box must not walk the empty volume (binning is
    capped at O(N)); the same with a single molecule far outside the cell."""
    positions = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]) + 500.0
    for box in (100.0, 1.0e4):
        for pbc in (True, False):
            neighbor_list(positions, np.eye(3) * box, pbc, 4.0)  # warm up
            start = time.perf_counter()
            for _ in range(10):
                i, j, S, D = neighbor_list(positions, np.eye(3) * box, pbc, 4.0)
            elapsed = (time.perf_counter() - start) / 10
            assert len(i) == 6
            assert elapsed < 2e-3, f"{elapsed * 1e3:.2f} ms for 3 atoms in a {box} Å box"


def test_positions_far_from_origin():
    """Unwrapped positions many cells away keep vectors exact."""
    positions, cell = water_box()
    positions = positions[:300]
    far = positions + np.array([40, -70, 13]) @ cell
    i, j, S, D = neighbor_list(positions, cell, True, 3.0)
    fi, fj, fS, fD = neighbor_list(far, cell, True, 3.0)
    np.testing.assert_array_equal(i, fi)
    np.testing.assert_array_equal(j, fj)
    np.testing.assert_array_equal(S, fS)
    np.testing.assert_allclose(D, fD, rtol=0, atol=1e-10)


def test_pbc_forms():
    positions = np.array([[0.1, 0.1, 0.1], [2.9, 0.1, 0.1]])
    cell = np.eye(3) * 3.0
    a = neighbor_list(positions, cell, True, 1.0)
    b = neighbor_list(positions, cell, [True, True, True], 1.0)
    c = neighbor_list(positions, cell, np.array([1, 1, 1]), 1.0)
    assert len(a[0]) == len(b[0]) == len(c[0]) == 2
    assert len(neighbor_list(positions, cell, (False, True, True), 1.0)[0]) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"positions": np.zeros((3, 2))}, "shape"),
        ({"positions": np.zeros(3)}, "shape"),
        ({"positions": [["a", "b", "c"]]}, "positions"),
        ({"cell": np.eye(2)}, "shape"),
        ({"cell": np.zeros(9)}, "shape"),
        ({"pbc": [True, True]}, "pbc"),
        ({"pbc": [2, 0, 1]}, "pbc"),
        ({"cutoff": -1.0}, "cutoff"),
        ({"cutoff": float("nan")}, "cutoff"),
        ({"cutoff": float("inf")}, "cutoff"),
        ({"cell": np.diag([1.0, 1.0, np.nan])}, "non-finite"),
        ({"cell": np.diag([1.0, np.inf, 1.0]), "pbc": False}, "non-finite"),
        ({"cell": np.diag([1.0, 1.0, 0.0])}, "zero"),
        ({"cell": np.array([[1.0, 0, 0], [0, 1, 0], [1, 1, 0]])}, "singular"),
        ({"cell": np.array([[1.0, 0, 0], [2, 0, 0], [0, 0, 1]]), "pbc": [1, 1, 0]}, "parallel"),
        ({"cell": None}, "cell"),
    ],
)
def test_bad_input(kwargs, message):
    args = {
        "positions": np.zeros((2, 3)),
        "cell": np.eye(3) * 4,
        "pbc": True,
        "cutoff": 2.0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        neighbor_list(**args)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_position_names_the_atom(bad):
    positions = np.zeros((5, 3))
    positions[3, 1] = bad
    with pytest.raises(ValueError, match="atom 3"):
        neighbor_list(positions, np.eye(3) * 4, True, 2.0)
    with pytest.raises(ValueError, match="atom 3"):
        neighbor_list(positions, None, False, 2.0)


def test_non_periodic_singular_cell_is_ignored():
    """Cell rows of non-periodic axes are not used at all."""
    positions = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.5], [0.5, 0.0, 0.0]])
    cell = np.array([[3.0, 0, 0], [3.0, 0, 0], [0, 0, 0]])
    got = neighbor_list(positions, cell, [True, False, False], 2.0)
    assert_same(got, brute_force(positions, cell, [True, False, False], 2.0), 2.0)


def test_too_many_images():
    with pytest.raises(ValueError, match="too large"):
        neighbor_list([[0.0, 0.0, 0.0]], np.eye(3) * 1e-3, True, 1e3)
