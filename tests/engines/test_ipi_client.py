"""Tests of the i-PI client against the real i-PI server, ASE's socket server, and fakes.

Every test bounds itself in time (pytest-timeout marker, process time limits) and cleans
up processes and socket files, pass or fail. Sockets live under a private prefix (a short
/tmp directory) or, where i-PI/ASE force ``/tmp/ipi_``, at a unique address.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ipi.utils.units import unit_to_internal
from ipi_helpers import (
    FakeServer,
    PairDriver,
    PolicyDriver,
    client_process,
    read_extras,
    read_properties,
    run_ipi,
    unique_name,
    wait_for,
    write_ipi_xyz,
)

from symbreak.engines import control as ctl
from symbreak.engines.ipi_client import (
    EXIT_CONNECT_FAILED,
    EXIT_DISCONNECTED,
    EXIT_ERROR,
    EXIT_OK,
    parse_parameters,
    split_init_string,
)
from symbreak.engines.units import BOHR_IN_ANGSTROM, HARTREE_IN_EV

RC = 3.6  # cutoff of the test driver, comparable to the cell: many periodic images
# A triclinic cell (rows; lower triangular, i.e. i-PI's upper-triangular h) and 6 atoms.
CELL = np.array([[4.2, 0.0, 0.0], [1.1, 4.0, 0.0], [0.7, -0.9, 4.4]])
POS = np.random.default_rng(0).uniform(0.0, 4.0, (6, 3))
# i-PI reads the Å input with its own factor and the client converts back with the same
# one (symbreak.engines.units): this is the cell the driver sees (equal to CELL to ~1 ulp).
CELL_SEEN = CELL * unit_to_internal("length", "angstrom", 1.0) * BOHR_IN_ANGSTROM


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _ipi_xml(
    prefix_attr: str,
    address: str,
    init_xyz: Path,
    *,
    nbeads: int = 1,
    steps: int = 4,
    forcefield: str | None = None,
    outputs: str = "",
    dynamics: str = "nvt",
    params: str = "",
) -> str:
    ff = (
        forcefield
        or f"""
  <ffsocket name='sb' mode='unix'>
    <address>{address}</address>
    {params}
  </ffsocket>"""
    )
    thermo = (
        "<thermostat mode='langevin'><tau units='femtosecond'>50</tau></thermostat>"
        if dynamics == "nvt"
        else ""
    )
    return f"""<simulation verbosity='low' floatformat='%.16e' {prefix_attr}>
  <output prefix='sim'>
    <properties filename='out' stride='1'> [ step, potential ] </properties>
    <trajectory filename='pos' stride='1' format='ase'> positions </trajectory>
    {outputs}
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>31415</seed></prng>
  {ff}
  <system>
    <initialize nbeads='{nbeads}'>
      <file mode='xyz'>{init_xyz}</file>
      <velocities mode='thermal' units='kelvin'>300</velocities>
    </initialize>
    <forces><force forcefield='sb'/></forces>
    <ensemble><temperature units='kelvin'>300</temperature></ensemble>
    <motion mode='dynamics'>
      <dynamics mode='{dynamics}'>
        <timestep units='femtosecond'>1.0</timestep>
        {thermo}
      </dynamics>
    </motion>
  </system>
