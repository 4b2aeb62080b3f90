"""metatomic models in symbreak (symbreak.metatomic), against independent references.

The references are metatomic's own engines: metatomic-ase's ``MetatomicCalculator`` (plain
values, and a direct average over rotations computed here) and ``SymmetrizedCalculator``
(its own grid), and i-PI's metatomic driver for the exported PET.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import export_tiny, small_water, strain_derivative, symbreak_cli, water_frame

mta = pytest.importorskip("metatomic.torch")
metatomic_ase = pytest.importorskip("metatomic_ase")

from metatomic_models import save_model  # noqa: E402

from symbreak.ase import SymbreakCalculator  # noqa: E402
from symbreak.evaluator import Evaluator, Structure  # noqa: E402
from symbreak.export import export_metatomic, load_model, reexport_model  # noqa: E402
from symbreak.metatomic import is_metatomic_file, is_wrapped_metatomic  # noqa: E402
from symbreak.metatomic.template import write_template  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Test model files: float64, float32, other units, system energies only."""
    folder = tmp_path_factory.mktemp("metatomic")
    return {
        "float64": save_model(folder / "f64.pt"),
        "float32": save_model(folder / "f32.pt", dtype=torch.float32),
        "units": save_model(folder / "nm.pt", length_unit="nanometer", energy_unit="kJ/mol"),
        "system": save_model(folder / "system.pt", per_atom=False),
    }


def frames():
    """A triclinic periodic box, a slab (periodic in x, y) and an isolated molecule group."""
    box = small_water(8, seed=1)
    slab = small_water(6, seed=2, triclinic=False)
    slab.pbc = (True, True, False)
    cluster = small_water(4, seed=3, triclinic=False)
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    return {"box": box, "slab": slab, "cluster": cluster}


def reference(path: Path, atoms):
    """Energy, forces, virial (None without full periodicity) and atomic energies of
    metatomic-ase's MetatomicCalculator."""
    atoms = atoms.copy()
    atoms.calc = metatomic_ase.MetatomicCalculator(str(path))
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    atomic = atoms.get_potential_energies()
    virial = None
    if atoms.pbc.all():
        virial = -atoms.get_stress(voigt=False) * atoms.get_volume()
    return energy, forces, virial, atomic


@pytest.mark.parametrize(("kind", "tol"), [("float64", 1e-8), ("float32", 1e-5), ("units", 1e-8)])
@pytest.mark.parametrize("name", ["box", "slab", "cluster"])
def test_plain_equals_metatomic_calculator(models, kind, tol, name):
    atoms = frames()[name]
    energy, forces, virial, atomic = reference(models[kind], atoms)
    result = Evaluator(models[kind]).compute(Structure.from_atoms(atoms))[0]
    assert abs(result.energy - energy) < tol * max(1.0, len(atoms) / 10)
    np.testing.assert_allclose(result.forces, forces, atol=tol)
    np.testing.assert_allclose(result.energies, atomic, atol=tol)
    if virial is not None:
        np.testing.assert_allclose(result.virial, 0.5 * (virial + virial.T), atol=tol * 10)
    calc_atoms = atoms.copy()
    calc_atoms.calc = SymbreakCalculator(str(models[kind]))
    assert abs(calc_atoms.get_potential_energy() - energy) < tol * max(1.0, len(atoms) / 10)
    np.testing.assert_allclose(calc_atoms.get_forces(), forces, atol=tol)
    if virial is not None:
        stress = -calc_atoms.get_stress(voigt=False) * atoms.get_volume()
        np.testing.assert_allclose(stress, virial, atol=tol * 10)


