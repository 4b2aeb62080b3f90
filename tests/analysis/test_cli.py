"""``symbreak probe ...``: every analysis writes its PNG and JSON, on real i-PI output
and on small synthetic trajectories in i-PI's format."""

import argparse
import json

import numpy as np
import pytest

from symbreak.analysis.cli import ANALYSES, main, register

from .synthetic import IPI_RUN, liquid_like, write_ipi_xyz


@pytest.fixture(scope="module")
def liquid(tmp_path_factory):
    d = tmp_path_factory.mktemp("liquid")
    symbols, pos, cell = liquid_like(n_side=3, n_frames=40)
    return write_ipi_xyz(d / "liq.pos_0.xyz", symbols, pos, cell, steps=range(0, 400, 10))


def _run(argv, out, capsys):
    assert main(argv + ["--out", str(out)]) == 0
    name = argv[0]
    png, js = out / f"{name}.png", out / f"{name}.json"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert f"symbreak probe {name}" in printed
    return json.loads(js.read_text())


def test_register_adds_probe_with_every_analysis():
    parser = argparse.ArgumentParser(prog="symbreak")
    probe = register(parser.add_subparsers(dest="command"))
    choices = probe._subparsers._group_actions[0].choices
    assert sorted(choices) == sorted(ANALYSES)
    args = parser.parse_args(["probe", "rdf", "x.xyz", "--out", "d"])
    assert args.command == "probe" and args.analysis == "rdf" and callable(args.func)


def test_structure_analyses_on_a_synthetic_liquid(liquid, tmp_path, capsys):
    d = _run(["rdf", str(liquid), "--bins", "50", "--start", "2"], tmp_path, capsys)
    assert [r["pair"] for r in d["rdfs"]] == ["OO", "OH", "HH"]
    assert d["n_frames"] == 38 and d["inputs"]["start"] == 2
    oh = d["rdfs"][1]
    assert oh["coordination"][-1] > 2  # two intramolecular H within r_max
    d = _run(
        ["rdf", str(liquid), "--pairs", "OH", "--intermolecular", "--name", "rdf"], tmp_path, capsys
    )
    assert d["rdfs"][0]["coordination"][10] == pytest.approx(0.0)  # no H at < 0.7 Å
    d = _run(
        ["orientation", str(liquid), "--ncos", "4", "--nphi", "4", "--blocks", "5"],
        tmp_path,
        capsys,
    )
    assert d["n_molecules"] == 27 and d["units"] == "k_B T"
    assert d["chi2_per_bin"] < 5  # random orientations
    d = _run(["dipole-correlation", str(liquid), "--bins", "10"], tmp_path, capsys)
    assert len(d["C"]) == 10


def test_dynamics_analyses_on_a_synthetic_liquid(liquid, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["msd", str(liquid), "--out", str(tmp_path)])  # no timestep
    d = _run(["msd", str(liquid), "--timestep", "0.5", "--blocks", "2"], tmp_path, capsys)
    # frames every 10 steps of 0.5 fs = 5 fs; random walk σ = 0.05 Å per frame per axis
    # → D = σ² / (2 Δt) = 0.25 Å²/ps (the lattice-spacing COM offset is constant)
    assert d["D"] == pytest.approx(0.25, rel=0.5)
    assert d["fit_window_ps"][1] == pytest.approx(10 * 0.005)
    d = _run(["reorientation", str(liquid), "--timestep", "0.5", "--blocks", "2"], tmp_path, capsys)
    assert d["c1"][0] == pytest.approx(1.0) and abs(d["c1"][3]) < 0.2


def test_gas_phase_analyses_on_real_ipi_output(tmp_path, capsys):
    d = _run(
        [
            "angular-momentum",
            str(IPI_RUN / "sim.pos_0.xyz"),
            "--timestep",
            "0.5",
            "--velocities",
            str(IPI_RUN / "sim.vel_0.xyz"),
            "--forces",
            str(IPI_RUN / "sim.frc_0.xyz"),
            "--atoms",
            "0,1,2",
            "--blocks",
            "2",
        ],
        tmp_path,
        capsys,
    )
    assert d["angular_momentum"]["velocity_source"] == "velocities"
    assert d["torque"]["mean_abs_torque"] < 1e-4
    d = _run(
        ["drift", str(IPI_RUN / "sim.out"), "--molecules", "2", "--blocks", "3"], tmp_path, capsys
    )
    assert d["n_points"] == 13 and d["units"]["drift"] == "eV/molecule/ps"
    d = _run(
        [
            "components",
            str(IPI_RUN / "sim.out"),
            "--plain",
            "pot_component_raw(1)",
            "--averaged",
            "pot_component_raw(0)",
            "--molecules",
            "2",
            "--blocks",
            "2",
        ],
        tmp_path,
        capsys,
    )
    assert d["energy"]["mean"] > 0
    d = _run(
        [
            "spectrum",
            str(IPI_RUN / "sim.out"),
            "--column",
            "pot_component_raw(0)",
            "--minus",
            "pot_component_raw(1)",
            "--method",
            "periodogram",
            "--unit",
            "cm-1",
        ],
        tmp_path,
        capsys,
    )
    assert d["freq_unit"] == "cm-1" and d["series"].endswith("pot_component_raw(1)")
    assert d["psd_unit"] == "(eV)^2/cm-1"
    d = _run(["spectrum", str(IPI_RUN / "sim.out"), "--column", "temperature"], tmp_path, capsys)
    assert d["psd_unit"] == "(kelvin)^2/THz"  # temperatures are not converted to energies
    d = _run(
        [
            "spectrum",
            str(IPI_RUN / "sim.xstd_0"),
            "--column",
            "energy_rot_std",
            "--timestep",
            "0.5",
            "--name",
            "spectrum",
        ],
        tmp_path,
        capsys,
    )
    assert d["nyquist"] == pytest.approx(0.5 / 0.001)


def test_ice_cli(tmp_path, capsys):
    f = tmp_path / "e.json"
    f.write_text(
        json.dumps(
            {
                f"ih{i}": {
                    "n_molecules": 96,
                    "plain": -960.0 - i,
                    "averaged": -960.0 - i + 0.01 * (i % 2),
                }
                for i in range(5)
            }
        )
    )
    d = _run(["ice", str(f)], tmp_path, capsys)
    assert d["n_structures"] == 5 and d["rms_difference_rel_mean"] > 0
    assert np.isfinite(d["kendall_tau"])
