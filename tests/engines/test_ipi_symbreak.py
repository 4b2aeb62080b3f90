"""symbreak behind the real i-PI 3.3.1: the evidence that the i-PI front end works.

Every test runs the real ``i-pi`` and the real ``symbreak serve`` command (or the
in-process PES file, or ``i-pi-py_driver``) on a tiny random model exported in float64,
so that different routes to the same numbers can be compared tightly. All processes are
bounded in time and killed, and their socket files removed, pass or fail.

1. PIMD: batched (``batch_size`` = beads) and unbatched requests give the same run.
2. Socket client, in-process ``<ffdirect>``, ``i-pi-py_driver -m custom`` and ASE give
   the same energy, forces and virial on a triclinic cell.
3. i-PI's own ``<ffrotations>`` around a plain client equals symbreak's averaging on
   the same grid (Lebedev 3 and Legendre 2, with inversion): the rotation sets agree.
4. ``symbreak control`` switches a live run plain → averaged → random → plain.
5. ``<parameters>{average: ..., inversion: ...}</parameters>`` per force field (MTS).
6. Faults: server killed, client killed (and replaced), NaN positions, wrong template,
   missing model.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from ipi_helpers import (
    Proc,
    read_extras,
    run_ipi,
    start_process,
    subprocess_env,
    unique_name,
    wait_for,
    write_ipi_xyz,
)

from helpers import small_water, tiny_pet
from symbreak.engines.ipi_client import (
    BOHR_IN_ANGSTROM,
    EXIT_DISCONNECTED,
    EXIT_ERROR,
    EXIT_OK,
    HARTREE_IN_EV,
)
from symbreak.engines.ipi_commands import pes_path
from symbreak.evaluator import Evaluator, Structure
from symbreak.export import export_model, load_model

IPI_PREFIX = "/tmp/ipi_"  # where i-PI puts an <ffsocket> nested in <ffrotations>


# ======================================================================================
# Fixtures and helpers
# ======================================================================================
@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny random PET exported in float64 (the driver runs it in float64)."""
    net, cfg = tiny_pet(0)
    path = tmp_path_factory.mktemp("ipi_model") / "tiny64.pt"
    export_model(net.double(), path, cfg.to_dict(), {"note": "random float64 test model"})
    return path


@pytest.fixture(scope="module")
def reference(model) -> Evaluator:
    torch.set_num_threads(1)
    return Evaluator(load_model(model), dtype=torch.float64)


@pytest.fixture
def system(tmp_path) -> Path:
    """12 atoms (4 water molecules) in a triclinic cell, written as i-PI's init.xyz."""
    atoms = small_water(4, seed=1)
    path = tmp_path / "init.xyz"
    write_ipi_xyz(path, atoms.get_chemical_symbols(), atoms.positions, atoms.cell.array)
    return path