def test_system_energies_and_selected_atoms(models):
    """A model without per-atom energies, and selected atoms (LAMMPS's owned atoms): only
    the selected atoms' energies count, as the sum of MetatomicCalculator's atomic
    energies over them."""
    atoms = frames()["box"]
    energy, forces, _, atomic = reference(models["float64"], atoms)
    plain = Evaluator(models["system"]).compute(Structure.from_atoms(atoms))[0]
    assert abs(plain.energy - energy) < 1e-8
    np.testing.assert_allclose(plain.forces, forces, atol=1e-8)
    selected = np.zeros(len(atoms), dtype=bool)
    selected[::3] = True
    for kind in ("float64", "system"):
        ev = Evaluator(models[kind])
        graph = ev.graph(Structure.from_atoms(atoms))
        out = ev.module.compute(
            torch.from_numpy(atoms.numbers.astype(np.int64)),
            torch.from_numpy(atoms.positions),
            torch.from_numpy(atoms.cell.array).reshape(1, 3, 3),
            torch.zeros(len(atoms), dtype=torch.int64),
            torch.from_numpy(graph.centers.astype(np.int64)),
            torch.from_numpy(graph.neighbors.astype(np.int64)),
            torch.from_numpy(graph.shifts.astype(np.int64)),
            torch.from_numpy(graph.reverse.astype(np.int64)),
            torch.from_numpy(selected),
            "none",
            0,
        )
        assert abs(float(out["energy"][0]) - atomic[selected].sum()) < 1e-8


def rotated_reference(path: Path, atoms, rotations: np.ndarray, weights: np.ndarray):
    """Weighted average over rotations of MetatomicCalculator (forces back-rotated, virial
    R^T V R), and the per-rotation energies."""
    energies, forces, virials = [], [], []
    for rot in rotations:
        rotated = atoms.copy()
        rotated.positions = atoms.positions @ rot.T
        rotated.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
        e, f, v, _ = reference(path, rotated)
        energies.append(e)
        forces.append(f @ rot)
        virials.append(rot.T @ v @ rot)
    w = weights / weights.sum()
    energies, forces, virials = np.array(energies), np.array(forces), np.array(virials)
    return (
        w @ energies,
        np.einsum("k,kna->na", w, forces),
        np.einsum("k,kab->ab", w, virials),
        energies,
        forces,
    )


@pytest.mark.parametrize("policy", ["lebedev:3+inv", "legendre:2", "random+seed=3"])
def test_average_equals_direct_average(models, policy):
    atoms = frames()["box"]
    ev = Evaluator(models["float64"], rotation_batch=5)  # several chunks of rotations
    rotations, weights = ev.module.policy_rotations(policy, 0)
    result = ev.compute(Structure.from_atoms(atoms), policy=policy)[0]
    energy, forces, virial, per_rotation, per_rotation_forces = rotated_reference(
        models["float64"], atoms, rotations.numpy(), weights.numpy()
    )
    assert abs(result.energy - energy) < 1e-8
    np.testing.assert_allclose(result.forces, forces, atol=1e-8)
    np.testing.assert_allclose(result.virial, 0.5 * (virial + virial.T), atol=1e-7)
    w = weights.numpy()
    spread = np.sqrt(w @ (per_rotation - energy) ** 2)
    assert abs(result.diagnostics["energy_rot_std"] - spread) < 1e-8
    spread_atoms = np.sqrt(
        np.maximum(np.einsum("k,kn->n", w, (per_rotation_forces**2).sum(2)) - (forces**2).sum(1), 0)
    )
    np.testing.assert_allclose(result.diagnostics["forces_rot_std_atoms"], spread_atoms, atol=1e-7)


def test_diagnostics_of_a_non_equivariant_model(models):
    atoms = frames()["box"]
    calc = SymbreakCalculator(str(models["float64"]), average="lebedev:3", inversion=True)
    atoms.calc = calc
    atoms.get_forces()
    assert calc.results["energy_rot_std"] > 1e-3
    assert calc.results["forces_rot_std"] > 1e-3
    assert np.linalg.norm(calc.results["torque"]) > 1e-4
    # The torque of an isolated group is Σ x × F of its (averaged) forces.
    cluster = frames()["cluster"]
    result = Evaluator(models["float64"], "lebedev:3+inv").compute(Structure.from_atoms(cluster))
    torque = np.cross(cluster.positions, result[0].forces).sum(0)
    assert np.linalg.norm(torque) > 1e-3
    np.testing.assert_allclose(result[0].diagnostics["torque"], torque, atol=1e-9)
    calc.set_average("none")  # switched at run time: no spread
    atoms.rattle(1e-3, seed=5)
    atoms.get_forces()
    assert calc.results["energy_rot_std"] == 0.0