</simulation>"""


def _read_positions(path: Path) -> list[np.ndarray]:
    """Frames of i-PI's extxyz trajectory, in Å (i-PI's factors), as the client saw them.

    i-PI writes extxyz in ASE units (ase.units.Bohr, CODATA 2014) with 8 decimals."""
    import ase.io
    import ase.units

    frames = ase.io.read(path, index=":", format="extxyz")
    return [f.positions / ase.units.Bohr * BOHR_IN_ANGSTROM for f in frames]


@pytest.fixture
def init_xyz(tmp_path: Path) -> Path:
    path = tmp_path / "init.xyz"
    write_ipi_xyz(path, ["Ar"] * len(POS), POS, CELL)
    return path


# ======================================================================================
# Pure-Python pieces
# ======================================================================================
@pytest.mark.timeout(30)
def test_pair_driver_matches_finite_differences():
    """The analytic test driver is right (forces, virial, isotropy), so it can judge."""
    d = PairDriver(rc=RC)
    e, f, v = d.energy_forces_virial(CELL, POS)
    h = 1e-5
    fd = np.zeros_like(f)
    for i in range(len(POS)):
        for k in range(3):
            p, m = POS.copy(), POS.copy()
            p[i, k] += h
            m[i, k] -= h
            fd[i, k] = -(d.energy(CELL, p) - d.energy(CELL, m)) / (2 * h)
    np.testing.assert_allclose(f, fd, atol=1e-8)
    vd = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            eps = np.zeros((3, 3))
            eps[a, b] = h
            ep = d.energy(CELL @ (np.eye(3) + eps), POS @ (np.eye(3) + eps))
            em = d.energy(CELL @ (np.eye(3) - eps), POS @ (np.eye(3) - eps))
            vd[a, b] = -(ep - em) / (2 * h)
    np.testing.assert_allclose(v, vd, atol=1e-8)
    assert abs(v).max() > 0.1 and abs(f).max() > 0.05  # not a trivial configuration
    for m in (_rotation(1), -_rotation(2)):  # rotated and inverted (left-handed) cells
        e2, f2, v2 = d.energy_forces_virial(CELL @ m.T, POS @ m.T + 0.3)
        assert e2 == pytest.approx(e, rel=1e-12)
        np.testing.assert_allclose(f2, f @ m.T, atol=1e-12)
        np.testing.assert_allclose(v2, m @ v @ m.T, atol=1e-12)


def test_init_string_and_parameters():
    assert split_init_string(" average : lebedev:5 , inversion : True , ") == (
        " average : lebedev:5 , inversion : True , ",
        1,
    )
    # what ipi 3.3.1 sends with <batch_size>4</batch_size>, with and without <parameters>
    assert split_init_string(" average : lebedev:5 , , batch_size:4") == (
        " average : lebedev:5 , ",
        4,
    )
    assert split_init_string("  batch_size:3") == ("", 3)
    assert split_init_string(" ") == ("", 1)
    assert parse_parameters(" average : lebedev:5 , inversion : True , ") == {
        "average": "lebedev:5",
        "inversion": "True",
    }
    assert parse_parameters("") == {}


# ======================================================================================
# 1. ASE's SocketIOCalculator as a foreign server
# ======================================================================================
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["unix", "inet"])
def test_ase_socketio_triclinic(mode, threaded_client, sock_prefix):
    """Energy, forces and stress through ASE's server equal the driver called directly,
    on a general (rotated, non-triangular) triclinic cell."""
    import ase.units
    from ase import Atoms
    from ase.calculators.socketio import SocketIOCalculator

    rot = _rotation(7)
    cell, pos = CELL @ rot.T, POS @ rot.T + np.array([0.3, -0.2, 0.1])
    atoms = Atoms("Ar6", positions=pos, cell=cell, pbc=True)
    driver = PairDriver(rc=RC)
    name = unique_name("ase")
    if mode == "unix":
        calc = SocketIOCalculator(unixsocket=name, timeout=20)  # /tmp/ipi_<name>, fixed by ASE
        tc = threaded_client(driver, name, control=False)
    else:
        with socket.socket() as s:  # a free port
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        calc = SocketIOCalculator(port=port, timeout=20)
        tc = threaded_client(driver, "127.0.0.1", unix=False, port=port, control=False)
    # ASE converts with CODATA 2014, the client with i-PI's factors: predict exactly.
    s_len = ase.units.Bohr**-1 * BOHR_IN_ANGSTROM  # what the driver sees per ASE Å
    k_e = ase.units.Hartree / HARTREE_IN_EV  # ASE eV per driver eV
    try:
        with calc:
            atoms.calc = calc
            for step in range(3):
                e = atoms.get_potential_energy()
                f = atoms.get_forces()
                stress = atoms.get_stress(voigt=False)
                e0, f0, v0 = driver.energy_forces_virial(cell * s_len, atoms.positions * s_len)
                assert e == pytest.approx(e0 * k_e, rel=1e-13)
                np.testing.assert_allclose(f, f0 * k_e * s_len, rtol=0, atol=1e-12)
                expected = -(v0 + v0.T) / 2 * k_e / atoms.get_volume()
                np.testing.assert_allclose(stress, expected, rtol=0, atol=1e-13)
                extras = json.loads(bytes(calc.results["morebytes"]).decode())
                assert extras["e_driver"] == pytest.approx(e0, rel=1e-15)
                assert extras["cell_upper"] > 0.1  # the client received a general cell
                atoms.positions += 0.05 * np.random.default_rng(step).normal(size=(6, 3))
    finally:
        calc.close()
    # ASE does not send EXIT: the client reports the server went away, cleanly.
    assert tc.join(10) == EXIT_DISCONNECTED
    assert "closed the connection" in tc.client.error
    assert driver.init_calls == [(0, "")]  # ASE's INIT string is one NUL byte


# ======================================================================================
# 2. Real i-PI, classical NVT, extras
# ======================================================================================
@pytest.mark.timeout(60)
def test_ipi_nvt_extras_and_potential(tmp_path, sock_prefix, init_xyz):
    address = "nvt"
    xml = _ipi_xml(
        f"sockets_prefix='{sock_prefix}'",
        address,
        init_xyz,
        steps=4,
        params="<parameters>{average: lebedev:5, inversion: true}</parameters>",
        outputs="""
    <trajectory filename='xe' stride='1' extra_type='e_driver'> extras </trajectory>
    <trajectory filename='xp' stride='1' extra_type='params'> extras </trajectory>""",
    )
    with run_ipi(xml, tmp_path, timeout=60) as ipi:
        with client_process(tmp_path, address, sock_prefix, driver_kwargs={"rc": RC}) as cl:
            assert ipi.wait(40) == 0, ipi.output()[-3000:]
            assert cl.wait(10) == EXIT_OK, cl.output()
    assert "CLIENT-EXIT rc=0" in cl.output()
    assert os.listdir(sock_prefix) == []  # i-PI's socket and our control socket are gone

    pot_ha = read_properties(tmp_path / "sim.out")["potential"]
    frames = _read_positions(tmp_path / "sim.pos_0.extxyz")
    energies = [float(b) for _, b in read_extras(tmp_path / "sim.xe_0")]
    params = [b for _, b in read_extras(tmp_path / "sim.xp_0")]
    assert len(pot_ha) == len(frames) == len(energies) == 5
    d = PairDriver(rc=RC)
    for k in range(5):
        # the client's energy conversion is exact: i-PI's Hartree x i-PI's eV = driver eV
        assert pot_ha[k] * HARTREE_IN_EV == pytest.approx(energies[k], rel=1e-14)
        # ... and the driver saw the positions i-PI recorded (8 decimals in the file)
        assert d.energy(CELL_SEEN, frames[k]) == pytest.approx(energies[k], abs=2e-6)
    assert len(set(energies)) == 5  # the system moved
    # the <parameters> string reached driver.init unchanged
    assert params[0] == "average : lebedev:5 , inversion : True ,"


# ======================================================================================
# 3. PIMD: batched requests give the same results as single ones
# ======================================================================================
@pytest.mark.timeout(90)
def test_ipi_pimd_batched_matches_unbatched(tmp_path, sock_prefix, init_xyz):
    runs = {}
    # batch 1 without consolidated messages (STATUS between every message, -S flag),
    # batch 4 (one request per step) and batch 3 (4 beads -> 3 + 1 padded to 3).
    for tag, batch, consolidate in (("b1", 1, False), ("b4", 4, True), ("b3", 3, True)):
        wd = tmp_path / tag
        address = f"pimd{tag}"
        xml = _ipi_xml(
            "" if tag == "b1" else f"sockets_prefix='{sock_prefix}'",
            address,
            init_xyz,
            nbeads=4,
            steps=3,
            dynamics="nve",
            params=f"<batch_size>{batch}</batch_size>"
            f"<consolidate_messages>{consolidate}</consolidate_messages>",
            outputs="<trajectory filename='xb' stride='1' extra_type='batch'> extras </trajectory>"
            "<trajectory filename='frc' stride='1' format='ase'> forces </trajectory>",
        )
        args = ["-S", sock_prefix] if tag == "b1" else []
        with run_ipi(xml, wd, timeout=60, args=args) as ipi:
            with client_process(wd, address, sock_prefix, driver_kwargs={"rc": RC}) as cl:
                assert ipi.wait(40) == 0, ipi.output()[-3000:]
                assert cl.wait(10) == EXIT_OK, cl.output()
        runs[tag] = {
            "pot": read_properties(wd / "sim.out")["potential"],
            "pos": [np.array(_read_positions(wd / f"sim.pos_{b}.extxyz")) for b in range(4)],
            "frc": [np.array(_read_positions(wd / f"sim.frc_{b}.extxyz")) for b in range(4)],
            "batch": {int(float(x)) for _, x in read_extras(wd / "sim.xb_0")},
            "log": cl.output(),
        }
    assert runs["b1"]["batch"] == {1}
    assert runs["b4"]["batch"] == {4}
    assert runs["b3"]["batch"] == {3}
    assert "batch size 4" in runs["b4"]["log"] and "batch size 1" in runs["b1"]["log"]
    for tag in ("b4", "b3"):
        np.testing.assert_array_equal(runs[tag]["pot"], runs["b1"]["pot"])
        for b in range(4):
            np.testing.assert_array_equal(runs[tag]["pos"][b], runs["b1"]["pos"][b])
            np.testing.assert_array_equal(runs[tag]["frc"][b], runs["b1"]["frc"][b])
    assert len(set(runs["b1"]["pot"])) > 1


# ======================================================================================
# 4. <ffrotations>: rotated and inverted cells
# ======================================================================================
@pytest.mark.timeout(60)
def test_ipi_ffrotations_rotated_cells(tmp_path, sock_prefix, init_xyz):
    """i-PI sends R.h (general, and left handed with inversion); an isotropic driver must
    give the unrotated energy for every rotation."""
    address = unique_name("rot")  # nested ffsocket ignores sockets_prefix: /tmp/ipi_<addr>
    ff = f"""
  <ffrotations name='sb'>
    <grid_mode>lebedev</grid_mode><grid_order>3</grid_order><inversion>true</inversion>
    <ffsocket name='inner' mode='unix'><address>{address}</address></ffsocket>
  </ffrotations>"""
    xml = _ipi_xml(
        f"sockets_prefix='{sock_prefix}'",
        address,
        init_xyz,
        steps=2,
        forcefield=ff,
        outputs="""
    <trajectory filename='xe' stride='1' extra_type='e_driver'> extras </trajectory>
    <trajectory filename='xd' stride='1' extra_type='cell_det'> extras </trajectory>
    <trajectory filename='xu' stride='1' extra_type='cell_upper'> extras </trajectory>""",
    )
    with run_ipi(xml, tmp_path, timeout=60) as ipi:
        with client_process(
            tmp_path, address, "/tmp/ipi_", driver_kwargs={"rc": RC}, control=False
        ) as cl:
            assert ipi.wait(40) == 0, ipi.output()[-3000:]
            assert cl.wait(10) == EXIT_OK, cl.output()
    assert not os.path.exists(f"/tmp/ipi_{address}")

    pot_ha = read_properties(tmp_path / "sim.out")["potential"]
    frames = _read_positions(tmp_path / "sim.pos_0.extxyz")
    e_rot = [np.array(b.split(), float) for _, b in read_extras(tmp_path / "sim.xe_0")]
    dets = [np.array(b.split(), float) for _, b in read_extras(tmp_path / "sim.xd_0")]
    upper = [np.array(b.split(), float) for _, b in read_extras(tmp_path / "sim.xu_0")]
    d = PairDriver(rc=RC)
    volume = abs(np.linalg.det(CELL_SEEN))
    for k in range(len(pot_ha)):
        assert e_rot[k].shape == (36,)  # 18 Lebedev rotations x {1, inversion}
        e0 = d.energy(CELL_SEEN, frames[k])
        # every rotated/inverted copy gives the unrotated energy (isotropic driver)
        np.testing.assert_allclose(e_rot[k], e_rot[k][0], rtol=1e-12)
        assert e_rot[k][0] == pytest.approx(e0, abs=2e-6)
        assert pot_ha[k] * HARTREE_IN_EV == pytest.approx(e_rot[k].mean(), rel=1e-13)
        # the cells really were rotated (not upper triangular) and half were inverted
        np.testing.assert_allclose(np.abs(dets[k]), volume, rtol=1e-8)
        assert (dets[k] < 0).sum() == 18
        assert (upper[k] > 1e-3).sum() >= 30


# ======================================================================================
# 5. Faults
# ======================================================================================
@pytest.mark.timeout(60)
def test_server_killed_midrun(tmp_path, sock_prefix, init_xyz):
    address = "kill"
    xml = _ipi_xml(f"sockets_prefix='{sock_prefix}'", address, init_xyz, steps=100000)
    with run_ipi(xml, tmp_path, timeout=60) as ipi:
        with client_process(tmp_path, address, sock_prefix, driver_kwargs={"rc": RC}) as cl:
            out = tmp_path / "sim.out"
            wait_for(
                lambda: out.exists() and len(out.read_text().splitlines()) > 8,
                30,
                "i-PI to run a few steps",
            )
            assert os.path.exists(f"{sock_prefix}symbreak_ctl_{address}")
            ipi.kill()  # SIGKILL: no EXIT, no cleanup by i-PI
            t0 = time.monotonic()
            assert cl.wait(10) == EXIT_DISCONNECTED
            assert time.monotonic() - t0 < 5
    assert "the server has exited or crashed" in cl.stderr()
    assert not os.path.exists(f"{sock_prefix}symbreak_ctl_{address}")


@pytest.fixture
def fake_server(sock_prefix):
    servers = []

    def make(address: str) -> FakeServer:
        srv = FakeServer(f"{sock_prefix}{address}")
        servers.append(srv)
        return srv

    try:
        yield make
    finally:
        for srv in servers:
            srv.close()


def _posdata(nat: int = 3, pos: np.ndarray | None = None) -> bytes:
    h = np.diag([10.0, 10.0, 10.0])
    if pos is None:
        pos = np.arange(3 * nat, dtype=float) * 0.7
    return (
        b"POSDATA     "
        + h.tobytes()
        + np.linalg.inv(h).tobytes()
        + np.int32(nat).tobytes()
        + np.asarray(pos, float).tobytes()
    )


MALFORMED = {
    "garbage header": (
        False,
        b"GARBAGE!\x01\xffXY",
        "unknown message header b'GARBAGE!\\x01\\xffXY'",
    ),
    "reply header sent by server": (
        True,
        b"READY       ",
        "unknown message header b'READY       '",
    ),
    "negative INIT length": (
        False,
        b"INIT        " + np.int32(0).tobytes() + np.int32(-5).tobytes(),
        "string length -5",
    ),
    "POSDATA before INIT": (False, _posdata(), "POSDATA before INIT"),
    "negative atom count": (
        True,
        b"POSDATA     " + np.eye(3).tobytes() * 2 + np.int32(-3).tobytes(),
        "atom count -3",
    ),
    "GETFORCE before POSDATA": (True, b"GETFORCE    ", "GETFORCE before any POSDATA"),
    "truncated POSDATA": (True, _posdata()[:-20], "in the middle of POSDATA positions"),
    "NaN position": (
        True,
        _posdata(4, np.array([[0, 0, 0], [1, 0, 0], [0, np.nan, 0], [0, 0, 1.0]])),
        "non-finite position received from i-PI for atom index 2",
    ),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_messages(case, fake_server, threaded_client, sock_prefix):
    init_first, payload, expected = MALFORMED[case]
    srv = fake_server("bad")
    driver = PairDriver()
    tc = threaded_client(driver, "bad", sockets_prefix=sock_prefix)
    srv.accept()
    if init_first:
        srv.handshake()
    srv.send(payload)
    if case == "truncated POSDATA":
        srv.conn.shutdown(socket.SHUT_WR)
    rc = tc.join(10)
    assert rc in (EXIT_ERROR, EXIT_DISCONNECTED)
    assert expected in tc.client.error, tc.client.error
    assert srv.peer_closed()  # the client closed its end
    assert not os.path.exists(f"{sock_prefix}symbreak_ctl_bad")
    if case == "NaN position":
        assert rc == EXIT_ERROR and driver.batch_sizes == []  # never reached the driver


class _BadDriver(PairDriver):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def compute(self, cells, positions):
        out = super().compute(cells, positions)
        e, f, v, x = out[0]
        if self.kind == "nan force":
            f[1, 2] = np.nan
        elif self.kind == "raw key":
            x["raw"] = "x"
        elif self.kind == "bad shape":
            f = f[:-1]
        elif self.kind == "raises":
            raise ValueError("model exploded")
        return [(e, f, v, x)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "kind,expected",
    [
        ("nan force", "non-finite forces for atom index 1"),
        ("raw key", "extras key 'raw'"),
        ("bad shape", "shape (2, 3), expected (3, 3)"),
        ("raises", "ValueError: model exploded"),
    ],
)
def test_driver_contract_violations(kind, expected, fake_server, threaded_client, sock_prefix):
    srv = fake_server("drv")
    tc = threaded_client(_BadDriver(kind), "drv", sockets_prefix=sock_prefix, control=False)
    srv.accept().handshake()
    srv.send(_posdata(3))
    assert tc.join(10) == EXIT_ERROR
    assert expected in tc.client.error, tc.client.error


@pytest.mark.timeout(30)
def test_consolidated_and_batched_wire_format(fake_server, threaded_client, sock_prefix):
    """Byte-level check of the batched exchange against ipi 3.3.1's layout."""
    srv = fake_server("wire")
    skew = np.array([[0.0, 0.3, 0.0], [-0.3, 0.0, 0.1], [0.0, -0.1, 0.0]])

    class SkewDriver(PairDriver):  # an asymmetric virial shows the transposition
        def compute(self, cells, positions):
            return [(e, f, v + skew, x) for e, f, v, x in super().compute(cells, positions)]

    driver = SkewDriver(rc=RC)
    tc = threaded_client(driver, "wire", sockets_prefix=sock_prefix, control=False)
    srv.accept().handshake(b" k : v , , batch_size:2")
    nat, nb = 6, 2
    rot = _rotation(3)
    h = [(CELL / BOHR_IN_ANGSTROM).T, (CELL @ rot.T / BOHR_IN_ANGSTROM).T]  # columns
    q = [POS / BOHR_IN_ANGSTROM, POS @ rot.T / BOHR_IN_ANGSTROM + 0.1]
    msg = b"POSDATA     " + np.int32(nat).tobytes()
    for hb in h:
        msg += hb.tobytes() + np.linalg.inv(hb).tobytes()
    msg += b"".join(x.tobytes() for x in q) + b"GETFORCE    "
    srv.send(msg)  # consolidated: no STATUS in between
    assert srv.recv(12) == b"FORCEREADY  "
    pots = np.frombuffer(srv.recv(8 * nb), np.float64)
    assert np.frombuffer(srv.recv(4), np.int32)[0] == nat
    forces = np.frombuffer(srv.recv(8 * nb * 3 * nat), np.float64).reshape(nb, nat, 3)
    virials = np.frombuffer(srv.recv(8 * nb * 9), np.float64).reshape(nb, 3, 3)
    extras = []
    for _ in range(nb):
        n = np.frombuffer(srv.recv(4), np.int32)[0]
        extras.append(json.loads(srv.recv(n)))
    for b in range(nb):
        e, f, v = driver.energy_forces_virial(h[b].T * BOHR_IN_ANGSTROM, q[b] * BOHR_IN_ANGSTROM)
        assert pots[b] == pytest.approx(e / HARTREE_IN_EV, rel=1e-14)
        np.testing.assert_allclose(
            forces[b], f * BOHR_IN_ANGSTROM / HARTREE_IN_EV, rtol=0, atol=1e-15
        )
        np.testing.assert_allclose(virials[b], (v + skew).T / HARTREE_IN_EV, rtol=0, atol=1e-15)
        assert extras[b]["batch"] == 2
    assert driver.init_calls == [(0, " k : v , ")]
    srv.send(b"STATUS      ")
    assert srv.recv(12) == b"READY       "
    srv.send(b"EXIT        ")
    assert tc.join(10) == EXIT_OK


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_client_cleanly(sig, tmp_path, fake_server, sock_prefix):
    srv = fake_server("sig")
    ctl_path = f"{sock_prefix}symbreak_ctl_sig"
    with client_process(tmp_path, "sig", sock_prefix, timeout=30) as cl:
        srv.accept().handshake()
        assert os.path.exists(ctl_path)
        cl.signal(sig)  # the client is blocked waiting for the next message
        assert cl.wait(5) == 128 + sig
        assert srv.peer_closed()
    assert f"received {signal.Signals(sig).name}" in cl.stderr()
    assert not os.path.exists(ctl_path)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["unix", "inet"])
