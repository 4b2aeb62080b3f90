"""Rotational averaging in the evaluator: the physics of E_avg(x) = Σ_k w_k E(R_k x).

Everything in float64 with a tiny random model, checked against independent references:
finite differences, plain evaluations of explicitly rotated structures, a direct eager
call of the model, and the group structure of the rotation grids.

Conventions (rotations.py): R acts on column vectors; row-stored positions X [N, 3] and a
cell h with lattice vectors as rows transform as X Rᵀ and h Rᵀ.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from ase import Atoms

from helpers import export_tiny, small_water, strain_derivative, tiny_pet
from symbreak.evaluator import Evaluator, Structure
from symbreak.export import load_model
from symbreak.graph import build_graph
from symbreak.policy import random_rotations as policy_stream
from symbreak.rotations import AveragingPolicy, grid, random_rotations


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("model") / "tiny.pt", seed=0)


@pytest.fixture(scope="module")
def loaded64(model_file):
    """One loaded model shared by all float64 evaluators of this file."""
    return load_model(model_file)


@pytest.fixture(scope="module")
def ev64(loaded64):
    return Evaluator(loaded64, dtype=torch.float64)


# -- helpers ------------------------------------------------------------------------------

# Tolerance of "exactly equal" energies: a few ulps of the total energy (≈ 2900 eV, ulp
# 4.5e-13 eV), i.e. ≈ 3e-15 relative, much stricter than 1e-10 relative.
TOL_E = 1e-11


def transformed(atoms: Atoms, R: np.ndarray) -> Atoms:
    """The structure R x: positions X Rᵀ, cell h Rᵀ (R may be improper)."""
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ R.T, scale_atoms=False)
    out.positions = atoms.positions @ R.T
    return out


def rz(t: float) -> np.ndarray:
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def axis_rotation(axis: int, t: float) -> np.ndarray:
    """Counter-clockwise rotation by t about Cartesian axis 0, 1 or 2."""
    perm = [(axis + 1) % 3, (axis + 2) % 3, axis]
    R = np.eye(3)
    R[np.ix_(perm, perm)] = rz(t)
    return R


def run(ev: Evaluator, atoms: Atoms, policy: str, gradients: bool = True):
    return ev.compute(Structure.from_atoms(atoms), policy, gradients=gradients)[0]


def energy(ev: Evaluator, atoms: Atoms, policy: str) -> float:
    return run(ev, atoms, policy, gradients=False).energy


def set_matching(A: np.ndarray, B: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """For each matrix of A [K, 3, 3], the index of the equal one in B [K', 3, 3], or -1."""
    from scipy.spatial import cKDTree

    d, j = cKDTree(B.reshape(len(B), 9)).query(A.reshape(len(A), 9))
    return np.where(d < tol, j, -1)


def maps_onto_itself(R: np.ndarray, w: np.ndarray, RQ: np.ndarray) -> bool:
    """Whether the weighted set {RQ_k, w_k} equals {R_k, w_k}."""
    j = set_matching(RQ, R)
    return bool((j >= 0).all() and len(set(j)) == len(R) and np.allclose(w[j], w, atol=1e-14))


# -- gradients of the averaged energy ------------------------------------------------------


@pytest.mark.parametrize("policy", ["lebedev:3", "legendre:2+inv"])
def test_forces_and_virial_are_gradients_of_the_averaged_energy(ev64, policy):
    atoms = small_water(6, seed=3, triclinic=True)
    res = run(ev64, atoms, policy)
    h = 1e-5
    rng = np.random.default_rng(1)
    for atom in rng.choice(len(atoms), 4, replace=False):
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[atom, axis] += h
            minus.positions[atom, axis] -= h
            fd = -(energy(ev64, plus, policy) - energy(ev64, minus, policy)) / (2 * h)
            assert res.forces[atom, axis] == pytest.approx(fd, abs=1e-6, rel=1e-6)
    numeric = strain_derivative(lambda a: energy(ev64, a, policy), atoms, h)
    np.testing.assert_allclose(res.virial, numeric, atol=1e-6)
    # The antisymmetric part of -Σ r ⊗ ∂E/∂r (the torque diagnostic) is the derivative with
    # respect to a rigid rotation of positions and cell, τ = -dE/dθ: non-zero, as the
    # averaged model is not exactly invariant either.
    for axis in range(3):
        e = [energy(ev64, transformed(atoms, axis_rotation(axis, s * h)), policy) for s in (1, -1)]
        tau = -(e[0] - e[1]) / (2 * h)
        assert res.diagnostics["torque"][axis] == pytest.approx(tau, abs=1e-6, rel=1e-5)
    assert np.linalg.norm(res.diagnostics["torque"]) > 1e-5


# -- exact invariances of the averaged energy under the grid's own symmetries --------------
#
# E_avg(Q x) = Σ_k w_k E(R_k Q x): it equals E_avg(x) when right multiplication by Q maps
# the weighted set {R_k} onto itself, {R_k Q} = {R_k}. A *left* symmetry ({Q R_k} = {R_k})
# only says that the grid averages the rotated model E(Q ·) like E: no invariance of the
# input. With R = Rz(γ) Rx(β) Rz(α) (α applied first):
# * inversion grids hold R and -R: right multiplication by -1 swaps them, E_avg(-x) = E_avg(x);
# * Legendre: R Rz(θ) = Rz(γ) Rx(β) Rz(α + θ), so θ = 2π/(2L-1) shifts the α grid onto itself
#   (a right symmetry; Rz(θ) R shifts γ, a left one);
# * Lebedev × in-plane angles: Rz(2π/L) R shifts the in-plane angle γ, which is applied *last*:
#   a left symmetry only. A right Rz(θ) shifts the axis azimuth α; θ = π/2 maps the
#   octahedral point set onto itself, but the two poles (β = 0, π, where α = π/2 is a
#   convention) carry the rotations Rz(γ_j + π/2) and Rz(γ_j) Rx(π) Rz(π/2): after Rz(π/2)
#   they need γ shifted by ±π/2, not a multiple of 2π/L for odd L. So a Lebedev grid has
#   no right symmetry but ±1 (checked exhaustively below).


@pytest.mark.parametrize("policy", ["lebedev:3+inv", "legendre:2+inv"])
def test_inversion_invariance_with_inversion(ev64, policy):
    atoms = small_water(6, seed=7, triclinic=True)
    inverted = transformed(atoms, -np.eye(3))  # x -> -x, cell -> -cell
    a, b = run(ev64, atoms, policy), run(ev64, inverted, policy)
    assert abs(b.energy - a.energy) <= TOL_E
    np.testing.assert_allclose(b.forces, -a.forces, atol=1e-10)  # E(-x) = E(x): F odd
    np.testing.assert_allclose(b.virial, a.virial, atol=1e-10)
    # Control: without the inversion in the grid the same transformation changes E_avg.
    plain = policy.split("+")[0]
    assert abs(energy(ev64, inverted, plain) - energy(ev64, atoms, plain)) > 1e-7


@pytest.mark.parametrize("L", [2, 3])
def test_legendre_invariance_under_its_alpha_step(ev64, L):
    R, w = grid(f"legendre:{L}")
    step = 2 * np.pi / (2 * L - 1)
    assert maps_onto_itself(R, w, R @ rz(step))  # the derivation above, checked
    assert not maps_onto_itself(R, w, R @ rz(step / 2))
    atoms = small_water(6, seed=8, triclinic=True)
    spec = f"legendre:{L}"
    e0 = energy(ev64, atoms, spec)
    for k in (1, 2):
        e = energy(ev64, transformed(atoms, rz(k * step)), spec)
        # A few ulps of |E| (2900 eV); far below 1e-10 relative (0.3 µeV), since the
        # sensitivity to a generic rotation of legendre:3 is only ~0.2 µeV.
        assert abs(e - e0) <= TOL_E
    # Control: half a step is no symmetry and changes E_avg by far more than the tolerance.
    assert abs(energy(ev64, transformed(atoms, rz(step / 2)), spec) - e0) > 100 * TOL_E


@pytest.mark.parametrize("L", [3, 5, 7])
def test_lebedev_grid_has_only_left_in_plane_symmetry(L):
    for inversion in (False, True):
        R, w = grid(f"lebedev:{L}", inversion)
        assert maps_onto_itself(R, w, rz(2 * np.pi / L) @ R)  # left: in-plane angle γ
        # Any right symmetry Q has R_0 Q = R_j for some j: try them all.
        right = [R[0].T @ Rj for Rj in R if maps_onto_itself(R, w, R @ (R[0].T @ Rj))]
        expected = [np.eye(3), -np.eye(3)] if inversion else [np.eye(3)]
        assert len(right) == len(expected)
        for Q in expected:
            assert any(np.allclose(Q, X, atol=1e-12) for X in right)


def test_lebedev_average_under_right_quarter_turn_changes_by_the_pole_terms(ev64):
    """Rz(π/2) maps every Lebedev rotation onto the grid except the 2L pole ones, so
    E_avg(Q x) - E_avg(x) = Σ_poles w_k [E(R_k Q x) - E(R_k x)], with each term a plain
    evaluation of an explicitly rotated structure; the left symmetry Rz(2π/L) applied to
    the input is no invariance either."""
    L = 3
    R, w = grid(f"lebedev:{L}")
    Q = rz(np.pi / 2)
    j = set_matching(R @ Q, R)
    poles = np.isclose(np.abs(R[:, 2, 2]), 1.0)
    assert poles.sum() == 2 * L
    assert (j[poles] < 0).all() and (j[~poles] >= 0).all()
    assert np.allclose(w[j[~poles]], w[~poles]) and len(set(j[~poles])) == (~poles).sum()
    atoms = small_water(6, seed=9, triclinic=True)
    spec = f"lebedev:{L}"
    e0 = energy(ev64, atoms, spec)
    change = energy(ev64, transformed(atoms, Q), spec) - e0
    predicted = sum(
        w[k]
        * (
            energy(ev64, transformed(atoms, R[k] @ Q), "none")
            - energy(ev64, transformed(atoms, R[k]), "none")
        )
        for k in np.flatnonzero(poles)
    )
    assert abs(predicted) > 1e-7  # the pole terms do not cancel by accident
    assert change == pytest.approx(predicted, rel=0, abs=10 * TOL_E)
    assert abs(energy(ev64, transformed(atoms, rz(2 * np.pi / L)), spec) - e0) > 1e-7


# -- convergence ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "specs",
    [
        ["none", "legendre:2", "legendre:3", "legendre:4"],
        ["none", "lebedev:3", "lebedev:5", "lebedev:7"],
    ],
)
def test_rotation_sensitivity_falls_as_the_grid_grows(ev64, specs):
    atoms = small_water(6, seed=2, triclinic=True)
    rotations = random_rotations(np.random.default_rng(5), 4, improper_fraction=0.0)
    changes = []
    for spec in specs:
        e0 = energy(ev64, atoms, spec)
        changes.append(
            np.mean([abs(energy(ev64, transformed(atoms, Q), spec) - e0) for Q in rotations])
        )
    changes = np.array(changes)
    assert changes[0] > 1e-3  # the plain tiny model breaks the symmetry visibly
    # Each refinement lowers the change by at least 10x (observed: 40x-2000x).
    assert (changes[1:] < changes[:-1] / 10).all(), changes
    assert changes[-1] < 1e-6 * changes[0], changes


