"""The ASE calculator: same numbers as the evaluator, ASE's stress convention, run-time
policy changes, and ASE's optimisers, filters and molecular dynamics on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_stress

import symbreak.evaluator
from helpers import export_tiny, small_water
from symbreak.ase import SymbreakCalculator
from symbreak.evaluator import Evaluator, Structure
from symbreak.export import load_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("model") / "tiny.pt", seed=1)


@pytest.fixture(scope="module")
def ev64(model_file):
    return Evaluator(load_model(model_file), dtype=torch.float64)


def test_calculator_matches_evaluator(ev64):
    atoms = small_water(6, seed=1, triclinic=True)
    atoms.calc = SymbreakCalculator(ev64, average="lebedev:3")
    ref = ev64.compute(Structure.from_atoms(atoms), "lebedev:3")[0]
    # Equal up to rounding.
    assert atoms.get_potential_energy() == pytest.approx(ref.energy, rel=1e-14)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
    np.testing.assert_allclose(atoms.get_forces(), ref.forces, rtol=0, atol=1e-12)
    np.testing.assert_allclose(atoms.get_potential_energies(), ref.energies, rtol=0, atol=1e-12)
    stress = -ref.virial / atoms.get_volume()
    np.testing.assert_allclose(
        atoms.get_stress(), [stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2], stress[0, 2],
                             stress[0, 1]], rtol=0, atol=1e-14
    )  # fmt: skip
    np.testing.assert_allclose(atoms.get_stress(voigt=False), stress, rtol=0, atol=1e-14)
    results = atoms.calc.results
    assert results["average"] == "lebedev:3" and results["n_rotations"] == 18
    for key in ("energy_rot_std", "forces_rot_std", "forces_rot_std_atoms", "torque"):
        np.testing.assert_allclose(results[key], ref.diagnostics[key], rtol=1e-9, atol=1e-12)
    assert results["energy_rot_std"] > 0 and results["forces_rot_std_atoms"].shape == (len(atoms),)


def test_default_float32_calculator_from_a_file(model_file, ev64):
    atoms = small_water(4, seed=2)
    calc = SymbreakCalculator(model_file, average="legendre:2", inversion=True)
    assert calc.evaluator.dtype == torch.float32 and calc.policy.inversion
    atoms.calc = calc
    ref = ev64.compute(Structure.from_atoms(atoms), "legendre:2+inv")[0]
    assert atoms.get_potential_energy() == pytest.approx(ref.energy, rel=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), ref.forces, atol=2e-3 * np.abs(ref.forces).max())
    assert calc.results["n_rotations"] == 36
    with pytest.raises(ValueError, match="dtype"):
        SymbreakCalculator(ev64, dtype=torch.float32)
    with pytest.raises(ValueError, match="rotation_batch"):
        SymbreakCalculator(ev64, rotation_batch=3)
    with pytest.raises(ValueError, match="workers"):
        SymbreakCalculator(ev64, workers=3)
    # three parallel rotation workers give the same averaged results
    atoms.calc = SymbreakCalculator(model_file, average="legendre:2", inversion=True, workers=3)
    assert atoms.calc.evaluator.workers == 3
    assert atoms.get_potential_energy() == pytest.approx(ref.energy, rel=1e-6)


def test_calculators_share_one_loaded_model_in_both_precisions(model_file):
    loaded = load_model(model_file)
    atoms = small_water(4, seed=3)
    calc32 = SymbreakCalculator(loaded, average="lebedev:3")
    e32 = calc32.get_potential_energy(atoms)
    calc64 = SymbreakCalculator(loaded, average="lebedev:3", dtype=torch.float64)
    e64 = calc64.get_potential_energy(atoms)
    calc32.reset()
    assert calc32.get_potential_energy(atoms) == pytest.approx(e32, rel=1e-12)  # still float32
    assert e64 == pytest.approx(e32, rel=1e-6) and e64 != e32
    assert calc32.evaluator.model is calc64.evaluator.model is loaded


@pytest.mark.parametrize("average", ["none", "legendre:2+inv"])
def test_stress_is_the_strain_derivative_in_ase_convention(ev64, average):
    atoms = small_water(6, seed=3, triclinic=True)
    atoms.calc = SymbreakCalculator(ev64, average=average)
    stress = atoms.get_stress()
    numeric = calculate_numerical_stress(atoms, eps=1e-5)
    assert np.abs(stress).max() > 1e-3  # not trivially zero
    np.testing.assert_allclose(stress, numeric, atol=1e-8)


def test_stress_needs_a_3d_periodic_cell(ev64):
    molecule = small_water(2, triclinic=False)
    molecule.pbc = False
    molecule.calc = SymbreakCalculator(ev64)
    assert np.isfinite(molecule.get_potential_energy())
    assert molecule.get_forces().shape == (6, 3)
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        molecule.get_stress()
    slab = small_water(4)
    slab.pbc = (True, True, False)
    slab.calc = SymbreakCalculator(ev64)
    with pytest.raises(PropertyNotImplementedError, match="pbc"):
        slab.get_stress()


def test_set_average_changes_results_without_reloading(ev64, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded again")

    monkeypatch.setattr(symbreak.evaluator, "load_model", no_loading)
    atoms = small_water(6, seed=4)
    calc = SymbreakCalculator(ev64)
    atoms.calc = calc
    e_plain = atoms.get_potential_energy()
    assert calc.results["n_rotations"] == 1 and calc.results["average"] == "none"
    calls = ev64.calls
    assert atoms.get_potential_energy() == e_plain and ev64.calls == calls  # cached
    for spec, inversion, n in [("lebedev:3", False, 18), ("lebedev:3", True, 36)]:
        policy = calc.set_average(spec, inversion=inversion)
        assert calc.results == {}  # reset: the next get_* recomputes
        energy = atoms.get_potential_energy()
        assert calc.results["n_rotations"] == n and calc.results["average"] == str(policy)
        assert energy == ev64.compute(Structure.from_atoms(atoms), policy)[0].energy
        assert abs(energy - e_plain) > 1e-6
    assert calc.evaluator is ev64
    # A second calculator on the same evaluator keeps its own policy.
    other = SymbreakCalculator(ev64, average="legendre:2")
    assert other.get_potential_energy(atoms.copy()) != atoms.get_potential_energy()
    assert calc.results["n_rotations"] == 36 and other.results["n_rotations"] == 18


def test_random_average_one_draw_per_calculation(ev64):
    atoms = small_water(4, seed=5)

    def energies(seed: int) -> list[float]:
        calc = SymbreakCalculator(ev64, average="random", seed=seed)
        atoms.calc = calc
        out = []
        for _ in range(3):
            calc.reset()  # same structure, new calculation
            calls = ev64.calls
            out.append(atoms.get_potential_energy())
            atoms.get_forces()
            atoms.get_stress()
            assert ev64.calls == calls + 1  # energy, forces and stress from one rotation
            assert (
                calc.results["n_rotations"] == 1
                and calc.results["average"] == f"random+seed={seed}"
            )
        return out

    first = energies(7)
    assert first == energies(7) and first != energies(8)
    plain = SymbreakCalculator(ev64).get_potential_energy(atoms)
    assert len({*first, plain}) == 4  # a new rotation every calculation, none the identity


def test_cell_relaxation_with_frechet_filter(ev64):
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    atoms = small_water(4, seed=6, triclinic=True)
    atoms.calc = SymbreakCalculator(ev64, average="lebedev:3")
    cell0, e0 = atoms.cell.array.copy(), atoms.get_potential_energy()
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    opt.run(fmax=1e-4, steps=6)
    assert opt.nsteps == 6
    assert atoms.get_potential_energy() < e0
    assert np.abs(atoms.cell.array - cell0).max() > 1e-4
    assert atoms.calc.results["n_rotations"] == 18


def test_langevin_nvt_and_berendsen_npt_run(ev64):
    from ase.md.langevin import Langevin
    from ase.md.nptberendsen import NPTBerendsen
    from ase.md.velocitydistribution import thermalize_momenta

    atoms = small_water(4, seed=7)
    atoms.calc = SymbreakCalculator(ev64, average="legendre:2")
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    md = Langevin(
        atoms, 0.25 * units.fs, temperature_K=300, friction=0.02, fixcm=False,
        rng=np.random.default_rng(1),
    )  # fmt: skip
    md.run(10)
    assert md.nsteps == 10 and np.isfinite(atoms.get_potential_energy())
    assert atoms.calc.results["n_rotations"] == 18
    volume = atoms.get_volume()
    npt = NPTBerendsen(
        atoms, 0.25 * units.fs, temperature_K=300, pressure_au=1e4 * units.bar,
        taut=10 * units.fs, taup=50 * units.fs, compressibility_au=4.57e-5 / units.bar,
    )  # fmt: skip
    npt.run(5)
    assert npt.nsteps == 5 and atoms.get_volume() != volume


def test_unknown_species_is_named(ev64):
    atoms = Atoms("OH2Na", positions=np.random.default_rng(0).uniform(0, 5, (4, 3)), pbc=False)
    atoms.calc = SymbreakCalculator(ev64, average="lebedev:3")
    with pytest.raises(ValueError, match=r"atom 3 is Na"):
        atoms.get_potential_energy()