def test_averaged_forces_and_virial_are_gradients(models):
    """Forces = -∇E and virial = -∂E/∂ε by central differences (float64, lebedev:3+inv)."""
    atoms = frames()["box"]
    ev = Evaluator(models["float64"], policy="lebedev:3+inv")

    def energy(a) -> float:
        return ev.compute(Structure.from_atoms(a), gradients=False)[0].energy

    result = ev.compute(Structure.from_atoms(atoms))[0]
    h = 1e-5
    for atom, axis in [(0, 0), (5, 1), (17, 2)]:
        moved = [atoms.copy(), atoms.copy()]
        moved[0].positions[atom, axis] += h
        moved[1].positions[atom, axis] -= h
        numeric = -(energy(moved[0]) - energy(moved[1])) / (2 * h)
        assert abs(result.forces[atom, axis] - numeric) < 1e-6
    np.testing.assert_allclose(result.virial, strain_derivative(energy, atoms), atol=1e-5)


def test_converged_average_agrees_with_symmetrized_calculator(models):
    """A large grid of symbreak's and metatomic-ase's SymmetrizedCalculator (its own grid)
    agree within a small fraction of the spread both report; with SymmetrizedCalculator's
    own rotations, symbreak's contract gives its numbers exactly."""
    atoms = frames()["cluster"]
    base = metatomic_ase.MetatomicCalculator(str(models["float64"]))
    sym = metatomic_ase.SymmetrizedCalculator(
        base, l_max=9, include_inversion=True, store_rotational_std=True
    )
    atoms.calc = sym
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    spread = sym.results["energy_rot_std"]
    ev = Evaluator(models["float64"])
    ours = ev.compute(Structure.from_atoms(atoms), policy="lebedev:11+inv")[0]
    assert spread > 0.1 and ours.diagnostics["energy_rot_std"] > 0.1
    assert abs(ours.diagnostics["energy_rot_std"] - spread) < 0.02 * spread
    assert abs(ours.energy - energy) < 0.01 * spread
    assert np.abs(ours.forces - forces).max() < 0.01 * ours.diagnostics["forces_rot_std"] * 10
    # The same rotations through the contract's accumulate: the same numbers.
    rotations = torch.from_numpy(np.asarray(sym.quadrature_rotations, dtype=np.float64))
    weights = torch.from_numpy(np.asarray(sym.quadrature_weights, dtype=np.float64))
    weights = weights / weights.sum()
    same = _contract_average(ev, atoms, rotations, weights)
    assert abs(float(same["energy"][0]) - energy) < 1e-8
    np.testing.assert_allclose(same["forces"].numpy(), forces, atol=1e-8)
    assert abs(float(same["energy_rot_std"][0]) - spread) < 1e-8


def _graph_inputs(ev: Evaluator, atoms) -> list[torch.Tensor]:
    """The contract's graph inputs for one structure (numbers ... selected)."""
    graph = ev.graph(Structure.from_atoms(atoms))
    return [
        torch.from_numpy(atoms.numbers.astype(np.int64)),
        torch.from_numpy(atoms.positions),
        torch.from_numpy(np.asarray(atoms.cell.array)).reshape(1, 3, 3),
        torch.zeros(len(atoms), dtype=torch.int64),
        torch.from_numpy(graph.centers.astype(np.int64)),
        torch.from_numpy(graph.neighbors.astype(np.int64)),
        torch.from_numpy(graph.shifts.astype(np.int64)),
        torch.from_numpy(graph.reverse.astype(np.int64)),
        torch.ones(len(atoms), dtype=torch.bool),
    ]


def _contract_average(ev: Evaluator, atoms, rotations, weights) -> dict:
    """The contract's accumulate + finalize over given rotations (one structure)."""
    inputs = _graph_inputs(ev, atoms)
    raw = ev.module.accumulate(*inputs, rotations, weights, True, 0)
    return ev.module.finalize(raw, inputs[3], inputs[8])


def test_several_structures_in_one_call(models):
    """Structures batched into one call (i-PI's beads) give their own values."""
    structures = [Structure.from_atoms(a) for a in frames().values()]
    ev = Evaluator(models["float64"], policy="lebedev:3")
    together = ev.compute(structures)
    for structure, result in zip(structures, together, strict=True):
        alone = ev.compute(structure)[0]
        assert abs(result.energy - alone.energy) < 1e-10
        np.testing.assert_allclose(result.forces, alone.forces, atol=1e-10)


