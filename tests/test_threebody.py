"""The invariant three-body prior: basis, invariances, smoothness, least-squares fit, and
its place in the PET (gradients, TorchScript, training)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from numpy.polynomial.legendre import Legendre
from scipy.spatial.transform import Rotation
from scipy.special import eval_legendre

from helpers import contract_inputs, small_water, strain_derivative, tiny_pet, water_frame
from symbreak.graph import build_graph
from symbreak.threebody import (
    ThreeBodyPrior,
    edge_pairs,
    fit_three_body,
    legendre,
    legendre_derivative,
)

SPECIES = [1, 8]


def graph(atoms, cutoff=3.5):
    return build_graph(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, cutoff, SPECIES)


def tensors(g):
    return (
        torch.from_numpy(g.species),
        torch.from_numpy(g.centers),
        torch.from_numpy(g.neighbors),
        torch.from_numpy(g.vectors),
    )


def smooth_prior(seed: int = 0, cutoff: float = 3.5) -> ThreeBodyPrior:
    """Random coefficients that vary smoothly over the radial grid (as fitted ones do)."""
    prior = ThreeBodyPrior(len(SPECIES), cutoff).double()
    gen = torch.Generator().manual_seed(seed)
    n = prior.n_basis
    x = torch.arange(n, dtype=torch.float64) / n
    shape = prior.coefficients.shape
    amp = torch.randn(shape[0], 1, 1, shape[3], generator=gen, dtype=torch.float64) * 0.05
    with torch.no_grad():
        prior.coefficients.copy_(
            amp * torch.sin(torch.pi * x)[:, None, None] * torch.cos(x)[None, :, None]
        )
        prior.coefficients.add_(0.01 * torch.randn(shape, generator=gen, dtype=torch.float64))
    return prior


def energy_and_forces(prior, atoms):
    g = graph(atoms, prior.cutoff)
    species, centers, neighbors, vectors = tensors(g)
    vectors.requires_grad_(True)
    total = prior.atomic_energies(
        species, centers, neighbors, vectors, torch.zeros(2, 2, dtype=torch.float64), 1.0
    ).sum()
    (grad,) = torch.autograd.grad(total, vectors)
    forces = torch.zeros(len(atoms), 3, dtype=grad.dtype)
    forces = forces.index_add(0, centers, grad).index_add(0, neighbors, -grad)
    return float(total.detach()), forces.numpy()


def test_edge_pairs_are_all_ordered_pairs_with_a_common_centre():
    g = graph(small_water(6, seed=1))
    e1, e2 = edge_pairs(torch.from_numpy(g.centers), g.n_atoms)
    found = sorted(zip(e1.tolist(), e2.tolist(), strict=True))
    brute = sorted(
        (a, b)
        for a, b in itertools.product(range(len(g.centers)), repeat=2)
        if a != b and g.centers[a] == g.centers[b]
    )
    assert found == brute


def test_legendre_and_derivative_match_scipy():
    x = torch.linspace(-1, 1, 41, dtype=torch.float64)
    p, dp = legendre(x, 6).numpy(), legendre_derivative(x, 6).numpy()
    for order in range(7):
        np.testing.assert_allclose(p[:, order], eval_legendre(order, x.numpy()), atol=1e-13)
        reference = Legendre.basis(order).deriv()(x.numpy())
        np.testing.assert_allclose(dp[:, order], reference, atol=1e-11)


def test_design_rows_equal_the_module_energy_and_autograd_forces():
    prior = smooth_prior(1)
    atoms = small_water(8, seed=2)
    e, f = energy_and_forces(prior, atoms)
    row, matrix = prior.design(*tensors(graph(atoms)))
    c = prior.coefficients.detach().reshape(-1)
    assert float(row @ c) == pytest.approx(e, rel=1e-12)
    np.testing.assert_allclose((matrix @ c).numpy(), f.ravel(), atol=1e-11)
    assert np.abs(f).max() > 1e-3  # not trivially zero


def test_energy_is_invariant_to_rotations_inversion_translation_and_permutation():
    prior = smooth_prior(2)
    atoms = small_water(8, seed=3)
    e0, f0 = energy_and_forces(prior, atoms)
    rot = Rotation.from_euler("zyx", [0.7, -1.2, 2.1]).as_matrix()
    for matrix in (rot, -rot):  # proper and improper
        moved = atoms.copy()
        moved.set_cell(atoms.cell.array @ matrix.T, scale_atoms=False)
        moved.positions = atoms.positions @ matrix.T + np.array([1.3, -4.0, 9.1])
        e1, f1 = energy_and_forces(prior, moved)
        assert e1 == pytest.approx(e0, rel=1e-12)
        np.testing.assert_allclose(f1, f0 @ matrix.T, atol=1e-11)
    perm = np.random.default_rng(0).permutation(len(atoms))
    e2, f2 = energy_and_forces(prior, atoms[perm])
    assert e2 == pytest.approx(e0, rel=1e-12)
    np.testing.assert_allclose(f2, f0[perm], atol=1e-11)


def test_energy_and_force_vanish_smoothly_as_a_neighbour_leaves():
    """O at the origin, one H at 1 Å, a second H moved out through the cutoff: the
    three-body energy and its derivative go to zero at the cutoff (C² splines)."""
    from ase import Atoms

    prior = smooth_prior(3)
    rc = prior.cutoff

    def at(r):
        atoms = Atoms(
            "OHH", positions=[[0, 0, 0], [1.0, 0, 0], [r * np.cos(1.8), r * np.sin(1.8), 0]]
        )
        return energy_and_forces(prior, atoms)

    e_far, f_far = at(rc + 0.01)
    assert e_far == 0.0 or abs(e_far) < 1e-15
    for delta in (1e-2, 1e-3):
        e, f = at(rc - delta)
        assert abs(e) < 50 * delta**3  # C²: the energy falls off as δ³
        assert np.abs(f).max() < 200 * delta**2


def test_least_squares_recovers_a_known_three_body_potential():
    teacher = smooth_prior(4)
    structures = [small_water(8, seed=s) for s in range(6)] + [water_frame(0)]
    graphs = [graph(a) for a in structures]
    energies, forces = zip(*(energy_and_forces(teacher, a) for a in structures), strict=True)
    student = ThreeBodyPrior(len(SPECIES), teacher.cutoff).double()
    offset = np.array([-0.3, 1.7])  # eV per H, per O: an energy offset the fit must absorb
    shifted = [
        e + offset @ np.bincount(g.species, minlength=2)
        for e, g in zip(energies, graphs, strict=True)
    ]
    shift, stats = fit_three_body(student, graphs, shifted, list(forces), 2, ridge=1e-12)
    # water only: the shift per H2O (2 H + 1 O) is what the data determine
    assert shift @ [2, 1] == pytest.approx(offset @ [2, 1], abs=1e-6)
    assert stats["force_rmse_before"] > 0.05
    assert stats["force_rmse"] < 1e-6 * stats["force_rmse_before"]
    # held out: a structure it never saw
    check = small_water(8, seed=99)
    e_t, f_t = energy_and_forces(teacher, check)
    e_s, f_s = energy_and_forces(student, check)
    assert e_s == pytest.approx(e_t, rel=1e-6, abs=1e-8)
    np.testing.assert_allclose(f_s, f_t, atol=1e-5)


def test_pet_with_three_body_forces_virial_and_torchscript():
    """The PET with the term: forces are -∇E (finite differences), the virial is the
    strain derivative, and the TorchScript module gives the eager numbers."""
    from symbreak.contract import AveragedModel

    model, cfg = tiny_pet(seed=5, three_body=True)
    model = model.double()
    with torch.no_grad():
        model.three_body.coefficients.copy_(smooth_prior(5).coefficients)
    scripted = torch.jit.script(AveragedModel(model))
    atoms = small_water(6, seed=7)

    def run(m, a):
        args = contract_inputs(a, cfg.cutoff)
        wrapped = m if isinstance(m, torch.jit.ScriptModule) else AveragedModel(m)
        return wrapped.compute(*args, "none", 0)

    ref = run(model, atoms)
    out = run(scripted, atoms)
    for key in ("energy", "forces", "virial", "atomic_energies"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-12, atol=1e-12)
    without = run(tiny_pet(seed=5, three_body=False)[0].double(), atoms)
    assert abs(float(ref["energy"][0] - without["energy"][0])) > 1e-3  # the term is there
    h = 1e-5
    for atom, axis in [(0, 0), (4, 2), (11, 1)]:
        e = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * h
            e.append(float(run(model, moved)["energy"][0]))
        fd = -(e[0] - e[1]) / (2 * h)
        assert float(ref["forces"][atom, axis]) == pytest.approx(fd, abs=1e-6, rel=1e-6)
    numeric = strain_derivative(lambda a: float(run(model, a)["energy"][0]), atoms, h)
    virial = ref["virial"][0].numpy()
    # the contract's virial is the symmetric part, the strain derivative (the rest is the
    # PET's torque)
    np.testing.assert_allclose(virial, numeric, atol=1e-6)


def test_three_body_cutoff_beyond_the_model_cutoff_is_refused():
    from symbreak.model import PET, PETConfig

    with pytest.raises(ValueError, match="three_body_cutoff 4.0 Å exceeds"):
        PET(PETConfig(three_body=True, three_body_cutoff=4.0, cutoff=3.5))
