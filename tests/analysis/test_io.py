"""Readers, tested on real i-PI 3.3 output (tests/analysis/data/ipi_run, made by
make_ipi_fixture.py) and on files written by i-PI's own writer."""

import warnings

import numpy as np
import pytest

from symbreak.analysis.io import (
    abc_to_cell,
    is_ipi_xyz,
    load_trajectory,
    parse_ipi_comment,
    read_ase_trajectory,
    read_extras,
    read_ipi_xyz,
    read_properties,
)
from symbreak.analysis.units import EV_IN_AMU_A2_PER_PS2

from .synthetic import IPI_RUN, write_ipi_xyz


def test_properties_columns_units_and_lookup():
    p = read_properties(IPI_RUN / "sim.out")
    assert p.names[:3] == ["step", "time", "conserved"]
    assert p.units["time"] == "picosecond" and p.units["conserved"] == "electronvolt"
    assert p.units["step"] is None
    assert len(p) == 13
    np.testing.assert_allclose(p["step"], np.arange(13))
    np.testing.assert_allclose(p.time_ps(), 0.0005 * np.arange(13), atol=1e-12)
    # names with arguments, spaces, index= and units all resolve
    a = p["pot_component_raw(0)"]
    np.testing.assert_array_equal(p["pot_component_raw( index=0 ){electronvolt}"], a)
    with pytest.raises(KeyError, match="ambiguous"):
        p["pot_component_raw"]
    with pytest.raises(KeyError):
        p["nonexistent"]
    # MTS weights [1,0] (avg) and [-1,1] (plain) sum to the averaged potential
    np.testing.assert_allclose(p["potential"], a, rtol=1e-7)
    # conversion: eV column asked in eV is unchanged; the conserved quantity is conserved
    e = p.get("conserved", "energy")
    np.testing.assert_allclose(e, p["conserved"], rtol=1e-6)
    assert np.ptp(e) < 0.01 * np.ptp(p["kinetic_md"])


def test_properties_handmade_vector_columns_restart_and_truncation(tmp_path):
    f = tmp_path / "x.out"
    f.write_text(
        "### identification\n"
        "# column   1     --> step : The current simulation time step.\n"
        "# cols.  2-4     --> forces_com{ev/ang} : a vector\n"
        "# column   5     --> potential : no unit\n"
        "  0.0 1.0 2.0 3.0 -1.0\n"
        "  1.0 1.5 2.5 3.5 -2.0\n"
        "# column   1     --> step : The current simulation time step.\n"
        "  2.0 1.5 2.5 3.5 -2.5\n"
        "  3.0 1.5 2.5\n"
    )
    with pytest.warns(UserWarning, match="dropped 1"):
        p = read_properties(f)
    assert p["forces_com"].shape == (3, 3)
    assert p.units["forces_com"] == "ev/ang"
    # no unit label: i-PI atomic units, converted on request
    np.testing.assert_allclose(p.get("potential", "energy")[0], -27.2114, rtol=1e-4)
    with pytest.raises(KeyError, match="timestep"):
        p.time_ps()
    np.testing.assert_allclose(p.time_ps(timestep_fs=0.5), [0, 5e-4, 1e-3])


def test_ipi_xyz_positions_cells_steps_and_units():
    pos = read_ipi_xyz(IPI_RUN / "sim.pos_0.xyz")
    assert pos.values.shape == (7, 6, 3)
    assert list(pos.symbols) == ["O", "H", "H", "O", "H", "H"]
    np.testing.assert_array_equal(pos.steps, np.arange(0, 13, 2))
    np.testing.assert_allclose(pos.cells[0], abc_to_cell(9.0, 8.5, 10.0, 90, 95, 80), atol=1e-5)
    np.testing.assert_allclose(pos.values[0, 3], [4.2, 4.1, 4.9])
    assert pos.pbc.all()
    # velocities and cells written in atomic units come back in Å/ps and Å
    vel = read_ipi_xyz(IPI_RUN / "sim.vel_0.xyz")
    assert vel.unit == "angstrom/ps" and vel.source_unit == "atomic_unit"
    np.testing.assert_allclose(vel.cells, pos.cells, atol=2e-5)
    # kinetic energy from the velocities = i-PI's kinetic_md at the same steps
    p = read_properties(IPI_RUN / "sim.out")
    m = load_trajectory(IPI_RUN / "sim.pos_0.xyz").masses
    ke = 0.5 * np.einsum("n,fni,fni->f", m, vel.values, vel.values) / EV_IN_AMU_A2_PER_PS2
    np.testing.assert_allclose(ke, p["kinetic_md"][::2], rtol=2e-4)
    frc = read_ipi_xyz(IPI_RUN / "sim.frc_0.xyz")
    assert frc.unit == "ev/ang" and frc.source_unit == "ev/ang"
    # intramolecular forces: zero net force per molecule
    np.testing.assert_allclose(frc.values.reshape(7, 2, 3, 3).sum(axis=2), 0, atol=5e-5)