def test_loading_detects_metatomic_files(models, tmp_path):
    loaded = load_model(models["units"])
    assert is_metatomic_file(models["units"])
    assert not is_metatomic_file(loaded.path.parent / "nothing.pt")
    meta = loaded.metadata
    assert meta.species == [1, 8]
    assert meta.cutoff == pytest.approx(3.0)  # Å, from the model's 0.3 nm
    assert meta.receptive_field == pytest.approx(3.0)
    assert meta.config["format"] == "metatomic"
    assert meta.config["neighbor_lists"][1]["full_list"] is False
    # A contract file around the metatomic model (what LAMMPS loads) gives the same numbers.
    wrapped = tmp_path / "wrapped.pt"
    reexport_model(models["float64"], wrapped)
    atoms = frames()["box"]
    a = Evaluator(models["float64"], "lebedev:3").compute(Structure.from_atoms(atoms))[0]
    b = Evaluator(wrapped, "lebedev:3").compute(Structure.from_atoms(atoms))[0]
    assert a.energy == b.energy
    np.testing.assert_array_equal(a.forces, b.forces)
    # A wrapped file is written again around the same model (into itself too), the
    # metatomic record it carries kept.
    again = tmp_path / "again.pt"
    reexport_model(wrapped, again)
    reexport_model(again, again)
    assert is_wrapped_metatomic(again) and not is_metatomic_file(again)
    c = Evaluator(again, "lebedev:3").compute(Structure.from_atoms(atoms))[0]
    assert c.energy == a.energy
    np.testing.assert_array_equal(c.forces, a.forces)
    with pytest.raises(ValueError, match="another file"):
        reexport_model(models["float64"], models["float64"])  # would overwrite the source