# -- K = 1 and bookkeeping ---------------------------------------------------------------------


def test_identity_grid_reproduces_the_plain_model(ev64):
    """'none' and 'legendre:1' against an eager call of PET.atomic_energies with forces and
    virial from autograd through positions and strain (an independent assembly)."""
    atoms = small_water(6, seed=4, triclinic=True)
    model, cfg = tiny_pet(0)  # the same weights as the exported file
    model = model.double().eval()
    g = build_graph(atoms.numbers, atoms.positions, atoms.cell.array, True, cfg.cutoff, cfg.species)
    pos = torch.tensor(atoms.positions, requires_grad=True)
    strain = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    cell = torch.tensor(atoms.cell.array)
    i, j = torch.from_numpy(g.centers), torch.from_numpy(g.neighbors)
    shifts = torch.from_numpy(g.shifts.astype(np.float64))
    vectors = (pos[j] - pos[i] + shifts @ cell) @ (torch.eye(3, dtype=torch.float64) + strain)
    species = torch.from_numpy(g.species)
    eps = model.atomic_energies(species, i, j, vectors, torch.from_numpy(g.reverse))
    atomic = eps + model.baseline_energies(species)
    total = atomic.sum()
    dpos, dstrain = torch.autograd.grad([total], [pos, strain])
    w_ref = -dstrain.numpy()  # -∂E/∂ε, not symmetrised
    for spec in ("none", "legendre:1", "lebedev:1"):
        res = run(ev64, atoms, spec)
        assert res.diagnostics["n_rotations"] == 1
        assert res.energy == pytest.approx(float(total.detach()), rel=1e-13, abs=1e-12)
        np.testing.assert_allclose(res.energies, atomic.detach().numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(res.forces, -dpos.numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(res.virial, 0.5 * (w_ref + w_ref.T), rtol=0, atol=1e-11)
        anti = w_ref - w_ref.T
        np.testing.assert_allclose(
            res.diagnostics["torque"], [anti[1, 2], anti[2, 0], anti[0, 1]], atol=1e-11
        )
        assert res.diagnostics["energy_rot_std"] == 0.0
        assert res.diagnostics["forces_rot_std"] < 1e-6  # sqrt of a rounding-level difference


def _compare(a, b, tol=1e-12):
    assert a.energy == pytest.approx(b.energy, rel=tol, abs=tol)
    for name in ("forces", "virial", "energies"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=tol)
    assert a.diagnostics.keys() == b.diagnostics.keys()
    for key, value in a.diagnostics.items():
        if isinstance(value, str | int):
            assert value == b.diagnostics[key], key
        else:
            np.testing.assert_allclose(value, b.diagnostics[key], rtol=1e-9, atol=tol, err_msg=key)


def test_rotation_batch_chunking_gives_the_same_results(loaded64):
    atoms = small_water(6, seed=5, triclinic=True)
    policy = "legendre:2+inv"  # K = 36, proper and improper rotations
    results = {
        batch: Evaluator(loaded64, rotation_batch=batch, dtype=torch.float64).compute(
            Structure.from_atoms(atoms), policy
        )[0]
        for batch in (None, 36, 1, 5, 7, 100)
    }
    ref = results.pop(36)
    assert ref.diagnostics["n_rotations"] == 36 and ref.diagnostics["energy_rot_std"] > 1e-4
    for res in results.values():
        _compare(res, ref)


def test_batched_structures_equal_separate_calls(loaded64):
    base = small_water(6, seed=6, triclinic=True)
    rng = np.random.default_rng(2)
    beads = []
    for _ in range(3):  # path-integral-like beads: the same atoms, slightly displaced
        bead = base.copy()
        bead.positions += rng.normal(0.0, 0.05, bead.positions.shape)
        beads.append(bead)
    molecule = small_water(1, triclinic=False)
    molecule.pbc = False  # a structure of another size and periodicity in the same batch
    structures = [Structure.from_atoms(a) for a in [*beads, molecule]]
    for batch in (None, 5):
        ev = Evaluator(loaded64, rotation_batch=batch, dtype=torch.float64)
        together = ev.compute(structures, "lebedev:3")
        for s, res in zip(structures, together, strict=True):
            _compare(res, ev.compute(s, "lebedev:3")[0])


def test_parallel_rotation_workers_give_the_same_results(loaded64):
    """Rotation groups on worker threads, merged, equal one sequential pass: weighted sums,
    per-rotation energies in grid order, atomic energies with the baseline counted once."""
    base = small_water(6, seed=7, triclinic=True)
    other = small_water(4, seed=8, triclinic=False)
    structures = [Structure.from_atoms(base), Structure.from_atoms(other)]
    policy = "legendre:2+inv"  # K = 36; 5 workers get uneven groups (7 or 8 rotations)
    ref = Evaluator(loaded64, workers=1, dtype=torch.float64).compute(structures, policy)
    assert ref[0].diagnostics["energy_rot_std"] > 1e-4
    for workers, batch in ((2, None), (5, 3), (36, 1), (64, None)):
        ev = Evaluator(loaded64, workers=workers, rotation_batch=batch, dtype=torch.float64)
        for res, expected in zip(ev.compute(structures, policy), ref, strict=True):
            # atomic energies (≈ -435 eV) are summed group by group: a few ulps apart
            _compare(res, expected, tol=TOL_E)
        ev.close()


def test_parallel_workers_leave_the_callers_thread_settings_alone(loaded64):
    def fresh_thread_default() -> int:
        seen = []
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        t.start()
        t.join()
        return seen[0]

    class Recorder:
        """Stands in for the scripted module: notes the torch threads of each task."""

        def __init__(self, module):
            self.module, self.seen = module, []
            self.edge_budget = module.edge_budget
            self.policy_rotations = module.policy_rotations
            self.merge, self.finalize = module.merge, module.finalize

        def accumulate(self, *args):
            self.seen.append((threading.get_ident(), torch.get_num_threads()))
            return self.module.accumulate(*args)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ev = Evaluator(loaded64, workers=2, dtype=torch.float64)
        ev.module = Recorder(ev.module)
        ev.compute(Structure.from_atoms(small_water(2, seed=1)), "lebedev:3")
        # two rotation groups, each on a pool thread with one intra-op thread
        assert len(ev.module.seen) == 2
        assert all(tid != threading.get_ident() and n == 1 for tid, n in ev.module.seen)
        assert torch.get_num_threads() == 2
        assert fresh_thread_default() == 2  # the workers' setting did not leak out
        ev.close()
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="workers"):
        Evaluator(loaded64, workers=0)


@pytest.mark.parametrize("policy", ["lebedev:3", "legendre:2+inv"])
def test_spread_diagnostics_match_separate_rotated_evaluations(ev64, policy):
    """E_k = E(R_k x) and the per-rotation forces F_k = -∇_x E(R_k x) = R_kᵀ F(R_k x)
    (back-rotated: rows F(R_k x) @ R_k), from plain calls on rotated structures."""
    atoms = small_water(6, seed=10, triclinic=True)
    res = run(ev64, atoms, policy)
    R, w = AveragingPolicy.parse(policy).rotations()
    plain = [run(ev64, transformed(atoms, Rk), "none") for Rk in R]
    e_k = np.array([p.energy for p in plain])
    f_raw = np.array([p.forces for p in plain])  # F(R_k x), in the rotated frame
    f_k = np.einsum("kia,kab->kib", f_raw, R)  # R_kᵀ F(R_k x)
    e_mean = w @ e_k
    assert res.energy == pytest.approx(e_mean, rel=1e-12)
    e_std = np.sqrt(w @ (e_k - e_mean) ** 2)
    assert res.diagnostics["energy_rot_std"] == pytest.approx(e_std, rel=1e-8)
    f_mean = np.einsum("k,kia->ia", w, f_k)
    np.testing.assert_allclose(res.forces, f_mean, atol=1e-10)
    per_atom = np.sqrt(np.einsum("k,ki->i", w, ((f_k - f_mean) ** 2).sum(2)))
    np.testing.assert_allclose(res.diagnostics["forces_rot_std_atoms"], per_atom, rtol=1e-6)
    assert res.diagnostics["forces_rot_std"] == pytest.approx(
        np.sqrt(np.mean(per_atom**2)), rel=1e-6
    )
    # Without the back-rotation the "mean force" is not the averaged force, and the spread
    # of the raw forces is dominated by their orientation, not by the symmetry breaking.
    raw_mean = np.einsum("k,kia->ia", w, f_raw)
    assert np.abs(raw_mean - res.forces).max() > 0.1 * np.abs(res.forces).max()
    raw_std = np.sqrt(np.einsum("k,ki->i", w, ((f_raw - raw_mean) ** 2).sum(2)))
    assert np.sqrt(np.mean(raw_std**2)) > 3 * res.diagnostics["forces_rot_std"]


# -- random rotations -------------------------------------------------------------------------


def test_random_policy_is_seeded_and_draws_a_new_rotation_per_call(ev64):
    atoms = small_water(6, seed=11, triclinic=True)
    s = Structure.from_atoms(atoms)

    def sequence(policy: str, n: int = 3) -> list:
        ev64.set_policy(policy)
        try:
            return [ev64.compute(s)[0] for _ in range(n)]
        finally:
            ev64.set_policy("none")

    first, again = sequence("random+seed=3"), sequence("random+seed=3")
    other = sequence("random+seed=4")
    energies = [r.energy for r in first]
    assert energies == [r.energy for r in again]
    assert len(set(energies)) == 3  # a new rotation at every call
    assert energies != [r.energy for r in other]
    for res in first:
        assert res.diagnostics["n_rotations"] == 1 and res.diagnostics["energy_rot_std"] == 0.0
    # The rotations are the documented stream: call n is policy.random_rotations(3, n).
    for n, res in enumerate(first):
        Rk = policy_stream(3, n, False)[0][0].numpy()
        ref = run(ev64, transformed(atoms, Rk), "none")
        assert res.energy == pytest.approx(ref.energy, rel=1e-12)
        np.testing.assert_allclose(res.forces, ref.forces @ Rk, atol=1e-10)
    # With inversion: the pair (R, -R) per call, weights 1/2.
    pair = sequence("random+inv+seed=3", 2)
    assert [r.diagnostics["n_rotations"] for r in pair] == [2, 2]
    Rk = policy_stream(3, 0, True)[0][0].numpy()
    expected = 0.5 * sum(energy(ev64, transformed(atoms, s * Rk), "none") for s in (1, -1))
    assert pair[0].energy == pytest.approx(expected, rel=1e-12)


def test_random_policy_given_per_call_as_text_keeps_drawing(tmp_path):
    """``compute(s, policy="random+seed=3")`` at every call continues one stream (as
    ``set_policy``) rather than restarting the generator at each call."""
    ev = Evaluator(export_tiny(tmp_path / "tiny.pt"), dtype=torch.float64)
    s = Structure.from_atoms(small_water(6, seed=11, triclinic=True))
    per_call = [ev.compute(s, policy="random+seed=3")[0].energy for _ in range(3)]
    ev.set_policy("random+seed=3")
    default = [ev.compute(s)[0].energy for _ in range(3)]
    assert len(set(per_call)) == 3
    assert per_call == default