def test_connect_timeout(mode, threaded_client, sock_prefix):
    t0 = time.monotonic()
    if mode == "unix":
        tc = threaded_client(
            PairDriver(), "nobody", sockets_prefix=sock_prefix, connect_timeout=1.0
        )
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: nothing listens there
        tc = threaded_client(
            PairDriver(),
            "127.0.0.1",
            unix=False,
            port=port,
            connect_timeout=1.0,
            sockets_prefix=sock_prefix,
        )
    assert tc.join(10) == EXIT_CONNECT_FAILED
    assert 0.9 < time.monotonic() - t0 < 4
    where = f"{sock_prefix}nobody" if mode == "unix" else "127.0.0.1:"
    assert "no i-PI server at" in tc.client.error and where in tc.client.error
    assert os.listdir(sock_prefix) == []  # control socket removed


# ======================================================================================
# 6. Control channel
# ======================================================================================
@pytest.mark.timeout(60)
def test_control_changes_policy_at_next_request(threaded_client):
    from ase import Atoms
    from ase.calculators.socketio import SocketIOCalculator

    name = unique_name("ctl")
    prefix = "/tmp/ipi_"  # ASE's fixed prefix; the address is unique
    driver = PolicyDriver(rc=RC)
    atoms = Atoms("Ar6", positions=POS, cell=CELL, pbc=True)
    calc = SocketIOCalculator(unixsocket=name, timeout=20)
    tc = threaded_client(driver, name, sockets_prefix=prefix)

    def compute() -> dict:
        atoms.positions[0, 0] += 0.01  # force a new calculation
        atoms.get_potential_energy()
        return json.loads(bytes(calc.results["morebytes"]).decode())

    try:
        with calc:
            atoms.calc = calc
            assert compute()["policy_average"] == "none"
            q = ctl.send_control(name, prefix, query=True)
            assert q["ok"] and q["clients"][0]["state"]["average"] == "none"  # get_policy
            # no request within `wait`: queued, not yet applied
            r = ctl.send_control(name, prefix, average="lebedev:5", inversion=True, wait=0.2)
            assert r["ok"] and r["clients"][0]["applied"] is False
            assert driver.policy["average"] == "none"
            x = compute()  # takes effect from the next force request
            assert x["policy_average"] == "lebedev:5" and x["policy_inversion"] is True
            # a request arriving while the control call waits: applied, reply has the state
            box = {}
            th = threading.Thread(
                target=lambda: box.update(
                    r=ctl.send_control(name, prefix, average="random", seed=3, wait=10)
                )
            )
            th.start()
            wait_for(lambda: tc.client.policy.has_pending(), 5, "the update to be queued")
            assert compute()["policy_average"] == "random"
            th.join(10)
            reply = box["r"]["clients"][0]
            assert reply["applied"] is True and reply["state"]["seed"] == 3
            assert reply["pid"] == os.getpid()
            # a policy the driver refuses: error reply, old policy stays
            box.clear()
            th = threading.Thread(
                target=lambda: box.update(
                    r=ctl.send_control(name, prefix, average="bogus", wait=10)
                )
            )
            th.start()
            wait_for(lambda: tc.client.policy.has_pending(), 5, "the update to be queued")
            assert compute()["policy_average"] == "random"
            th.join(10)
            assert box["r"]["ok"] is False and "bad average" in box["r"]["clients"][0]["error"]
            q = ctl.send_control(name, prefix, query=True)["clients"][0]
            assert q["state"]["average"] == "random" and q["updates_applied"] == 2
            assert "bad average" in q["last_error"]
    finally:
        calc.close()
    tc.join(10)
    assert not os.path.exists(ctl.control_socket_path(name, prefix))