def test_template_takes_the_model_after_scripting(models, tmp_path):
    """The wrapper scripted around a placeholder (what the LAMMPS plugin loads) becomes, with
    the model set and configure() called, the wrapper scripted around the model."""
    template = torch.jit.load(str(write_template(tmp_path / "template.pt")))
    template._c.setattr("model", torch.jit.load(str(models["units"]))._c)
    template.configure("energy")
    direct = load_model(models["units"]).module
    for name in ("species", "masses", "cutoff", "receptive_field", "nl_cutoffs", "nl_full"):
        assert getattr(template, name) == getattr(direct, name), name
    assert template.per_atom == direct.per_atom and template.model_dtype == direct.model_dtype
    assert torch.equal(template.species_index, direct.species_index)
    inputs = _graph_inputs(Evaluator(models["units"]), frames()["box"])
    a = template.compute(*inputs, "lebedev:3", 0, True, 0)
    b = direct.compute(*inputs, "lebedev:3", 0, True, 0)
    for key in ("energy", "forces", "virial", "energy_rot_std"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    with pytest.raises(Exception, match="has no 'energy/pbe' output"):
        template.configure("energy/pbe")


def test_clear_errors(models, tmp_path):
    # A model that needs an extension that is nowhere to be found.
    broken = tmp_path / "needs-extension.pt"
    with zipfile.ZipFile(models["float64"]) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/extra/extensions"):
                data = json.dumps([{"name": "made_up_ext", "path": "/nowhere/libmade.so"}])
            dst.writestr(item, data)
    with pytest.raises(ValueError, match=r"made_up_ext.*--extensions|--extensions.*made_up"):
        load_model(broken)
    # A model that needs an input the engines do not give, and one without an energy.
    needs = save_model(tmp_path / "needs-masses.pt", needs_masses=True)
    with pytest.raises(ValueError, match=r"needs-masses.pt': the model needs inputs .*mass"):
        load_model(needs)
    variant = save_model(tmp_path / "variant.pt", output="energy/pbe")
    with pytest.raises(ValueError, match=r"has no 'energy' output \(it has \['energy/pbe'\]\)"):
        load_model(variant)
    ev = Evaluator(models["float64"])
    atoms = frames()["box"]
    atoms.numbers[0] = 6
    with pytest.raises(Exception, match="Z=6"):
        ev.compute(Structure.from_atoms(atoms))


def test_symbreak_pet_exported_as_metatomic(tmp_path):
    """A symbreak PET written as a metatomic model: MetatomicCalculator and
    SymmetrizedCalculator give symbreak's own numbers (float64), and symbreak loads it
    back."""
    source = export_tiny(tmp_path / "tiny.pt")
    target = export_metatomic(source, tmp_path / "tiny-metatomic.pt")
    assert is_metatomic_file(target)
    metadata = mta.read_model_metadata(str(target))
    assert any("Langer" in r for r in metadata.references["architecture"])
    assert any("Cheng" in r for r in metadata.references["model"])
    atoms = small_water(8, seed=4)
    ours = Evaluator(source, dtype=torch.float64)
    plain = ours.compute(Structure.from_atoms(atoms))[0]
    energy, forces, virial, atomic = reference(target, atoms)
    assert abs(plain.energy - energy) < 1e-8
    np.testing.assert_allclose(plain.forces, forces, atol=1e-8)
    np.testing.assert_allclose(plain.energies, atomic, atol=1e-8)
    np.testing.assert_allclose(plain.virial, virial, atol=1e-7)
    base = metatomic_ase.MetatomicCalculator(str(target))
    sym = metatomic_ase.SymmetrizedCalculator(base, l_max=2, include_inversion=True)
    atoms.calc = sym
    rotations = torch.from_numpy(np.asarray(sym.quadrature_rotations, dtype=np.float64))
    weights = torch.from_numpy(np.asarray(sym.quadrature_weights, dtype=np.float64))
    same = _contract_average(ours, atoms, rotations, weights / weights.sum())
    assert abs(float(same["energy"][0]) - atoms.get_potential_energy()) < 1e-8
    np.testing.assert_allclose(same["forces"].numpy(), atoms.get_forces(), atol=1e-8)
    back = Evaluator(target).compute(Structure.from_atoms(atoms))[0]
    assert abs(back.energy - plain.energy) < 1e-8


def test_export_cli(tmp_path):
    source = export_tiny(tmp_path / "tiny.pt")
    out = tmp_path / "cli-metatomic.pt"
    run = symbreak_cli("export", str(source), "--format", "metatomic", "--output", str(out))
    assert run.returncode == 0, run.stderr
    assert is_metatomic_file(out)


@pytest.mark.timeout(180)
def test_ipi_metatomic_driver_runs_the_exported_pet(tmp_path):
    """i-PI's own metatomic driver (i-pi-py_driver -m metatomic) on the exported PET,
    behind ASE's i-PI socket server: symbreak's energies and forces."""
    driver = shutil.which("i-pi-py_driver") or str(Path(sys.executable).parent / "i-pi-py_driver")
    if not Path(driver).exists():
        pytest.skip("i-pi-py_driver is not installed")
    from ase.calculators.socketio import SocketIOCalculator

    source = export_tiny(tmp_path / "tiny.pt")
    target = export_metatomic(source, tmp_path / "tiny-metatomic.pt")
    atoms = water_frame(0)[:48]
    atoms.set_cell(np.diag([7.5, 7.8, 8.1]))
    atoms.wrap()
    template = tmp_path / "template.xyz"
    atoms.write(template)
    name = f"symbreak-mta-{tmp_path.name}"[:80]
    command = [driver, "-u", "-a", name, "-m", "metatomic"]
    command += ["-o", f"template={template},model={target}"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with SocketIOCalculator(unixsocket=name, timeout=120) as calc:  # listens at once
            client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                atoms.calc = calc
                energy = atoms.get_potential_energy()
                forces = atoms.get_forces()
            finally:
                calc.close()
                try:
                    client.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    client.kill()
                    client.wait(timeout=10)
    # The wire carries atomic units, converted with i-PI's constants by the driver and with
    # ASE's (another CODATA) by the server: undo the difference (1e-7 relative in energy).
    from ase import units
    from ipi.utils.units import unit_to_internal

    energy = energy / (unit_to_internal("energy", "electronvolt", 1.0) * units.Hartree)
    forces = forces / (unit_to_internal("force", "ev/ang", 1.0) * units.Hartree / units.Bohr)
    # ... and the driver sees positions and cell scaled by the ratio of the two Bohrs.
    scaled = atoms.copy()
    scaled.set_cell(atoms.cell.array / (units.Bohr * unit_to_internal("length", "angstrom", 1.0)))
    scaled.positions = atoms.positions / (units.Bohr * unit_to_internal("length", "angstrom", 1.0))
    plain = Evaluator(source, dtype=torch.float64).compute(Structure.from_atoms(scaled))[0]
    assert abs(energy - plain.energy) < 1e-8
    np.testing.assert_allclose(forces, plain.forces, atol=1e-8)
