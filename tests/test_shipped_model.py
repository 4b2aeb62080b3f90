"""The shipped model `water-revpbe0d3`: its metadata tell the truth, and it is a trained,
slightly non-equivariant model (checked against the DFT labels of its own test frames)."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from helpers import DATA
from symbreak.evaluator import Evaluator, Structure
from symbreak.export import load_model
from symbreak.training_data import file_fingerprint

DATA_FILE = DATA / "water_revpbe0d3_160.xyz"


@pytest.fixture(scope="module")
def shipped():
    return load_model("water-revpbe0d3")


@pytest.fixture(scope="module")
def evaluator(shipped):
    return Evaluator(shipped)


@pytest.fixture(scope="module")
def test_frames(shipped):
    """Three of the model's held-out frames, with their DFT labels."""
    indices = shipped.metadata.training["split"]["test"][:3]
    return [ase.io.read(DATA_FILE, k) for k in indices]


def test_top_level_load_model_by_name_and_path(shipped):
    """``symbreak.load_model`` (lazy: plain ``import symbreak`` does not import torch) loads
    the shipped model by name and by path, and refuses an unknown name by naming it."""
    import symbreak

    by_name = symbreak.load_model("water-revpbe0d3")
    assert by_name.metadata.training["data_sha256"] == shipped.metadata.training["data_sha256"]
    by_path = symbreak.load_model(shipped.path)
    assert by_path.metadata.config == shipped.metadata.config
    with pytest.raises(Exception, match="no-such-model"):
        symbreak.load_model("no-such-model")


def test_metadata_names_the_data_and_the_architecture(shipped):
    meta = shipped.metadata
    assert meta.species == [1, 8]
    assert meta.units == {"energy": "eV", "length": "angstrom"}
    assert meta.receptive_field == pytest.approx(meta.config["n_mp_layers"] * meta.cutoff)
    training = meta.training
    assert training["data_sha256"] == file_fingerprint(DATA_FILE)  # the copy in data/
    assert training["augment"] is True
    split = training["split"]
    assert not set(split["test"]) & (set(split["train"]) | set(split["val"]))
    n_parameters = sum(p.numel() for p in shipped.module.parameters())
    assert training["parameters"] == n_parameters


def test_recorded_test_errors_are_reproduced(evaluator, shipped, test_frames):
    """Errors against DFT on three test frames agree with the metrics stored in the file
    (within the scatter between frames)."""
    recorded = shipped.metadata.training["metrics"]["test"]
    f_err, e_err = [], []
    for atoms in test_frames:
        result = evaluator(atoms)
        f_err.append(np.abs(result.forces - atoms.get_forces()).ravel())
        e_err.append(abs(result.energy - atoms.get_potential_energy()) / len(atoms))
    force_mae = 1e3 * np.concatenate(f_err).mean()
    assert 0.6 * recorded["force_mae_meV_A"] < force_mae < 1.5 * recorded["force_mae_meV_A"]
    assert 1e3 * max(e_err) < 5 * recorded["energy_mae_meV_atom"]


def test_rotated_input_is_different_but_close(evaluator, shipped, test_frames):
    """The model is not equivariant (rotating the input changes the energy), but it learnt
    the symmetry to well within its own error against DFT."""
    recorded = shipped.metadata.training["metrics"]["test"]
    atoms = test_frames[0]
    plain = evaluator(atoms)
    rot = Rotation.from_euler("zyz", [0.7, 1.9, -2.3]).as_matrix()
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    rotated.positions = atoms.positions @ rot.T
    turned = evaluator.compute(Structure.from_atoms(rotated))[0]
    d_energy = abs(turned.energy - plain.energy) / len(atoms)  # eV/atom
    d_forces = np.abs(turned.forces - plain.forces @ rot.T).mean()  # eV/Å
    assert d_energy > 1e-7 and d_forces > 1e-5  # float32 noise is ~1e-8 eV/atom
    assert 1e3 * d_energy < recorded["energy_mae_meV_atom"]
    assert 1e3 * d_forces < 0.5 * recorded["force_mae_meV_A"]


def _water(r1: float, r2: float = 0.97, angle: float = 104.5):
    from ase import Atoms

    th = np.radians(angle)
    return Atoms("OH2", [[0, 0, 0], [r1, 0, 0], [r2 * np.cos(th), r2 * np.sin(th), 0]])


def test_isolated_molecule_has_one_oh_well(shipped):
    """Stretching one O–H bond of an isolated molecule: one minimum near the real bond length,
    with a curvature near the real stretch's (~48 eV/Å² from 3700 cm⁻¹). The sitting-5 model
    fails this (a double well, minima at 0.86 and 1.02 Å) and heated up in gas-phase NVE over
    picoseconds (`symbreak reproduce`, experiment 1; a 200 fs run does not show it)."""
    import torch

    from symbreak.ase import SymbreakCalculator

    calc = SymbreakCalculator(shipped, dtype=torch.float64)
    radii = np.arange(0.80, 1.301, 0.02)
    energies = []
    for r in radii:
        atoms = _water(r)
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
    e = np.array(energies)
    minima = [radii[k] for k in range(1, len(e) - 1) if e[k] < e[k - 1] and e[k] < e[k + 1]]
    assert len(minima) == 1 and 0.93 <= minima[0] <= 1.00, minima
    k = int(np.argmin(e))
    curvature = (e[k + 1] - 2 * e[k] + e[k - 1]) / 0.02**2  # eV/Å²
    assert 25 < curvature < 100
