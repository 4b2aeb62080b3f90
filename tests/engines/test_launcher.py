"""``symbreak run`` (the launcher) and ``symbreak demo`` against the real i-PI 3.3.1.

Every run uses a tiny random model (``--model``) and a short ``--steps``; the launcher
itself runs as a subprocess (``python -m symbreak.engines.run_cli run ...``, the same
code as ``symbreak run``), bounded in time. After each run the test checks that no
process is left in the run directory (i-PI and the clients run there) and that no
socket file of the run's private tag is left in /tmp, and that the exit code says what
happened:

- success, two launchers on the same input at once (private sockets: no collision);
- each input in ``ipi_inputs/`` smoke-runs a few steps (the 512-molecule MTS one is
  marked ``slow``: ``python -m pytest -m slow tests/engines/test_launcher.py``);
- a client killed mid-run (exit 3), i-PI killed mid-run (exit 2), an EXIT file (exit 5),
  SIGINT to the launcher (exit 130, i-PI's soft-exit checkpoint written), ``--timeout``
  (exit 4);
- the cluster recipe over loopback: i-PI on a free TCP port (``--inet --clients 0``)
  and two ``symbreak serve --inet`` clients that both get work;
- input errors (missing files, no ``<ffsocket>``, i-PI not installed, ``--steps`` below
  1, an address already taken with ``--keep-prefix``) before any start;
- ``symbreak demo`` on a tiny model prints its comparison table.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from ipi_helpers import REPO, Proc, start_process, unique_name, wait_for

from helpers import export_tiny
from symbreak import exit_codes
from symbreak.engines import processes, run_cli
from symbreak.engines.ipi_xml import LaunchError, prepare_input, read_input
from symbreak.engines.launcher import Launcher, LaunchOptions
from symbreak.engines.progress import PROGRESS_NAME

INPUTS = REPO / "ipi_inputs"
LAUNCH = [sys.executable, "-m", "symbreak.engines.run_cli"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("launcher_model") / "tiny.pt")


# ======================================================================================
# helpers
# ======================================================================================
def start_run(
    tmp_path: Path, input_xml: Path, model: Path, *args: str, name: str = "launcher", limit=150
) -> tuple[Proc, Path]:
    """Start ``symbreak run`` on ``input_xml`` with run directory ``tmp_path/<name>``."""
    run_dir = tmp_path / f"{name}_run"
    cmd = [*LAUNCH, "run", str(input_xml), "--model", str(model), "--threads", "1"]
    cmd += ["--run-dir", str(run_dir), "--progress", "lines", "--progress-interval", "0"]
    return start_process(cmd + list(args), tmp_path, name, limit), run_dir


def run_tag(output: str) -> str:
    """The run's private socket tag, from the sockets the launcher announces."""
    m = re.search(r"/tmp/ipi_(?:symbreak_ctl_)?(sb\d+_[0-9a-f]+_)", output)
    if m is None:
        m = re.search(r"--socket-prefix /tmp/ipi_(sb\d+_[0-9a-f]+_)", output)
    assert m, f"no private socket tag in the launcher output:\n{output[-3000:]}"
    return m.group(1)


def processes_in(run_dir: Path) -> list[str]:
    """Processes whose working directory is ``run_dir`` (i-PI and the clients)."""
    found = []
    target = str(Path(run_dir).resolve())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == target:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                found.append(f"{pid}: {cmd.decode(errors='replace')}")
        except OSError:
            continue
    return found


