"""LAMMPS plugin (pair_style symbreak) with a metatomic model, against the Python evaluator.

The plugin takes a metatomic ``AtomisticModel`` file as metatomic writes it ("raw": it sets
the model in the wrapper template that the build scripts, symbreak.metatomic.template) and
the same model wrapped once by ``symbreak export MODEL.pt --output W.pt``, with the
metatomic and metatensor C++ libraries of the metatomic-torch wheel linked in (their
TorchScript classes, the model's extensions). The model is the raw-vector test model of
``tests/metatomic_models.py`` (not equivariant, float64, a full and a half neighbour list).
The reference is :class:`symbreak.evaluator.Evaluator` on the wrapped file, on the positions
and cell LAMMPS used; LAMMPS runs on one rank (mode images and mode ghosts) and on two ranks
(ghosts), every run bounded in time (see lammps_helpers.run_lammps).
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
import torch
from lammps_helpers import (
    assert_matches,
    differences,
    evaluate,
    reference,
    rel,
    run_lammps,
    water,
    water_triclinic,
    write_data,
)
from metatomic_models import save_model

from symbreak.export import reexport_model

#: The issue's bar for LAMMPS = Python with a metatomic model (float64, relative).
BAR = 1e-8


def _with_made_up_extension(source: Path, output: Path) -> Path:
    """A copy of a model file whose metatomic record names an extension that exists nowhere."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(output, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/extra/extensions"):
                data = json.dumps([{"name": "made_up_ext", "path": "/nowhere/libmade_up_ext.so"}])
            dst.writestr(item, data)
    return output


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """'raw': the metatomic test model as metatomic writes it (float64); 'wrapped': the same
    model as a symbreak contract file (symbreak export); 'no_extension' / 'raw_no_extension':
    the wrapped / raw file naming a TorchScript extension that exists nowhere; 'variant': a
    raw model whose only energy is a variant, 'energy/pbe'."""
    d = tmp_path_factory.mktemp("metatomic")
    raw = save_model(d / "raw.pt", species=(1, 8), dtype=torch.float64)
    wrapped = d / "wrapped.pt"
    reexport_model(raw, wrapped)
    variant = save_model(d / "variant.pt", species=(1, 8), output="energy/pbe")
    return {
        "raw": raw,
        "wrapped": wrapped,
        "no_extension": _with_made_up_extension(wrapped, d / "no_extension.pt"),
        "raw_no_extension": _with_made_up_extension(raw, d / "raw_no_extension.pt"),
        "variant": variant,
    }


AGREEMENT = [
    # pair_style average, evaluator policy, K
    ("average none", "none", 1),
    ("average lebedev:3+inv", "lebedev:3+inv", 36),
    ("average random+seed=3", "random+seed=3", 1),  # the first draw of seed 3 on every rank
]


@pytest.mark.parametrize("kind", ["raw", "wrapped"])
@pytest.mark.parametrize("options,policy,n_rot", AGREEMENT, ids=[a[1] for a in AGREEMENT])
def test_one_and_two_ranks_match_python(tmp_path, plugin, models, options, policy, n_rot, kind):
    """Triclinic water (192 atoms), float64: one rank (mode images, mode ghosts) and two ranks
    give the Python evaluator's energy, forces and virial to 1e-8 (relative), and its per-atom
    energies, torque and spreads (lammps_helpers.assert_matches, float64). Prints the
    differences. The raw file (set in the wrapper template) and the wrapped one agree."""
    model = models[kind]
    atoms = water_triclinic()
    runs = {
        "1 rank, images": evaluate(tmp_path / "a", plugin, atoms, f"{model} {options}"),
        "1 rank, ghosts": evaluate(tmp_path / "b", plugin, atoms, f"{model} {options} mode ghosts"),
        "2 ranks": evaluate(tmp_path / "c", plugin, atoms, f"{model} {options}", nprocs=2),
    }
    base = runs["1 rank, images"]
    ref = reference(models["wrapped"], policy, torch.float64, base)
    for name, res in runs.items():
        diff = differences(res, ref)
        print(
            f"{kind:>7} {policy:>14} {name:<15} "
            + " ".join(f"{k} {v:.1e}" for k, v in diff.items())
        )
        for key in ("energy", "forces", "virial", "atomic"):
            assert diff[key] < BAR, (name, key, diff)
        assert_matches(res, ref, "float64", n_rot)
        # the per-atom virial (from the file's edge gradients) adds up to the virial
        assert rel(res.virial_atoms, res.virial) < BAR, name
        assert rel(res.forces, base.forces) < BAR, name
    assert "pair_style symbreak: a metatomic model 'raw-vector test model'" in base.log
    assert "metatomic-torch 0.1.19" in base.log
    assert "reads the geometry only through its neighbour lists" in base.log
    assert f"average {policy} ({n_rot} rotations per step)" in base.log
    assert re.search(r"Nlocal: +96 ave", runs["2 ranks"].log)  # the atoms are split
    if n_rot > 1:
        assert base.rot_std > 1e-4  # the test model is not invariant: averaging is tested