def test_ipi_xyz_frame_selection_and_truncated_file(tmp_path):
    full = read_ipi_xyz(IPI_RUN / "sim.pos_0.xyz")
    sel = read_ipi_xyz(IPI_RUN / "sim.pos_0.xyz", start=1, stop=6, stride=2, chunk_frames=2)
    np.testing.assert_array_equal(sel.steps, [2, 6, 10])
    np.testing.assert_array_equal(sel.values, full.values[1:6:2])
    lines = (IPI_RUN / "sim.pos_0.xyz").read_text().splitlines(keepends=True)
    (tmp_path / "t.xyz").write_text("".join(lines[: 8 * 3 + 4]))  # 3 frames + 4 lines
    with pytest.warns(UserWarning, match="incomplete"):
        t = read_ipi_xyz(tmp_path / "t.xyz")
    assert t.values.shape[0] == 3


def test_ipi_writer_roundtrip_triclinic(tmp_path):
    """Files written by i-PI's own print_file for a triclinic cell parse back to the
    same cell (rows) and positions, in Å and in atomic units."""
    rng = np.random.default_rng(0)
    cell = abc_to_cell(7.0, 8.0, 9.0, 80.0, 100.0, 70.0)
    x = rng.uniform(-3, 10, size=(3, 5, 3))
    for units in ("angstrom", "atomic_unit"):
        f = write_ipi_xyz(
            tmp_path / f"{units}.xyz",
            list("OHHOH"),
            x if units == "angstrom" else x / 0.5291772108,
            cell,
            steps=[10, 20, 30],
            units=units,
            cell_units=units,
        )
        assert is_ipi_xyz(f)
        fr = read_ipi_xyz(f)
        np.testing.assert_allclose(fr.cells[1], cell, atol=5e-5)
        np.testing.assert_allclose(fr.values, x, rtol=2e-5, atol=2e-5)
        assert list(fr.steps) == [10, 20, 30]


def test_comment_line_cell_variants():
    h_cols = np.array([[5.0, 1.0, 0.5], [0.0, 6.0, 0.2], [0.0, 0.0, 7.0]])
    c = parse_ipi_comment("# CELL(H): " + " ".join(map(str, h_cols.ravel())) + " Step: 4")
    np.testing.assert_allclose(c.cell, h_cols.T)
    assert c.step == 4 and c.quantity is None
    rows = np.array([[5.0, 0.0, 0.0], [1.0, 6.0, 0.0], [0.5, 0.2, 7.0]])
    c = parse_ipi_comment("# CELL(GENH): " + " ".join(map(str, rows.ravel())) + " x{angstrom}")
    np.testing.assert_allclose(c.cell, rows)
    assert (c.quantity, c.unit) == ("x", "angstrom")
    c = parse_ipi_comment("# CELL[abcABC]: 3 4 5 90 90 90 Step: 7 forces{ev/ang} cell{angstrom}")
    np.testing.assert_allclose(c.cell, np.diag([3.0, 4.0, 5.0]), atol=1e-12)
    assert (c.quantity, c.unit, c.cell_unit, c.step) == ("forces", "ev/ang", "angstrom", 7)


def test_extras_keyed_vector_and_raw():
    e = read_extras(IPI_RUN / "sim.xstd_0")
    np.testing.assert_array_equal(e.steps, np.arange(0, 13, 2))
    assert e["energy_rot_std"].shape == (7,)
    t = read_extras(IPI_RUN / "sim.xtor_0")
    assert t["torque"].shape == (7, 3)
    np.testing.assert_allclose(t["torque"][:, 2], 1e3 * e["energy_rot_std"], rtol=1e-6)
    r = read_extras(IPI_RUN / "sim.xraw_0")
    assert r.extra_type == "raw" and list(r.steps) == [0, 4, 8, 12]
    assert r["energy_rot_std"].shape == (4, 1)  # i-PI keeps a per-bead axis
    assert r["torque"].shape == (4, 1, 3)
    assert r["average"][0] == ["none"]
    np.testing.assert_allclose(r["energy_rot_std"][:, 0], e["energy_rot_std"][::2], rtol=1e-6)