def assert_clean(run_dir: Path, output: str) -> None:
    """No process left in the run directory and no socket file of the run's tag."""
    tag = run_tag(output)
    deadline = time.monotonic() + 5.0
    while processes_in(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes_in(run_dir), processes_in(run_dir)
    left = glob.glob(f"/tmp/ipi_{tag}*") + glob.glob(f"/tmp/ipi_symbreak_ctl_{tag}*")
    assert not left, f"socket files left: {left}"


def progress_steps(run_dir: Path) -> int:
    """Data rows written to the launcher's progress output so far."""
    path = run_dir / f"sim.{PROGRESS_NAME}"
    try:
        return sum(1 for line in path.read_text().splitlines() if line and line[0] != "#")
    except FileNotFoundError:
        return 0


def find_process(run_dir: Path, needle: str) -> int:
    """pid of the process in ``run_dir`` whose command line contains ``needle``."""
    for entry in processes_in(run_dir):
        pid, cmd = entry.split(": ", 1)
        if needle in cmd:
            return int(pid)
    raise AssertionError(f"no '{needle}' process in {run_dir}: {processes_in(run_dir)}")


def finished(proc: Proc, timeout: float = 120) -> tuple[int, str]:
    rc = proc.wait(timeout)
    return rc, proc.output()


def data_rows(path: Path) -> list[list[float]]:
    return [
        [float(x) for x in line.split()]
        for line in Path(path).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


# ======================================================================================
# input errors: nothing starts
# ======================================================================================
def test_input_errors_are_named(tmp_path, tiny, monkeypatch, capsys):
    def run(*args: str) -> str:
        assert run_cli.main(["run", *args, "--model", str(tiny)]) == exit_codes.USAGE
        return capsys.readouterr().err

    assert "does not exist" in run(str(tmp_path / "nope.xml"))
    (tmp_path / "bad.xml").write_text("<simulation><oops></simulation>")
    assert "not a valid XML" in run(str(tmp_path / "bad.xml"))
    (tmp_path / "nosock.xml").write_text(
        "<simulation><ffdirect name='d'><pes>dummy</pes></ffdirect></simulation>"
    )
    assert "no <ffsocket>" in run(str(tmp_path / "nosock.xml"))
    xml = (INPUTS / "nvt_water64" / "input.xml").read_text()
    (tmp_path / "nostruct.xml").write_text(xml)  # water_64h2o.xyz is not next to it
    err = run(str(tmp_path / "nostruct.xml"), "--run-dir", str(tmp_path / "r"))
    assert "initial structure file" in err and "water_64h2o.xyz" in err
    err = run_cli.main(["run", str(INPUTS / "nvt_water64" / "input.xml"), "--model", "nomodel"])
    assert err == exit_codes.USAGE and "model 'nomodel' not found" in capsys.readouterr().err
    shm = xml.replace("mode='unix'", "mode='shm'")
    (tmp_path / "shm.xml").write_text(shm)
    assert "mode='shm'" in run(str(tmp_path / "shm.xml"))
    monkeypatch.setattr(processes.sys, "executable", "/nonexistent/bin/python")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LaunchError, match="i-PI is not installed"):
        processes.find_ipi()


def test_rewrite_makes_sockets_private(tmp_path):
    """Top-level unix sockets get the private prefix, nested ones (which ignore it) a
    private address, inet ones a free port; the files i-PI reads become absolute."""
    xml = tmp_path / "in.xml"
    (tmp_path / "s.xyz").write_text("1\n\nO 0 0 0\n")
    xml.write_text(
        """<simulation>
  <ffsocket name='a' mode='unix'><address>top</address></ffsocket>
  <ffrotations name='r'><ffsocket name='b' mode='unix'><address>in</address></ffsocket>
  </ffrotations>
  <ffsocket name='c' mode='inet'><address>localhost</address><port>31415</port></ffsocket>
  <system><initialize nbeads='1'><file mode='xyz'>s.xyz</file></initialize></system>
</simulation>"""
    )
    inp = read_input(xml)
    text = prepare_input(inp, tag="sbT_")
    a, b, c = inp.sockets
    assert (a.socket_path, a.prefix) == ("/tmp/ipi_sbT_t_top", "/tmp/ipi_sbT_t_")
    assert (b.nested, b.socket_path, b.prefix) == (True, "/tmp/ipi_sbT_n_in", "/tmp/ipi_")
    assert c.mode == "inet" and c.port != 31415 and f"<port>{c.port}</port>" in text
    assert 'sockets_prefix="/tmp/ipi_sbT_t_"' in text and str(tmp_path / "s.xyz") in text
    assert f'filename="{PROGRESS_NAME}"' in text


@pytest.mark.parametrize("steps", ["0", "-1"])
def test_steps_below_one_is_a_usage_error(tmp_path, tiny, capsys, steps):
    """i-PI takes <total_steps> 0 as a run already done (exit 2): refused up front."""
    run_dir = tmp_path / "r"
    args = ["run", str(INPUTS / "nvt_water64" / "input.xml"), "--model", str(tiny)]
    assert run_cli.main([*args, "--steps", steps, "--run-dir", str(run_dir)]) == exit_codes.USAGE
    assert f"--steps must be >= 1 (got {steps})" in capsys.readouterr().err
    assert not run_dir.exists()  # nothing was written, nothing started
    with pytest.raises(LaunchError, match="--steps"):
        Launcher(INPUTS / "nvt_water64" / "input.xml", LaunchOptions(model=str(tiny), steps=0))


def _keep_prefix_input(tmp_path: Path, socket_xml: str) -> Path:
    """nvt_water64 with its <ffsocket> replaced by ``socket_xml`` (name 'symbreak')."""
    xml = (INPUTS / "nvt_water64" / "input.xml").read_text()
    xml = xml.replace("water_64h2o.xyz", str(INPUTS / "nvt_water64" / "water_64h2o.xyz"))
    xml = re.sub(r"<ffsocket .*?</ffsocket>", socket_xml, xml, flags=re.S)
    path = tmp_path / "keep.xml"
    path.write_text(xml)
    return path


def test_keep_prefix_with_a_live_unix_socket_starts_nothing(tmp_path, tiny):
    """Another process listens at the run's socket path (as another run's i-PI would):
    the launcher stops at once with a usage error naming the socket, and no client (and
    no i-PI) is started, so nothing can attach to the other server."""
    address = unique_name("busy")
    path = f"/tmp/ipi_{address}"
    xml = _keep_prefix_input(
        tmp_path, f"<ffsocket name='symbreak' mode='unix'><address>{address}</address></ffsocket>"
    )
    dummy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        dummy.bind(path)
        dummy.listen(1)
        dummy.setblocking(False)
        t0 = time.monotonic()
        proc, run_dir = start_run(tmp_path, xml, tiny, "--keep-prefix", limit=60)
        rc, out = finished(proc, 60)
        assert rc == exit_codes.USAGE, out[-3000:]
        assert time.monotonic() - t0 < 30, "not a prompt exit"
        assert f"unix socket {path} is in use" in out and "--keep-prefix" in out
        assert not run_dir.exists() and not processes_in(run_dir)  # no i-PI, no client
        with pytest.raises(BlockingIOError):
            dummy.accept()  # and nothing connected to the other server
    finally:
        dummy.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def test_keep_prefix_with_a_leftover_socket_file_or_busy_port(tmp_path, tiny, capsys):
    """A socket file nobody listens on (i-PI could not bind it either), and a TCP port in
    use: both usage errors naming the address, before anything starts."""
    address = unique_name("stale")
    path = f"/tmp/ipi_{address}"
    xml = _keep_prefix_input(
        tmp_path, f"<ffsocket name='symbreak' mode='unix'><address>{address}</address></ffsocket>"
    )
    args = ["run", str(xml), "--model", str(tiny), "--keep-prefix", "--run-dir", str(tmp_path)]
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stale.bind(path)
        stale.close()  # the file stays, nobody listens
        assert run_cli.main(args) == exit_codes.USAGE
        assert f"unix socket {path} exists but no process listens" in capsys.readouterr().err
    finally:
        stale.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("localhost", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        xml = _keep_prefix_input(
            tmp_path,
            "<ffsocket name='symbreak' mode='inet'><address>localhost</address>"
            f"<port>{port}</port></ffsocket>",
        )
        assert run_cli.main(args) == exit_codes.USAGE
        assert f"TCP port localhost:{port} is in use" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.log"))


# ======================================================================================
# success, and two runs of the same input at once
# ======================================================================================
def test_two_parallel_runs_of_one_input_complete(tmp_path, tiny):
    """Two launchers on one input at once, whose force is a top-level <ffsocket> plus one
    nested in i-PI's <ffrotations> (fixed /tmp/ipi_ prefix): both complete, no collision."""
    xml = (INPUTS / "nvt_water64" / "input.xml").read_text()
    xml = xml.replace("water_64h2o.xyz", str(INPUTS / "nvt_water64" / "water_64h2o.xyz"))
    # (i-PI cannot merge the extras of the two force fields into one trajectory)
    xml = re.sub(r"<trajectory filename='diag'.*?</trajectory>", "", xml, flags=re.S)
    nested = (
        "<ffrotations name='rot'><random>true</random>"
        "<ffsocket name='inner' mode='unix'><address>inner</address></ffsocket>"
        "</ffrotations>"
    )
    xml = xml.replace("<system>", nested + "\n  <system>", 1)
    xml = xml.replace(
        "<force forcefield='symbreak'/>",
        "<force forcefield='symbreak' weight='0.5'/><force forcefield='rot' weight='0.5'/>",
    )
    (tmp_path / "two.xml").write_text(xml)
    runs = [
        start_run(tmp_path, tmp_path / "two.xml", tiny, "--steps", "10", name=f"r{i}")
        for i in (0, 1)
    ]
    outputs = []
    for proc, run_dir in runs:
        rc, out = finished(proc)
        assert rc == exit_codes.OK, out[-4000:]
        assert "i-PI completed" in out
        tag = run_tag(out)
        assert f"unix socket /tmp/ipi_{tag}t_water64" in out  # top level: private prefix
        assert f"unix socket /tmp/ipi_{tag}n_inner" in out  # nested: renamed
        rows = data_rows(run_dir / "sim.out")
        assert rows[-1][0] == 10  # the input's own output reached the last step (stride 10)
        assert progress_steps(run_dir) == 11  # steps 0..10
        assert "step 10/10" in out
        for log in ("client_symbreak_0.log", "client_inner_0.log"):
            assert "EXIT after 11 requests" in (run_dir / log).read_text()
        assert_clean(run_dir, out)
        outputs.append(out)
    assert run_tag(outputs[0]) != run_tag(outputs[1])


# ======================================================================================
# every shipped input smoke-runs
# ======================================================================================
SMOKE = {  # input folder: steps
    "nvt_water64": 10,
    "pimd_water64": 3,
    "molecule_nve": 20,
    "molecule_nvt": 20,
    "ice_geop": 2,
}


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_input_smoke_runs(tmp_path, tiny, name):
    steps = SMOKE[name]
    proc, run_dir = start_run(tmp_path, INPUTS / name / "input.xml", tiny, "--steps", str(steps))
    rc, out = finished(proc)
    assert rc == exit_codes.OK, out[-4000:]
    assert_clean(run_dir, out)
    assert progress_steps(run_dir) == steps + 1  # steps 0..steps
    rows = data_rows(run_dir / "sim.out")
    logs = {p.name: p.read_text() for p in run_dir.glob("client_*.log")}
    if name == "pimd_water64":
        assert "batch size 8" in logs["client_symbreak_0.log"]  # all beads in one request
    if name == "molecule_nve":
        # the weight-0 averaged force field is evaluated whenever it is printed, and
        # differs from the plain one; the plain one alone drives the dynamics
        pot, plain, avg = zip(*[(r[4], r[5], r[6]) for r in rows], strict=True)
        assert pot == plain and all(abs(p - a) > 0 for p, a in zip(plain, avg, strict=True))
        assert f"EXIT after {steps + 1} requests" in logs["client_plain_0.log"]
        assert f"EXIT after {steps // 10 + 1} requests" in logs["client_avg_0.log"]
        assert "lebedev:5+inv" in (run_dir / "sim.diagavg").read_text()
    if name.startswith("molecule"):
        assert all("--no-pbc" in line for line in out.splitlines() if " serve " in line)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mts_512_water_smoke(tmp_path, tiny):
    """The MTS recipe on 1536 atoms, 2 outer steps (50 s to 2 min here, tiny model)."""
    xml = INPUTS / "mts_water512" / "input.xml"
    proc, run_dir = start_run(tmp_path, xml, tiny, "--steps", "2", "--timeout", "500", limit=560)
    rc, out = finished(proc, 560)
    assert rc == exit_codes.OK, out[-4000:]
    assert_clean(run_dir, out)
    logs = {p.name: p.read_text() for p in run_dir.glob("client_*.log")}
    # averaged model: once per outer step; plain: every inner step (outer reuses them)
    assert "EXIT after 3 requests" in logs["client_averaged_0.log"]
    assert "EXIT after 21 requests" in logs["client_plain_0.log"]


# ======================================================================================
# failures and interruptions
# ======================================================================================
LONG = ("--steps", "100000")


def _start_long(tmp_path, tiny, *args: str) -> tuple[Proc, Path]:
    proc, run_dir = start_run(tmp_path, INPUTS / "nvt_water64" / "input.xml", tiny, *LONG, *args)
    wait_for(lambda: progress_steps(run_dir) >= 3 or proc.poll() is not None, 90, "3 MD steps")
    assert proc.poll() is None, proc.output()[-3000:]
    return proc, run_dir


def test_client_killed_mid_run(tmp_path, tiny):
    proc, run_dir = _start_long(tmp_path, tiny)
    os.kill(find_process(run_dir, " serve "), signal.SIGKILL)
    rc, out = finished(proc, 60)
    assert rc == exit_codes.RUN_CLIENT_FAILED, out[-3000:]
    assert "client symbreak failed (killed by SIGKILL)" in out
    assert_clean(run_dir, out)


def test_ipi_killed_mid_run(tmp_path, tiny):
    proc, run_dir = _start_long(tmp_path, tiny)
    os.kill(find_process(run_dir, "i-pi"), signal.SIGKILL)
    rc, out = finished(proc, 60)
    assert rc == exit_codes.RUN_IPI_FAILED, out[-3000:]
    assert "i-pi failed (killed by SIGKILL)" in out
    assert_clean(run_dir, out)  # i-PI's own socket file included


def test_sigint_stops_cleanly(tmp_path, tiny):
    proc, run_dir = _start_long(tmp_path, tiny)
    proc.signal(signal.SIGINT)
    rc, out = finished(proc, 60)
    assert rc == 128 + signal.SIGINT, out[-3000:]
    assert "received SIGINT" in out
    # i-PI's soft-exit checkpoint. Seen missing once in ~15 CI runs (not reproduced in 10
    # local runs, 6 of them on loaded cores): keep i-PI's own account for the next time.
    ipi_log = run_dir / "ipi.log"
    tail = ipi_log.read_text()[-3000:] if ipi_log.is_file() else "(no ipi.log)"
    assert (run_dir / "RESTART").is_file(), f"{out[-2000:]}\n--- ipi.log ---\n{tail}"
    assert_clean(run_dir, out)


def test_exit_file_stops_early(tmp_path, tiny):
    """i-PI's own soft exit (an EXIT file in its directory) before the last step."""
    proc, run_dir = _start_long(tmp_path, tiny)
    (run_dir / "EXIT").touch()
    rc, out = finished(proc, 60)
    assert rc == exit_codes.RUN_STOPPED_EARLY, out[-3000:]
    assert "i-PI stopped early" in out and "EXIT file" in out
    assert_clean(run_dir, out)


def test_timeout(tmp_path, tiny):
    proc, run_dir = start_run(
        tmp_path, INPUTS / "nvt_water64" / "input.xml", tiny, *LONG, "--timeout", "12"
    )
    rc, out = finished(proc, 60)
    assert rc == exit_codes.RUN_TIMEOUT, out[-3000:]
    assert "--timeout 12 s elapsed" in out and (run_dir / "RESTART").is_file()
    assert_clean(run_dir, out)


# ======================================================================================
# beyond one machine: the inet recipe over loopback
# ======================================================================================
def test_inet_server_with_two_remote_clients(tmp_path, tiny):
    """`symbreak run --inet --clients 0` (server only, free TCP port) + two
    `symbreak serve --inet --host localhost --port P` started separately; 4 beads,
    unbatched, so that both clients get requests."""
    xml = (INPUTS / "pimd_water64" / "input.xml").read_text()
    xml = xml.replace("nbeads='8'", "nbeads='4'").replace("<batch_size>8</batch_size>", "")
    xml = xml.replace("water_64h2o.xyz", str(INPUTS / "pimd_water64" / "water_64h2o.xyz"))
    (tmp_path / "inet.xml").write_text(xml)
    server, run_dir = start_run(
        tmp_path, tmp_path / "inet.xml", tiny, "--inet", "--clients", "0", "--steps", "6"
    )
    wait_for(lambda: "clients connect to" in server.output(), 60, "the server's address")
    m = re.search(r"clients connect to (\S+):(\d+)", server.output())
    host, port = m.group(1), m.group(2)
    clients = [
        start_process(
            [sys.executable, "-m", "symbreak", "serve", "--inet", "--host", host]
            + ["--port", port, "--address", host, "--model", str(tiny), "--threads", "1"]
            + ["--template", str(INPUTS / "pimd_water64" / "water_64h2o.xyz")]
            + ["--socket-prefix", f"/tmp/ipi_{run_tag(server.output())}"],
            tmp_path,
            f"node{i}",
            120,
        )
        for i in (1, 2)
    ]
    try:
        rc, out = finished(server)
        assert rc == exit_codes.OK, out[-3000:]
        requests = []
        for c in clients:
            assert c.wait(30) == exit_codes.OK, c.output()[-3000:]
            requests.append(int(re.search(r"EXIT after (\d+) requests", c.output()).group(1)))
        assert sum(requests) == 4 * 7 and min(requests) > 0, requests
        assert_clean(run_dir, out)
    finally:
        for c in clients:
            c.kill()


# ======================================================================================
# the demo
# ======================================================================================
def test_demo_prints_the_comparison(tmp_path, tiny):
    cmd = [*LAUNCH, "demo", "--model", str(tiny), "--beads", "2", "--steps", "6"]
    cmd += ["--switch-at", "2", "--threads", "1", "--run-dir", str(tmp_path / "demo")]
    proc = start_process(cmd, tmp_path, "demo", 150)
    rc, out = finished(proc, 150)
    assert rc == exit_codes.OK, out[-4000:]
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("averaging "))
    rows = {line.split()[0]: line.split() for line in lines[head + 3 : head + 5]}
    assert set(rows) == {"none", "lebedev:3"}
    assert rows["none"][2] == "1" and rows["lebedev:3"][2] == "18"
    assert rows["none"][3] == "-" and float(rows["lebedev:3"][3]) > 0  # spread only averaged
    assert "cost of averaging" in out
    assert not processes_in(tmp_path / "demo")
