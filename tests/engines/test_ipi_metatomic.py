"""metatomic models served to the real i-PI 3.3.1 by ``symbreak run``, against metatomic-ase.

- classical NVT: the shipped example input ``ipi_inputs/metatomic_water64`` with the small
  metatrain PET of the repository (float32), averaged over ``lebedev:3`` from the input's
  ``<parameters>``;
- 8-bead path-integral MD (``ipi_inputs/pimd_water64``, all beads in one request) with the
  raw-vector test model (float64), averaged over ``lebedev:3+inv``.

The reference for i-PI's step-0 potential (every bead at the input's structure) is
metatomic-ase's ``MetatomicCalculator``, averaged directly over the grid's rotations
here. Each run is bounded in time and leaves no process or socket behind
(``assert_clean``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ipi.utils.units import unit_to_internal
from ipi_helpers import REPO, read_extras, read_properties
from test_launcher import assert_clean, finished, start_run

from symbreak import exit_codes
from symbreak.rotations import grid

metatomic_ase = pytest.importorskip("metatomic_ase")

from metatomic_models import save_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

INPUTS = REPO / "ipi_inputs"
METATRAIN_PET = REPO / "tests" / "data" / "metatrain-pet-water.pt"


# i-PI reads a mode='ase' file with ASE's Bohr but speaks Å with its own factor: the
# structure the clients receive is the file's scaled by this (1 + 1.4e-8).
ASE_FILE_SCALE = unit_to_internal("length", "ase", 1.0) / unit_to_internal(
    "length", "angstrom", 1.0
)


def as_ipi_reads(path: Path):
    """The structure of an i-PI input's mode='ase' file as the clients receive it."""
    atoms = ase.io.read(path)
    atoms.set_cell(atoms.cell.array * ASE_FILE_SCALE, scale_atoms=True)
    return atoms


def metatomic_energy(model: Path, atoms, rotations: np.ndarray | None = None, weights=None):
    """MetatomicCalculator's energy (eV) of ``atoms``, or its weighted average over the
    rotated copies R x, R h (rotations [K, 3, 3]), as symbreak adds it: the per-atom
    energies summed in float64 (a float32 model's own total differs from that sum by
    0.05 eV for the metatrain PET on 192 atoms)."""
    calc = metatomic_ase.MetatomicCalculator(str(model))
    if rotations is None:
        rotations, weights = np.eye(3)[None], np.ones(1)
    energies = []
    for rot in rotations:
        rotated = atoms.copy()
        rotated.positions = atoms.positions @ rot.T
        rotated.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
        rotated.calc = calc
        energies.append(rotated.get_potential_energies().astype(np.float64).sum())
    return float(np.asarray(weights) @ np.array(energies) / np.sum(weights))


def diagnostics(run_dir: Path) -> dict[int, tuple[str, int]]:
    """(averaging, rotations) per step, from the inputs' diag trajectory: one block per
    step with the keys 'average,n_rotations,...' (the policy's text on its own line, then
    one row of numbers starting with the rotation count)."""
    (path,) = [p for p in run_dir.glob("sim.diag*") if p.is_file()]
    out = {}
    for step, body in read_extras(path):
        average, numbers = body.split("\n", 1)
        out[step] = (average.strip(), int(float(numbers.split()[0])))
    return out


def test_example_input_runs_the_metatrain_pet_averaged(tmp_path):
    """ipi_inputs/metatomic_water64 with the repository's metatrain PET, 2 steps: the run
    completes cleanly, every step is averaged over lebedev:3's 18 rotations, and i-PI's
    step-0 potential is MetatomicCalculator's average over the same rotations (float32
    model: 1e-7 relative of a total of -3e4 eV; plain differs by 1e-5)."""
    folder = INPUTS / "metatomic_water64"
    proc, run_dir = start_run(tmp_path, folder / "input.xml", METATRAIN_PET, "--steps", "2")
    rc, out = finished(proc, timeout=240)
    assert rc == exit_codes.OK, out[-4000:]
    assert_clean(run_dir, out)
    potential = read_properties(run_dir / "sim.out")["potential{electronvolt}"]
    assert len(potential) == 3  # steps 0, 1, 2
    assert diagnostics(run_dir) == {s: ("lebedev:3", 18) for s in range(3)}
    atoms = as_ipi_reads(folder / "water_64h2o.xyz")
    rotations, weights = grid("lebedev:3")
    reference = metatomic_energy(METATRAIN_PET, atoms, rotations, weights)
    plain = metatomic_energy(METATRAIN_PET, atoms)
    print(f"i-PI {potential[0]:.6f} eV, averaged reference {reference:.6f}, plain {plain:.6f}")
    assert potential[0] == pytest.approx(reference, rel=1e-7)


def test_pimd_with_a_metatomic_model_averaged(tmp_path):
    """8-bead PIMD with the float64 raw-vector metatomic model averaged over lebedev:3+inv
    (the input's <parameters>), 3 steps: the step-0 potential (all beads at the input's
    structure) is the direct average of MetatomicCalculator over the same 36 rotations to
    5e-9 relative (i-PI prints 9 digits; plain differs), the beads go to the model in one
    request, and every step reports 36 rotations. (Live switching goes through the same
    control channel for every model: tests/engines/test_control.py, test_launcher.py.)"""
    model = save_model(tmp_path / "raw.pt", species=(1, 8), dtype=torch.float64)
    folder = tmp_path / "pimd"
    shutil.copytree(INPUTS / "pimd_water64", folder)
    xml = (folder / "input.xml").read_text()
    xml = re.sub(r"stride='(10|40)'", "stride='1'", xml)
    xml = xml.replace("{average: none}", "{average: lebedev:3, inversion: true}")
    (folder / "input.xml").write_text(xml)
    proc, run_dir = start_run(tmp_path, folder / "input.xml", model, "--steps", "3")
    rc, out = finished(proc, timeout=240)
    assert rc == exit_codes.OK, out[-4000:]
    assert_clean(run_dir, out)
    log = (run_dir / "client_symbreak_0.log").read_text()
    assert "batch size 8" in log
    potential = read_properties(run_dir / "sim.out")["potential{electronvolt}"]
    atoms = as_ipi_reads(folder / "water_64h2o.xyz")
    rotations, weights = grid("lebedev:3", inversion=True)
    reference = metatomic_energy(model, atoms, rotations, weights)
    plain = metatomic_energy(model, atoms)
    print(f"i-PI {potential[0]:.10f} eV, averaged {reference:.10f}, plain {plain:.10f}")
    assert abs(plain - reference) > 1e-6 * abs(reference)  # averaging is what is tested
    assert potential[0] == pytest.approx(reference, rel=5e-9)
    assert diagnostics(run_dir) == {s: ("lebedev:3+inv", 36) for s in range(4)}