def test_extras_python_repr_with_numpy_and_rejects_other_files(tmp_path):
    f = tmp_path / "x"
    f.write_text(
        " #EXTRAS(raw)# Step:           0 \n{'a': [np.float64(1.5)], 'b': [array([1., 2.])]}\n"
    )
    r = read_extras(f)
    assert r["a"].tolist() == [[1.5]] and r["b"].tolist() == [[[1.0, 2.0]]]
    with pytest.raises(ValueError):
        read_extras(IPI_RUN / "sim.out")


def test_ase_extxyz_from_ipi_and_lammps_dump(tmp_path):
    a = load_trajectory(IPI_RUN / "sim.apos_0.extxyz")
    p = load_trajectory(IPI_RUN / "sim.pos_0.xyz")
    np.testing.assert_array_equal(a.steps, p.steps)  # from i-PI's ipi_comment
    np.testing.assert_allclose(a.positions, p.positions, atol=2e-5)
    np.testing.assert_allclose(a.cells, p.cells, atol=1e-5)
    dump = tmp_path / "d.lammpstrj"
    dump.write_text(
        "ITEM: TIMESTEP\n100\nITEM: NUMBER OF ATOMS\n3\nITEM: BOX BOUNDS pp pp pp\n"
        "0 10\n0 11\n0 12\nITEM: ATOMS id type x y z vx vy vz\n"
        "2 2 1.0 0.5 0.0 1.0 0.0 0.0\n1 1 0.5 0.5 0.5 0.0 2.0 0.0\n3 2 0.0 1.2 0.3 0.0 0.0 3.0\n"
        "ITEM: TIMESTEP\n110\nITEM: NUMBER OF ATOMS\n3\nITEM: BOX BOUNDS pp pp pp\n"
        "0 10\n0 11\n0 12\nITEM: ATOMS id type x y z vx vy vz\n"
        "1 1 0.6 0.5 0.5 0.0 2.0 0.0\n2 2 1.0 0.6 0.0 1.0 0.0 0.0\n3 2 0.0 1.2 0.4 0.0 0.0 3.0\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = read_ase_trajectory(dump, type_map="1=O,2=H")
    assert list(t.symbols) == ["O", "H", "H"]  # sorted by id
    assert list(t.steps) == [100, 110]
    np.testing.assert_allclose(t.cells[0], np.diag([10.0, 11.0, 12.0]))
    # metal units: velocities in Å/ps come back in Å/ps
    np.testing.assert_allclose(t.velocities[0], [[0, 2, 0], [1, 0, 0], [0, 0, 3]], atol=1e-9)
    assert t.frame_interval_ps(0.5) == pytest.approx(0.005)
    assert not is_ipi_xyz(dump)


@pytest.mark.slow
def test_ipi_fixture_regenerates(tmp_path):
    """A fresh i-PI run (same input as the committed files) parses to the same numbers
    (i-PI's thermal velocities depend on its PRNG seed, fixed in the input)."""
    from .make_ipi_fixture import KEEP, generate

    out = generate(tmp_path)
    for name in KEEP:
        assert (out / name).exists()
    new, old = read_properties(out / "sim.out"), read_properties(IPI_RUN / "sim.out")
    assert new.names == old.names
    np.testing.assert_allclose(new["conserved"], old["conserved"], rtol=1e-6)
    np.testing.assert_allclose(
        read_ipi_xyz(out / "sim.vel_0.xyz").values,
        read_ipi_xyz(IPI_RUN / "sim.vel_0.xyz").values,
        rtol=1e-5,
        atol=1e-6,
    )
    assert (
        read_extras(out / "sim.xraw_0").fields.keys()
        == read_extras(IPI_RUN / "sim.xraw_0").fields.keys()
    )


def test_frame_interval_needs_step_numbers_or_frame_steps(tmp_path):
    import ase
    import ase.io

    f = tmp_path / "plain.extxyz"
    ase.io.write(f, [ase.Atoms("OH2", positions=np.eye(3), cell=np.eye(3) * 5, pbc=True)] * 3)
    t = load_trajectory(f)
    assert list(t.steps) == [-1, -1, -1]
    with pytest.raises(ValueError, match="frame-steps"):
        t.frame_interval_ps(0.5)
    assert t.frame_interval_ps(0.5, stride=4) == pytest.approx(0.002)
    p = load_trajectory(IPI_RUN / "sim.pos_0.xyz")
    assert p.frame_interval_ps(0.5) == pytest.approx(0.001)  # every 2 steps
    assert p.select(0, None, 2).frame_interval_ps(0.5) == pytest.approx(0.002)