@pytest.mark.timeout(30)
def test_control_errors_and_several_clients(threaded_client, sock_prefix):
    # nobody listening
    with pytest.raises(ctl.ControlError, match="no symbreak client is listening"):
        ctl.send_control("ghost", sock_prefix, average="lebedev:3")
    # a stale socket file left by a killed client
    stale = ctl.control_socket_path("ghost", sock_prefix)
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()
    with pytest.raises(ctl.ControlError, match="stale control socket"):
        ctl.send_control("ghost", sock_prefix, query=True)
    # a driver without set_policy; two clients on one address (second gets ".1");
    # the stale file is reclaimed. The clients wait for a server that never comes.
    a = threaded_client(PairDriver(), "ghost", sockets_prefix=sock_prefix, connect_timeout=30)
    wait_for(lambda: a.client.control_server is not None, 5, "first control socket")
    b = threaded_client(PolicyDriver(), "ghost", sockets_prefix=sock_prefix, connect_timeout=30)
    wait_for(lambda: b.client.control_server is not None, 5, "second control socket")
    assert a.client.control_server.path == stale
    assert b.client.control_server.path == stale + ".1"
    r = ctl.send_control("ghost", sock_prefix, average="lebedev:3", wait=0.1)
    assert r["ok"] is False and len(r["clients"]) == 2
    by_sock = {c["socket"]: c for c in r["clients"]}
    assert "has no set_policy" in by_sock[stale]["error"]
    assert by_sock[stale + ".1"]["applied"] is False  # queued: no force request yet
    bad = ctl.send_control("ghost", sock_prefix, query=True)
    assert bad["clients"][1]["pending"] == [{"average": "lebedev:3"}]
    # malformed requests
    for raw in (b"not json\n", b"[1, 2]\n", b"{}\n", b'{"query": true, "average": "x"}\n'):
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(5)
            c.connect(stale)
            c.sendall(raw)
            rep = json.loads(c.makefile().readline())
        assert rep["ok"] is False and rep["error"]
    a.client.stop()
    b.client.stop()
    assert a.join(5) == EXIT_OK and b.join(5) == EXIT_OK
    assert os.listdir(sock_prefix) == []