@pytest.fixture
def ipi_prefix_addresses():
    """Unique addresses under i-PI's fixed /tmp/ipi_ prefix; their leftovers (i-PI and
    control sockets) are removed after the test."""
    names: list[str] = []

    def make(tag: str) -> str:
        names.append(unique_name(tag))
        return names[-1]

    try:
        yield make
    finally:
        for name in names:
            for path in (f"{IPI_PREFIX}{name}", f"{IPI_PREFIX}symbreak_ctl_{name}"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def serve_cmd(model: Path, address: str, prefix: str, *args: str, template="init.xyz") -> list:
    """The ``symbreak serve`` command line (one torch thread)."""
    return [
        sys.executable,
        "-m",
        "symbreak",
        "serve",
        "--model",
        str(model),
        *(["--template", str(template)] if template else []),
        "--address",
        address,
        "--socket-prefix",
        prefix,
        "--threads",
        "1",
        "--connect-timeout",
        "60",
        *args,
    ]


@contextlib.contextmanager
def processes(workdir: Path, commands: dict[str, list], limit: float = 120) -> Iterator[dict]:
    """Start named processes (bounded by ``limit`` s); all are killed on exit."""
    started: dict[str, Proc] = {}
    try:
        for name, cmd in commands.items():
            started[name] = start_process(cmd, workdir, name, limit)
        yield started
    finally:
        for proc in started.values():
            proc.kill()


def hard_kill(proc: Proc) -> None:
    """SIGKILL the whole process group (no cleanup, no EXIT message)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.proc.wait(10)


def simulation(
    forcefields: str,
    forces: str,
    outputs: str,
    *,
    prefix: str | None = None,
    nbeads: int = 1,
    steps: int = 2,
    nmts: str | None = None,
) -> str:
    """An i-PI input: NVE (PIMD if nbeads > 1) from init.xyz, full-precision outputs."""
    attr = f"sockets_prefix='{prefix}'" if prefix else ""
    mts = f"<nmts>{nmts}</nmts>" if nmts else ""
    return f"""<simulation verbosity='low' floatformat='%.16e' {attr}>
  <output prefix='sim'>
    {outputs}
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>31415</seed></prng>
  {forcefields}
  <system>
    <initialize nbeads='{nbeads}'>
      <file mode='xyz'>init.xyz</file>
      <velocities mode='thermal' units='kelvin'>300</velocities>
    </initialize>
    <forces>{forces}</forces>
    <ensemble><temperature units='kelvin'>300</temperature></ensemble>
    <motion mode='dynamics'>
      <dynamics mode='nve'><timestep units='femtosecond'>0.25</timestep>{mts}</dynamics>
    </motion>
  </system>
</simulation>"""


def ffsocket(name: str, address: str, inner: str = "") -> str:
    return f"<ffsocket name='{name}' mode='unix'><address>{address}</address>{inner}</ffsocket>"


def read_props(path: Path) -> dict[str, np.ndarray]:
    """i-PI properties by name (multi-column ones, e.g. ``vir_component_raw(0)``, as
    [frames, columns]), in the units of the file (atomic units unless asked)."""
    spans = {}
    for line in Path(path).read_text().splitlines():
        m = re.match(r"#\s*(?:column|cols\.)\s+(\d+)(?:-(\d+))?\s+-->\s+(\S+)", line)
        if m:
            first = int(m.group(1)) - 1
            spans[m.group(3)] = slice(first, int(m.group(2) or first + 1))
    data = np.loadtxt(path, ndmin=2)
    return {k: data[:, s] if s.stop - s.start > 1 else data[:, s.start] for k, s in spans.items()}


def read_bin(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Frames (h [3, 3] with lattice vectors as columns, values [N, 3]) of an i-PI
    ``format='bin'`` trajectory: full float64 precision, atomic units."""
    raw = Path(path).read_bytes()
    frames, off, title_len = [], 0, None
    while off < len(raw):
        h = np.frombuffer(raw, np.float64, 9, off).reshape(3, 3)
        nat = int(np.frombuffer(raw, np.int64, 1, off + 72)[0])
        q = np.frombuffer(raw, np.float64, 3 * nat, off + 80).reshape(nat, 3)
        off += 80 + 24 * nat
        off += 8 + 4 * int(np.frombuffer(raw, np.int64, 1, off)[0])  # "O|H|H|..." UTF-32
        if title_len is None:  # fixed-width UTF-32 title, e.g. "Step: ... cell{atomic_unit}"
            end = off
            while end < len(raw) and 32 <= raw[end] < 127 and raw[end + 1 : end + 4] == b"\0\0\0":
                end += 4
            title_len = end - off
            assert raw[off:end].decode("utf-32-le").endswith("}"), "unexpected bin layout"
        off += title_len
        frames.append((h.copy(), q.copy()))
    return frames


def extras_rows(path: Path) -> list[np.ndarray]:
    """Numeric rows of an i-PI extras file (one per frame)."""
    return [np.array(body.split(), float) for _, body in read_extras(path)]


def extras_strings(path: Path) -> list[str]:
    return [body.strip() for _, body in read_extras(path)]


def count_frames(path: Path) -> int:
    try:
        return Path(path).read_text().count("#EXTRAS")
    except FileNotFoundError:
        return 0


def reference_au(evaluator: Evaluator, h: np.ndarray, q: np.ndarray, policy: str = "none"):
    """Energy (Ha), forces (Ha/Bohr), virial (Ha) of the frame i-PI recorded (atomic
    units, h with columns as lattice vectors), through ASE's calculator if the project
    has one, else the evaluator; species from the test system."""
    numbers = small_water(4, seed=1).numbers
    cell, pos = h.T * BOHR_IN_ANGSTROM, q * BOHR_IN_ANGSTROM  # what every client sees
    try:
        from symbreak.ase import SymbreakCalculator
    except ImportError:
        SymbreakCalculator = None
    if SymbreakCalculator is not None:
        from ase import Atoms

        atoms = Atoms(numbers=numbers, positions=pos, cell=cell, pbc=True)
        atoms.calc = SymbreakCalculator(evaluator, average=policy)
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        virial = -atoms.get_stress(voigt=False) * atoms.get_volume()
    else:
        r = evaluator.compute(Structure(numbers, pos, cell, (True,) * 3), policy)[0]
        energy, forces, virial = r.energy, r.forces, r.virial
    return (
        energy / HARTREE_IN_EV,
        forces * BOHR_IN_ANGSTROM / HARTREE_IN_EV,
        virial / HARTREE_IN_EV,
    )


def voigt6(virial: np.ndarray) -> np.ndarray:
    """i-PI's tensor2vec order: xx, yy, zz, xy, xz, yz."""
    v = virial
    return np.array([v[0, 0], v[1, 1], v[2, 2], v[0, 1], v[0, 2], v[1, 2]])


def finish(ipi: Proc, clients: dict[str, Proc], timeout: float = 90) -> None:
    """Wait for i-PI to end normally and every client to get EXIT (exit code 0); fail
    early, with the logs, if a client dies first."""

    def logs() -> str:
        return "\n".join(f"--- {n}:\n{p.output()[-2000:]}" for n, p in clients.items())

    deadline = time.monotonic() + timeout
    while ipi.poll() is None:
        dead = {n: p.poll() for n, p in clients.items() if p.poll() not in (None, 0)}
        assert not dead, f"client(s) failed {dead}:\n{logs()}\n--- i-PI:\n{ipi.output()[-2000:]}"
        assert time.monotonic() < deadline, f"i-PI still running after {timeout} s\n{logs()}"
        time.sleep(0.1)
    assert ipi.poll() == 0, ipi.output()[-3000:] + logs()
    for name, proc in clients.items():
        assert proc.wait(20) == EXIT_OK, f"{name}:\n{proc.output()[-3000:]}"


# ======================================================================================
# 1. Batched and unbatched PIMD
# ======================================================================================
@pytest.mark.timeout(150)
def test_pimd_batched_equals_unbatched(tmp_path, model, system, sock_prefix):
    """4 beads, a plain and an averaged symbreak force field: one batched request per
    step (all beads in one model call) gives the run of four single requests."""
    runs, outputs = {}, {}
    with contextlib.ExitStack() as stack:  # both runs at once (wall time)
        for batch in (1, 4):
            wd = tmp_path / f"b{batch}"
            wd.mkdir()
            (wd / "init.xyz").write_text(system.read_text())
            bs = f"<batch_size>{batch}</batch_size>"
            xml = simulation(
                ffsocket("plain", f"p{batch}", bs) + ffsocket("avg", f"a{batch}", bs),
                "<force forcefield='plain' weight='0.5'/><force forcefield='avg' weight='0.5'/>",
                """
    <properties filename='out' stride='1'> [ step, potential, pot_component_raw(0),
      pot_component_raw(1), vir_component_raw(0), vir_component_raw(1) ] </properties>
    <trajectory filename='frc' stride='1' format='bin'> forces </trajectory>
    <trajectory filename='pos' stride='1' format='bin'> positions </trajectory>
    <trajectory filename='x0' stride='1' extra_type='call'> extras_component_raw(0) </trajectory>
    <trajectory filename='x1' stride='1' extra_type='n_rotations'> extras_component_raw(1)
    </trajectory>""",
                prefix=sock_prefix,
                nbeads=4,
                steps=2,
            )
            clients = {
                "plain": serve_cmd(model, f"p{batch}", sock_prefix),
                "avg": serve_cmd(model, f"a{batch}", sock_prefix, "--average", "lebedev:3"),
            }
            ipi = stack.enter_context(run_ipi(xml, wd, timeout=120))
            runs[batch] = (wd, ipi, stack.enter_context(processes(wd, clients)))
        for batch, (wd, ipi, cl) in runs.items():
            finish(ipi, cl)
            assert f"batch size {batch}" in cl["plain"].output()
            outputs[batch] = {
                "props": read_props(wd / "sim.out"),
                "frc": [
                    np.array([f for _, f in read_bin(wd / f"sim.frc_{b}.bin")]) for b in range(4)
                ],
                "pos": [
                    np.array([q for _, q in read_bin(wd / f"sim.pos_{b}.bin")]) for b in range(4)
                ],
                "calls": np.array(extras_rows(wd / "sim.x0")),  # [frames, beads]
                "nrot": np.array(extras_rows(wd / "sim.x1")),
            }
    one, four = outputs[1], outputs[4]
    # one model call serves all beads when batched, one call per bead otherwise
    assert (four["calls"] == four["calls"][:, :1]).all()
    assert all(len(set(row)) == 4 for row in one["calls"])
    assert (one["nrot"] == 18).all() and (four["nrot"] == 18).all()
    for key, a in one["props"].items():
        np.testing.assert_allclose(four["props"][key], a, rtol=1e-10, atol=1e-14, err_msg=key)
    for b in range(4):
        np.testing.assert_allclose(four["frc"][b], one["frc"][b], rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(four["pos"][b], one["pos"][b], rtol=1e-12)
    plain, avg = one["props"]["pot_component_raw(0)"], one["props"]["pot_component_raw(1)"]
    assert np.abs(plain - avg).min() > 1e-6  # the averaged force field is another one
    assert len(set(one["props"]["potential"])) == 3  # and the system moved


# ======================================================================================
# 2. Four routes, one answer
# ======================================================================================
@pytest.mark.timeout(150)
def test_socket_inprocess_pydriver_and_ase_agree(tmp_path, model, system, sock_prefix, reference):
    """``symbreak serve``, ``<ffdirect>`` with the PES file, ``i-pi-py_driver -m custom``
    and the ASE calculator: same energy, forces and virial on a triclinic cell, at every
    step of a short run (compared in atomic units)."""
    pes = pes_path()
    direct = f"""<ffdirect name='direct'><pes>custom</pes><pes_path>{pes}</pes_path>
    <parameters>{{template: init.xyz, model: {model}}}</parameters></ffdirect>"""
    xml = simulation(
        ffsocket("serve", "sv") + direct + ffsocket("pydriver", "py"),
        "".join(f"<force forcefield='{n}' weight='0.25'/>" for n in ("serve", "direct"))
        + "<force forcefield='pydriver' weight='0.5'/>",
        """
    <properties filename='out' stride='1'> [ step, pot_component_raw(0), pot_component_raw(1),
      pot_component_raw(2), vir_component_raw(0), vir_component_raw(1), vir_component_raw(2) ]
    </properties>
    <trajectory filename='pos' stride='1' format='bin'> positions </trajectory>
    <trajectory filename='f0' stride='1' format='bin'> forces_component_raw(0) </trajectory>
    <trajectory filename='f1' stride='1' format='bin'> forces_component_raw(1) </trajectory>
    <trajectory filename='f2' stride='1' format='bin'> forces_component_raw(2) </trajectory>""",
        prefix=sock_prefix,
        steps=2,
    )
    pydriver = [
        str(Path(sys.executable).with_name("i-pi-py_driver")),
        *("-m", "custom", "-P", str(pes), "-u", "-a", "py", "-S", sock_prefix),
        *("-o", f"template=init.xyz,model={model}"),
    ]
    with (
        run_ipi(xml, tmp_path, timeout=120) as ipi,
        processes(tmp_path, {"serve": serve_cmd(model, "sv", sock_prefix)}) as cl,
    ):
        # i-pi-py_driver connects once, without retrying: start it once i-PI listens
        wait_for(lambda: os.path.exists(f"{sock_prefix}py"), 60, "i-PI's socket")
        with processes(tmp_path, {"pydriver": pydriver}) as cl2:
            finish(ipi, cl | cl2)
    props = read_props(tmp_path / "sim.out")
    frames = read_bin(tmp_path / "sim.pos_0.bin")
    forces = [np.array([f for _, f in read_bin(tmp_path / f"sim.f{i}.bin")]) for i in range(3)]
    assert len(frames) == 3 and np.abs(np.triu(frames[0][0], 1)).max() > 0.5  # triclinic
    for k, (h, q) in enumerate(frames):
        e_ref, f_ref, v_ref = reference_au(reference, h, q)
        volume = abs(np.linalg.det(h))
        for i, route in enumerate(("serve", "ffdirect", "i-pi-py_driver")):
            what = f"{route}, frame {k}"
            assert props[f"pot_component_raw({i})"][k] == pytest.approx(e_ref, rel=1e-12), what
            np.testing.assert_allclose(forces[i][k], f_ref, rtol=1e-9, atol=1e-12, err_msg=what)
            virial = props[f"vir_component_raw({i})"][k] * volume
            np.testing.assert_allclose(virial, voigt6(v_ref), rtol=1e-9, atol=1e-12, err_msg=what)
    assert np.abs(v_ref).max() > 1e-3 and np.abs(f_ref).max() > 1e-3  # not trivially zero


# ======================================================================================
# 3. <ffrotations> vs symbreak's own averaging
# ======================================================================================
@pytest.mark.timeout(150)
def test_ffrotations_equals_symbreak_average(
    tmp_path, model, system, sock_prefix, ipi_prefix_addresses
):
    """i-PI rotates the cell and positions and averages a plain client; symbreak rotates
    edge vectors inside the model. Same grid ⇒ same energy (1e-8 eV), forces, virial.
    Lebedev 3 is served one rotation per request, Legendre 2 in one batched request."""
    leb, leg = ipi_prefix_addresses("leb"), ipi_prefix_addresses("leg")
    rotations = {
        "rot_leb": ("lebedev", 3, leb, ""),
        "rot_leg": ("legendre", 2, leg, "<batch_size>36</batch_size>"),
    }
    ffs = "".join(
        f"""<ffrotations name='{name}'><grid_mode>{mode}</grid_mode>
        <grid_order>{order}</grid_order><inversion>true</inversion>
        {ffsocket(name + "_in", addr, inner)}</ffrotations>"""
        for name, (mode, order, addr, inner) in rotations.items()
    )
    ffs += ffsocket("sb_leb", "sleb") + ffsocket("sb_leg", "sleg")
    forces = "".join(
        f"<force forcefield='{n}' weight='0.25'/>"
        for n in ("rot_leb", "sb_leb", "rot_leg", "sb_leg")
    )
    outputs = "<properties filename='out' stride='1'> [ step, " + ", ".join(
        f"pot_component_raw({i}), vir_component_raw({i})" for i in range(4)
    )
    outputs += " ] </properties>" + "".join(
        f"<trajectory filename='f{i}' stride='1' format='bin'> forces_component_raw({i})"
        "</trajectory>"
        for i in range(4)
    )
    outputs += "<trajectory filename='xr' stride='1' extra_type='n_rotations'>"
    outputs += " extras_component_raw(1) </trajectory>"
    xml = simulation(ffs, forces, outputs, prefix=sock_prefix, steps=2)
    clients = {
        "plain_leb": serve_cmd(model, leb, IPI_PREFIX),
        "plain_leg": serve_cmd(model, leg, IPI_PREFIX),
        "sb_leb": serve_cmd(model, "sleb", sock_prefix, "--average", "lebedev:3", "--inversion"),
        "sb_leg": serve_cmd(model, "sleg", sock_prefix, "--average", "legendre:2", "--inversion"),
    }
    with run_ipi(xml, tmp_path, timeout=120) as ipi, processes(tmp_path, clients) as cl:
        finish(ipi, cl)
    assert "batch size 36" in cl["plain_leg"].output()
    props = read_props(tmp_path / "sim.out")
    forces = [np.array([f for _, f in read_bin(tmp_path / f"sim.f{i}.bin")]) for i in range(4)]
    assert (np.array(extras_rows(tmp_path / "sim.xr")) == 36).all()
    for ipi_i, sb_i in ((0, 1), (2, 3)):
        e_ipi = props[f"pot_component_raw({ipi_i})"] * HARTREE_IN_EV
        e_sb = props[f"pot_component_raw({sb_i})"] * HARTREE_IN_EV
        np.testing.assert_allclose(e_sb, e_ipi, rtol=0, atol=1e-8)
        np.testing.assert_allclose(forces[sb_i], forces[ipi_i], rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(
            props[f"vir_component_raw({sb_i})"],
            props[f"vir_component_raw({ipi_i})"],
            rtol=1e-8,
            atol=1e-14,
        )
    # the two grids give different averages: the comparison above can tell grids apart
    e_leb, e_leg = props["pot_component_raw(1)"], props["pot_component_raw(3)"]
    assert np.abs(e_leb - e_leg).min() * HARTREE_IN_EV > 1e-6


# ======================================================================================
# 4. Run-time control of a live run
# ======================================================================================
@pytest.mark.timeout(180)
def test_control_toggles_a_live_run(tmp_path, model, system, sock_prefix):
    """One i-PI run goes plain → lebedev:3 → random → plain without restart, switched
    by ``symbreak control``; the extras record where each policy took effect."""
    xml = simulation(
        ffsocket("sb", "live"),
        "<force forcefield='sb'/>",
        """
    <trajectory filename='xa' stride='1' flush='1' extra_type='average'> extras </trajectory>
    <trajectory filename='xn' stride='1' flush='1'
      extra_type='n_rotations,call,policy_since_call,call_seconds'> extras </trajectory>""",
        prefix=sock_prefix,
        steps=1_000_000,
    )
    frames = tmp_path / "sim.xn_0"
    replies = []
    with (
        run_ipi(xml, tmp_path, timeout=150) as ipi,
        processes(tmp_path, {"serve": serve_cmd(model, "live", sock_prefix)}) as cl,
    ):
        for average, wait_frames in (("none", 25), ("lebedev:3", 15), ("random", 15), ("none", 15)):
            if average != "none" or replies:
                out = subprocess.run(
                    [sys.executable, "-m", "symbreak", "control", "--address", "live"]
                    + ["--socket-prefix", sock_prefix, "--average", average, "--wait", "20"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=subprocess_env(),
                )
                assert out.returncode == 0, out.stdout + out.stderr
                replies.append(json.loads(out.stdout)["clients"][0])
            start = count_frames(frames)
            wait_for(lambda n=start + wait_frames: count_frames(frames) >= n, 60, average)
        (tmp_path / "EXIT").touch()  # i-PI's own soft exit: EXIT to the client
        finish(ipi, cl)
    averages = extras_strings(tmp_path / "sim.xa_0")
    rows = np.array(extras_rows(frames))
    n = min(len(averages), len(rows))
    averages, rows = averages[:n], rows[:n]
    nrot, call, since, seconds = rows.T
    assert (call == np.arange(1, n + 1)).all()  # one request per MD step
    # contiguous segments of one policy, in the requested order
    cuts = [0] + [i for i in range(1, n) if averages[i] != averages[i - 1]] + [n]
    segments = [(averages[a], slice(a, b)) for a, b in zip(cuts, cuts[1:], strict=False)]
    assert [s for s, _ in segments] == ["none", "lebedev:3", "random", "none"]
    assert [set(nrot[s]) for _, s in segments] == [{1}, {18}, {1}, {1}]
    for (_, seg), reply in zip(segments[1:], replies, strict=True):
        first = seg.start
        assert since[first] == call[first]  # the policy applies from this request on
        assert set(since[seg]) == {call[first]}
        assert reply["applied"] and reply["state"]["policy_since_call"] == call[first]
    # Every call reports its own duration. (Not compared between policies: the tiny
    # model's calls last ~10 ms, and on a loaded machine 18 rotations measured 1.55x one.)
    assert np.all(np.isfinite(seconds)) and np.all(seconds > 0)


# ======================================================================================
# 5. Per-force-field policy from <parameters> (MTS)
# ======================================================================================
@pytest.mark.timeout(150)
def test_parameters_set_the_policy_per_forcefield(tmp_path, model, system, sock_prefix, reference):
    """MTS as in the study: the averaged model on the outer step (its policy from the
    <ffsocket>'s <parameters>), the plain one on the inner steps; both clients are
    started without --average."""
    params = "<parameters>{average: lebedev:3, inversion: true}</parameters>"
    xml = simulation(
        ffsocket("slow", "slow", params) + ffsocket("fast", "fast"),
        "<force forcefield='slow'><mts_weights>[1,0]</mts_weights></force>"
        "<force forcefield='fast'><mts_weights>[-1,1]</mts_weights></force>",
        """
    <properties filename='out' stride='1'> [ step, pot_component_raw(0), pot_component_raw(1) ]
    </properties>
    <trajectory filename='pos' stride='1' format='bin'> positions </trajectory>"""
        + "".join(
            f"""
    <trajectory filename='xa{i}' stride='1' extra_type='average'> extras_component_raw({i})
    </trajectory>
    <trajectory filename='xn{i}' stride='1' extra_type='n_rotations,call'>
      extras_component_raw({i}) </trajectory>"""
            for i in range(2)
        ),
        prefix=sock_prefix,
        steps=3,
        nmts="[1,3]",
    )
    clients = {n: serve_cmd(model, n, sock_prefix) for n in ("slow", "fast")}
    with run_ipi(xml, tmp_path, timeout=120) as ipi, processes(tmp_path, clients) as cl:
        finish(ipi, cl)
    assert "parameters ' average : lebedev:3 , inversion : True , '" in cl["slow"].output()
    assert set(extras_strings(tmp_path / "sim.xa0")) == {"lebedev:3+inv"}
    assert set(extras_strings(tmp_path / "sim.xa1")) == {"none"}
    slow, fast = (np.array(extras_rows(tmp_path / f"sim.xn{i}")) for i in range(2))
    assert (slow[:, 0] == 36).all() and (fast[:, 0] == 1).all()
    # the inner (plain) force field is called 3x as often as the outer (averaged) one
    assert slow[-1, 1] == 4 and fast[-1, 1] == 1 + 3 * 3
    # and the numbers are those of the two policies
    props = read_props(tmp_path / "sim.out")
    h, q = read_bin(tmp_path / "sim.pos_0.bin")[0]
    assert props["pot_component_raw(0)"][0] == pytest.approx(
        reference_au(reference, h, q, "lebedev:3+inv")[0], rel=1e-12
    )
    assert props["pot_component_raw(1)"][0] == pytest.approx(
        reference_au(reference, h, q, "none")[0], rel=1e-12
    )


# ======================================================================================
# 6. Faults
# ======================================================================================
def _ipi_long_run(sock_prefix: str, address: str) -> str:
    return simulation(
        ffsocket("sb", address),
        "<force forcefield='sb'/>",
        "<trajectory filename='xc' stride='1' flush='1' extra_type='call'> extras </trajectory>",
        prefix=sock_prefix,
        steps=1_000_000,
    )


@pytest.mark.timeout(120)
def test_server_killed_midrun(tmp_path, model, system, sock_prefix):
    frames = tmp_path / "sim.xc_0"
    with (
        run_ipi(_ipi_long_run(sock_prefix, "k"), tmp_path, timeout=100) as ipi,
        processes(tmp_path, {"serve": serve_cmd(model, "k", sock_prefix)}) as cl,
    ):
        wait_for(lambda: count_frames(frames) > 5, 60, "a few MD steps")
        hard_kill(ipi)  # no EXIT, no cleanup by i-PI
        t0 = time.monotonic()
        assert cl["serve"].wait(10) == EXIT_DISCONNECTED
        assert time.monotonic() - t0 < 5
    err = cl["serve"].stderr()
    assert "the server has exited or crashed" in err, err
    assert not os.path.exists(f"{sock_prefix}symbreak_ctl_k")  # the client cleaned up


@pytest.mark.timeout(240)
def test_client_killed_midrun_and_replaced(tmp_path, model, system, sock_prefix):
    """A client SIGKILLed in the middle of a request: i-PI waits (our timeout bounds
    it); a new ``symbreak serve`` on the same address (reclaiming the dead client's
    control socket) takes over the interrupted request and the run ends normally.

    The first client is killed while it computes: just after i-PI has written a step
    (and sent the next positions), in a step that averages over 150 rotations. Killed
    while replying, with i-PI's next message unread in its socket, the kernel would reset
    the connection and ipi 3.3.1's polling thread would die on the ConnectionResetError,
    hanging the run for good (an i-PI limitation; once in CI, killed 36 rotations in).
    """
    frames = tmp_path / "sim.xc_0"
    first = serve_cmd(model, "r", sock_prefix, "--average", "legendre:3", "--inversion")
    with (
        # i-PI's hard limit must outlast both waits below (a loaded CI core is slow)
        run_ipi(_ipi_long_run(sock_prefix, "r"), tmp_path, timeout=200) as ipi,
        processes(tmp_path, {"first": first}) as cl,
    ):
        wait_for(lambda: count_frames(frames) > 3, 60, "a few MD steps")
        written = count_frames(frames)
        wait_for(lambda: count_frames(frames) > written, 60, "the next MD step", interval=0.005)
        time.sleep(0.02)  # the next request is out: the client is computing
        hard_kill(cl["first"])
        stalled = count_frames(frames)
        time.sleep(1.5)
        assert ipi.poll() is None and count_frames(frames) <= stalled + 1  # waiting
        assert os.path.exists(f"{sock_prefix}symbreak_ctl_r")  # stale: nobody cleaned up
        second = {"second": serve_cmd(model, "r", sock_prefix)}
        with processes(tmp_path, second, limit=150) as cl2:
            wait_for(
                lambda: count_frames(frames) > stalled + 5,
                60,
                "the run to resume",
                logs=[ipi, cl2["second"]],
            )
            (tmp_path / "EXIT").touch()
            finish(ipi, cl2)
    calls = [int(c[0]) for c in extras_rows(frames)]
    restarts = [i for i in range(1, len(calls)) if calls[i] <= calls[i - 1]]
    assert len(restarts) == 1 and calls[restarts[0]] == 1  # the second client took over
    assert "control socket at" in cl2["second"].output()


class _FakeIPI:
    """Just enough of an i-PI server on a unix socket to feed one POSDATA."""

    def __init__(self, path: str):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.listener.settimeout(60)  # the client imports torch first
        self.conn: socket.socket | None = None

    def handshake(self) -> None:
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(30)
        self.conn.sendall(b"STATUS      ")
        assert self.conn.recv(12) == b"NEEDINIT    "
        init = np.int32(0).tobytes() + np.int32(1).tobytes() + b" "
        self.conn.sendall(b"INIT        " + init + b"STATUS      ")
        assert self.conn.recv(12) == b"READY       "

    def posdata(self, positions: np.ndarray) -> None:
        h = np.diag([20.0, 20.0, 20.0])
        self.conn.sendall(
            b"POSDATA     "
            + h.tobytes()
            + np.linalg.inv(h).tobytes()
            + np.int32(len(positions)).tobytes()
            + np.asarray(positions, float).tobytes()
            + b"GETFORCE    "
        )

    def closed_by_peer(self) -> bool:
        try:
            return self.conn.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        for s in (self.conn, self.listener):
            if s is not None:
                s.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "case,natoms,expected",
    [
        ("nan", 3, "non-finite position received from i-PI for atom index 1"),
        ("count", 5, "i-PI sent 5 atoms but the template has 3: wrong template structure?"),
    ],
)
def test_bad_request_ends_serve_with_message(case, natoms, expected, tmp_path, model, sock_prefix):
    """A NaN position or an atom count that does not match the species template: the
    client says so and exits with code 1 (the model never sees the structure)."""
    fake = _FakeIPI(f"{sock_prefix}bad")
    cmd = serve_cmd(model, "bad", sock_prefix, "--species", "O,H,H", template=None)
    try:
        with processes(tmp_path, {"serve": cmd}) as cl:
            fake.handshake()
            pos = np.random.default_rng(0).uniform(0, 5, (natoms, 3))
            if case == "nan":
                pos[1, 2] = np.nan
            fake.posdata(pos)
            assert cl["serve"].wait(20) == EXIT_ERROR
            assert fake.closed_by_peer()
    finally:
        fake.close()
    assert expected in cl["serve"].stderr(), cl["serve"].output()


@pytest.mark.timeout(90)
def test_startup_errors_exit_quickly(tmp_path, model):
    """A missing model or template file: a clear message and exit code 1 at once,
    without waiting for (or hanging on) a server that never comes."""
    commands = {
        "nomodel": serve_cmd(
            tmp_path / "missing.pt", "nm", "/tmp/nowhere_", "--species", "O,H,H", template=None
        ),
        "notemplate": serve_cmd(model, "nt", "/tmp/nowhere_", template=tmp_path / "none.xyz"),
    }
    t0 = time.monotonic()
    with processes(tmp_path, commands) as cl:
        assert cl["nomodel"].wait(60) == EXIT_ERROR
        assert cl["notemplate"].wait(60) == EXIT_ERROR
    assert time.monotonic() - t0 < 60
    assert "no model file" in cl["nomodel"].stderr() and "missing.pt" in cl["nomodel"].stderr()
    assert "template structure file" in cl["notemplate"].stderr()
    assert "Traceback" not in cl["nomodel"].stderr() + cl["notemplate"].stderr()