def test_switch_averaging_keeps_the_model(tmp_path, plugin, models):
    """A new pair_style between runs changes the averaging of the loaded (cached) model."""
    data = write_data(water(), tmp_path / "system.data")
    script = f"""
plugin load {plugin}
units metal
atom_style atomic
read_data {data}
pair_style symbreak {models["wrapped"]}
pair_coeff * * O H
compute pr all pair symbreak
thermo_style custom step pe c_pr[1] c_pr[2]
run 0
pair_style symbreak {models["wrapped"]} average legendre:2+inv
pair_coeff * * O H
run 0
"""
    log = run_lammps(tmp_path, script).stdout
    assert "ERROR" not in log, log[-3000:]
    assert "pair_style symbreak: loaded model" in log
    assert "pair_style symbreak: cached model" in log
    assert "average legendre:2+inv (36 rotations per step)" in log


def _error_of(tmp_path: Path, plugin: Path, pair_style: str) -> str:
    data = write_data(water(), tmp_path / "system.data")
    script = f"""
plugin load {plugin}
units metal
atom_style atomic
read_data {data}
pair_style symbreak {pair_style}
pair_coeff * * O H
run 0
"""
    result = run_lammps(tmp_path, script)
    assert result.returncode != 0, result.stdout[-2000:]
    errors = [ln for ln in result.stdout.splitlines() if "ERROR" in ln]
    assert errors, result.stdout[-2000:]
    assert "Traceback" not in result.stdout and "TorchScript interpreter" not in result.stdout
    return errors[0]


def test_raw_file_without_an_energy_output_is_refused(tmp_path, plugin, models):
    """configure() of the template refuses the model at pair_style, naming its outputs."""
    error = _error_of(tmp_path, plugin, f"{models['variant']} average lebedev:3")
    assert f"'{models['variant']}': the model has no 'energy' output" in error, error
    assert "energy/pbe" in error, error


@pytest.mark.parametrize("kind", ["raw", "wrapped"])
@pytest.mark.parametrize("directory", [None, "/nowhere/extensions"], ids=["installed", "dir"])
def test_missing_extension_is_named(tmp_path, plugin, models, directory, kind):
    options = "" if directory is None else f" extensions {directory}"
    source = models["no_extension" if kind == "wrapped" else "raw_no_extension"]
    error = _error_of(tmp_path, plugin, f"{source}{options}")
    assert "made_up_ext" in error, error
    assert "could not be loaded" in error, error
    if directory is None:
        assert "extensions DIR" in error, error
    else:
        assert f"in the extensions directory '{directory}'" in error, error


def test_plugin_finds_metatomic_libraries_by_its_own_runpath(plugin):
    """The installed plugin names metatomic's and metatensor's libraries itself (RUNPATH
    relative to site-packages): lmp needs no LD_LIBRARY_PATH for them (run_lammps gives it
    only the MPI folder), and libmetatomic_torch's own RUNPATH misses libmetatensor_torch."""
    dynamic = plugin.read_bytes()
    for name in (b"libmetatomic_torch.so", b"libmetatensor_torch.so"):
        assert name in dynamic
    runpath = re.search(rb"\$ORIGIN/\.\./\.\./torch/lib[^\x00]*", dynamic)
    assert runpath, "no RUNPATH to torch/lib"
    site = plugin.parent.parent.parent  # site-packages/symbreak/lib/symbreakplugin.so
    folders = [
        Path(entry.replace("$ORIGIN", str(plugin.parent))).resolve()
        for entry in runpath.group().decode().split(":")
    ]
    assert all(f.is_dir() and site in f.parents for f in folders), folders
    for library in ("libtorch.so", "libmetatomic_torch.so", "libmetatensor_torch.so"):
        assert any((f / library).is_file() for f in folders), (library, folders)
