"""Test utilities for running the real i-PI and symbreak's i-PI client, bounded in time.

- :class:`PairDriver`: an analytic, isotropic driver (smooth repulsive pair potential
  summed over all periodic images within a cutoff) with exact forces and virial.
- :class:`PolicyDriver`: the same, with ``set_policy``/``get_policy`` whose state shows up
  in the extras (to test the control channel).
- :class:`SlowDriver`: a driver whose compute announces itself and then sleeps (signals
  in the middle of a long model call).
- :class:`FakeServer`: a scripted i-PI stand-in on a unix socket (the test plays the server).
- :func:`control_server`: a live ControlServer with a :class:`ControlDriver`, and a thread
  that plays the force requests; :func:`ask` sends it one request line.
- :func:`run_ipi`: context manager that runs ``i-pi`` on an XML string in a directory,
  with a hard time limit and cleanup of the process and its unix socket files.
- :func:`client_process`: context manager that runs an :class:`IPIClient` with one of the
  drivers above in a subprocess (``python ipi_helpers.py client '<json>'``).
- :func:`short_tmpdir`: a short directory under /tmp for socket prefixes (unix socket
  paths are limited to 107 bytes, pytest's tmp_path is often too long).
- readers for i-PI output files and a writer for i-PI-style xyz input.

Every process started here runs under coreutils ``timeout`` in its own session, so it
dies even if the test process is killed, and is killed (whole process group) on exit from
the context manager, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
_BIN = Path(sys.executable).parent


def _which(cmd: str) -> str:
    found = shutil.which(cmd, path=f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise RuntimeError(f"{cmd!r} not found next to {sys.executable} or on PATH")
    return found


def subprocess_env() -> dict[str, str]:
    """Environment for subprocesses: one thread per process. symbreak comes from the
    installed package (the source tree lacks the compiled extension), as for a user."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ======================================================================================
# Analytic test drivers (Å, eV)
# ======================================================================================
class PairDriver:
    """E = 1/2 sum_{i,j,S} phi(|x_j - x_i + S.C|), phi(r) = A (1 - r^2/rc^2)^3 for r < rc.

    Isotropic, translation invariant, C2-smooth at the cutoff; sums over every periodic
    image within rc (any cell: triclinic, rotated, left handed), so it is exact for
    cutoffs larger than the cell. Forces and virial are analytic.
    """

    def __init__(self, rc: float = 3.2, amplitude: float = 0.4):
        self.rc = float(rc)
        self.amplitude = float(amplitude)
        self.init_calls: list[tuple[int, str]] = []
        self.batch_sizes: list[int] = []

    # ---- Driver protocol
    def init(self, bead_index: int, parameters: str) -> None:
        self.init_calls.append((bead_index, parameters))

    def compute(self, cells: np.ndarray, positions: np.ndarray) -> list[tuple]:
        self.batch_sizes.append(len(cells))
        out = []
        for cell, pos in zip(cells, positions, strict=True):
            e, f, v = self.energy_forces_virial(cell, pos)
            out.append((e, f, v, self.extras(cell, pos, e)))
        return out

    # ---- helpers
    def extras(self, cell: np.ndarray, pos: np.ndarray, energy: float) -> dict[str, Any]:
        upper = float(np.abs(np.triu(cell, 1)).max())  # 0 for i-PI's own cells
        return {
            "e_driver": energy,
            "natoms": len(pos),
            "cell_det": float(np.linalg.det(cell)),
            "cell_upper": upper,
            "batch": self.batch_sizes[-1] if self.batch_sizes else 1,
            "params": self.init_calls[-1][1] if self.init_calls else "",
        }

    def energy_forces_virial(
        self, cell: np.ndarray, pos: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        cell = np.asarray(cell, float)
        pos = np.asarray(pos, float)
        rc, a = self.rc, self.amplitude
        inv = np.linalg.inv(cell)
        frac = pos @ inv
        wrapped = (frac - np.floor(frac)) @ cell
        # plane spacings d_k = 1/|inv[:, k]|; fractional differences are in (-1, 1)
        nmax = [int(np.ceil(rc * np.linalg.norm(inv[:, k]))) + 1 for k in range(3)]
        rng = [np.arange(-n, n + 1) for n in nmax]
        shifts = np.stack(np.meshgrid(*rng, indexing="ij"), -1).reshape(-1, 3)
        svec = shifts @ cell  # [S, 3]
        d = wrapped[None, :, None, :] - wrapped[:, None, None, :] + svec[None, None]  # i,j,S
        r2 = np.einsum("ijsk,ijsk->ijs", d, d)
        n = len(pos)
        zero = np.all(shifts == 0, axis=1)
        self_mask = np.zeros_like(r2, dtype=bool)
        self_mask[np.arange(n), np.arange(n)] = zero
        mask = (r2 < rc * rc) & ~self_mask
        u = np.where(mask, 1.0 - r2 / (rc * rc), 0.0)
        energy = 0.5 * a * np.sum(u**3)
        # dphi/dr / r = A * 3 u^2 * (-2 / rc^2)
        g = np.where(mask, -6.0 * a * u**2 / (rc * rc), 0.0)  # phi'(r)/r
        forces = np.einsum("ijs,ijsk->ik", g, d)
        virial = -0.5 * np.einsum("ijs,ijsk,ijsl->kl", g, d, d)
        return float(energy), forces, virial

    def energy(self, cell: np.ndarray, pos: np.ndarray) -> float:
        return self.energy_forces_virial(cell, pos)[0]


class PolicyDriver(PairDriver):
    """PairDriver with a run-time policy reported in the extras (energy unchanged)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.policy: dict[str, Any] = {"average": "none", "inversion": False, "seed": None}

    def set_policy(self, **kwargs: Any) -> dict[str, Any]:
        unknown = set(kwargs) - set(self.policy)
        if unknown:
            raise ValueError(f"unknown policy keys {sorted(unknown)}")
        avg = kwargs.get("average", self.policy["average"])
        if not isinstance(avg, str) or not (
            avg in ("none", "random") or avg.split(":")[0] in ("lebedev", "legendre")
        ):
            raise ValueError(f"bad average {avg!r}")
        self.policy.update(kwargs)
        return dict(self.policy)

    def get_policy(self) -> dict[str, Any]:
        return dict(self.policy)

    def extras(self, cell: np.ndarray, pos: np.ndarray, energy: float) -> dict[str, Any]:
        x = super().extras(cell, pos, energy)
        x["policy_average"] = self.policy["average"]
        x["policy_inversion"] = bool(self.policy["inversion"])
        return x


class ZeroDriver:
    """Zero energy, forces and virial at no cost (to time the protocol overhead)."""

    def init(self, bead_index: int, parameters: str) -> None:
        pass

    def compute(self, cells: np.ndarray, positions: np.ndarray) -> list[tuple]:
        zero = np.zeros(positions.shape[1:])
        return [(0.0, zero, np.zeros((3, 3)), {})] * len(cells)


class SlowDriver(ZeroDriver):
    """Prints ``COMPUTE-STARTED`` (flushed) when compute starts, then spends ``delay`` s.

    ``native=True`` (default) spends it as a long model call does: in native code that
    releases the GIL and never returns to the interpreter (PBKDF2 in OpenSSL, calibrated
    to ``delay``), so a signal handler cannot run on that thread until it ends; with
    ``native=False`` it sleeps (``time.sleep`` is interrupted by signals)."""

    def __init__(self, delay: float = 60.0, native: bool = True):
        self.delay = float(delay)
        self.native = bool(native)

    def compute(self, cells: np.ndarray, positions: np.ndarray) -> list[tuple]:
        if self.native:
            import hashlib

            t0 = time.perf_counter()
            hashlib.pbkdf2_hmac("sha256", b"symbreak", b"salt", 20_000)
            rate = 20_000 / max(time.perf_counter() - t0, 1e-6)
            print("COMPUTE-STARTED", flush=True)
            hashlib.pbkdf2_hmac("sha256", b"symbreak", b"salt", int(rate * self.delay))
        else:
            print("COMPUTE-STARTED", flush=True)
            time.sleep(self.delay)
        return super().compute(cells, positions)


DRIVERS = {"pair": PairDriver, "policy": PolicyDriver, "zero": ZeroDriver, "slow": SlowDriver}


# ======================================================================================
# A scripted server
# ======================================================================================
class FakeServer:
    """A scripted i-PI stand-in on a unix socket (the test thread plays the server);
    messages are built with :mod:`symbreak.engines.ipi_protocol`."""

    def __init__(self, path: str):
        import socket

        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.listener.settimeout(10)
        self.conn: Any = None

    def accept(self) -> FakeServer:
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(10)
        return self

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.conn.recv(n - len(buf))
            if not chunk:
                break
            buf += chunk
        return buf

    def readinto(self, view: memoryview, what: str) -> None:
        """The codec's ``readinto`` over the connection (to decode replies)."""
        data = self.recv(len(view))
        if len(data) < len(view):
            raise EOFError(f"client closed the connection in the middle of {what}")
        view[:] = data

    def peer_closed(self) -> bool:
        """True if the client closed the connection (EOF, or a reset when it left our
        unread bytes behind)."""
        try:
            return self.conn.recv(1) == b""
        except ConnectionResetError:
            return True

    def handshake(self, params: bytes = b" ") -> None:
        from symbreak.engines import ipi_protocol as wire

        self.send(wire.STATUS)
        assert self.recv(12) == wire.NEEDINIT
        self.send(wire.INIT + np.int32(0).tobytes() + np.int32(len(params)).tobytes() + params)
        self.send(wire.STATUS)
        assert self.recv(12) == wire.READY

    def close(self) -> None:
        for s in (self.conn, self.listener):
            if s is not None:
                s.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


# ======================================================================================
# Control channel
# ======================================================================================
class ControlDriver:
    """set_policy/get_policy only (the control channel never computes)."""

    def __init__(self):
        self.policy = {"average": "none"}

    def set_policy(self, **kwargs):
        if "average" in kwargs and not isinstance(kwargs["average"], str):
            raise ValueError(f"bad average {kwargs['average']!r}")
        self.policy.update(kwargs)
        return dict(self.policy)

    def get_policy(self):
        return dict(self.policy)


@contextlib.contextmanager
def control_server(name: str, prefix: str, apply_every: float | None = 0.01, **kwargs):
    """A live ControlServer; with ``apply_every``, a thread plays the client's force
    requests (applies pending updates every ``apply_every`` s)."""
    from symbreak.engines.control import ControlServer, PolicySlot

    driver = ControlDriver()
    slot = PolicySlot(driver)
    slot.refresh_state(driver)
    server = ControlServer(name, prefix, slot, **kwargs)
    server.start()
    stop = threading.Event()
    applier = None
    if apply_every is not None:

        def apply() -> None:
            while not stop.wait(apply_every):
                slot.apply_pending(driver)

        applier = threading.Thread(target=apply, daemon=True)
        applier.start()
    try:
        yield server
    finally:
        stop.set()
        slot.fail_pending("test over")
        server.close()
        if applier is not None:
            applier.join(2)


def ask(path: str, line: bytes, timeout: float = 5.0) -> dict:
    """Send one request line to a control socket; the decoded reply."""
    import socket

    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(timeout)
        c.connect(path)
        try:
            c.sendall(line)
        except BrokenPipeError:  # refused at once: the reply is already there
            pass
        return json.loads(c.makefile("rb").readline())


# ======================================================================================
# Files
# ======================================================================================
def short_tmpdir(tag: str = "sb") -> str:
    """A fresh short directory under /tmp (caller removes it); ends with '/'."""
    return tempfile.mkdtemp(prefix=f"{tag}", dir="/tmp") + "/"


def unique_name(tag: str = "t") -> str:
    """A short address unique to this process and moment (for /tmp/ipi_<name> sockets)."""
    return f"sbt{tag}{os.getpid()}_{time.monotonic_ns() % 10**9}"


def write_ipi_xyz(
    path: Path, symbols: Sequence[str], positions: np.ndarray, cell_rows: np.ndarray
) -> None:
    """i-PI xyz with the exact cell: ``# CELL(H):`` takes h (lattice vectors as columns,
    C order, upper triangular for i-PI's cell) in the same units as the positions (Å)."""
    h = np.asarray(cell_rows, float).T
    if np.abs(np.tril(h, -1)).max() > 0:
        raise ValueError("give a lower-triangular row cell (i-PI wants an upper-triangular h)")
    lines = [
        str(len(symbols)),
        "# CELL(H): "
        + " ".join(f"{x:.16e}" for x in h.ravel())
        + " cell{angstrom} positions{angstrom}",
    ]
    for s, p in zip(symbols, np.asarray(positions, float), strict=True):
        lines.append(f"{s} {p[0]:.16e} {p[1]:.16e} {p[2]:.16e}")
    Path(path).write_text("\n".join(lines) + "\n")


def read_properties(path: Path) -> dict[str, np.ndarray]:
    """Columns of an i-PI properties file, keyed by the names in its header."""
    names: list[str] = []
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            # "# column   2     --> potential{electronvolt} : ..."
            parts = line.split("-->")
            if len(parts) > 1:
                names.append(parts[1].split(":")[0].strip())
            continue
        if line.strip():
            rows.append([float(x) for x in line.split()])
    data = np.array(rows, float).reshape(len(rows), -1)
    return {n: data[:, k] for k, n in enumerate(names)}


def read_json_trajectory(path: Path) -> list[dict[str, Any]]:
    """Frames of an i-PI ``format='json'`` trajectory: dicts with 'q' (flat), 'cell' (abc)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def read_extras(path: Path) -> list[tuple[int, str]]:
    """(step, body) blocks of an i-PI extras trajectory file."""
    blocks: list[tuple[int, str]] = []
    step, body = None, []
    for line in Path(path).read_text().splitlines():
        if line.lstrip().startswith("#EXTRAS"):
            if step is not None:
                blocks.append((step, "\n".join(body).strip()))
            step, body = int(line.split("Step:")[1].split()[0]), []
        else:
            body.append(line)
    if step is not None:
        blocks.append((step, "\n".join(body).strip()))
    return blocks


# ======================================================================================
# Processes
# ======================================================================================
def _kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _bounded(cmd: list[str], limit: float) -> list[str]:
    """Wrap ``cmd`` in coreutils timeout (if present) so it dies even if we do."""
    tmo = shutil.which("timeout")
    if tmo is None:
        return cmd
    return [tmo, "--kill-after=5", f"{limit:.0f}", *cmd]


class Proc:
    """A started process with its log files."""

    def __init__(self, proc: subprocess.Popen, stdout: Path, stderr: Path, name: str):
        self.proc, self.stdout_path, self.stderr_path, self.name = proc, stdout, stderr, name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def output(self) -> str:
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        err = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return out + err

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def wait(self, timeout: float) -> int:
        """Wait for exit; on timeout kill it and raise with the log tail."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc)
            raise AssertionError(
                f"{self.name} did not finish within {timeout} s; log tail:\n{self.output()[-3000:]}"
            ) from None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process itself (not the coreutils timeout wrapper)."""
        # the wrapper forwards TERM/INT/HUP/... to its child
        self.proc.send_signal(sig)

    def kill(self) -> None:
        _kill_group(self.proc, grace=0.0)


def start_process(cmd: list[str], workdir: Path, name: str, limit: float) -> Proc:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"{name}.out"
    err = workdir / f"{name}.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(
            _bounded(cmd, limit),
            cwd=workdir,
            stdout=fo,
            stderr=fe,
            stdin=subprocess.DEVNULL,
            env=subprocess_env(),
            start_new_session=True,
        )
    return Proc(proc, out, err, name)


def ipi_socket_paths(xml_text: str, sockets_prefix: str | None = None) -> list[str]:
    """Unix socket files an i-PI input will create (``-S`` value in ``sockets_prefix``).

    Top-level ``<ffsocket>`` use the simulation's prefix (default /tmp/ipi_); an
    ``<ffsocket>`` nested in ``<ffrotations>`` always uses /tmp/ipi_ (ipi 3.3.1).
    """
    root = ET.fromstring(xml_text)
    prefix = sockets_prefix or root.get("sockets_prefix", "/tmp/ipi_")
    paths = []
    for parent in root.iter():
        for ff in parent.findall("ffsocket"):
            if ff.get("mode", "inet") not in ("unix", "shm"):
                continue
            addr = (ff.findtext("address") or "localhost").strip()
            paths.append(("/tmp/ipi_" if parent.tag != "simulation" else prefix) + addr)
    return paths


@contextlib.contextmanager
def run_ipi(
    xml_text: str,
    workdir: Path,
    timeout: float = 60.0,
    args: Sequence[str] = (),
    files: dict[str, str] | None = None,
) -> Iterator[Proc]:
    """Run ``i-pi input.xml`` in ``workdir`` (with ``files`` written there first).

    The process gets a hard limit of ``timeout`` seconds (it is killed after that even if
    the caller is gone); on leaving the block it is terminated if still running and the
    unix socket files its input declares are removed. Use ``proc.wait(t)`` to wait for a
    normal end.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (workdir / name).write_text(text)
    (workdir / "input.xml").write_text(xml_text)
    override = None
    args = list(args)
    for flag in ("-S", "--sockets_prefix"):
        if flag in args:
            override = args[args.index(flag) + 1]
    sockets = ipi_socket_paths(xml_text, override)
    proc = start_process([_which("i-pi"), "input.xml", *args], workdir, "ipi", timeout)
    try:
        yield proc
    finally:
        _kill_group(proc.proc)
        for path in sockets:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def wait_for(
    predicate, timeout: float, what: str, interval: float = 0.05, logs: Sequence[Proc] = ()
) -> None:
    """Poll ``predicate`` until true; raise AssertionError naming ``what`` on timeout,
    with the log tails of the processes in ``logs`` (what they were doing)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tails = "".join(
                f"\n--- {p.name} (exit {p.poll()}) log tail:\n{p.output()[-2000:]}" for p in logs
            )
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{tails}")
        time.sleep(interval)


@contextlib.contextmanager
def client_process(
    workdir: Path,
    address: str,
    sockets_prefix: str = "/tmp/ipi_",
    driver: str = "pair",
    driver_kwargs: dict[str, Any] | None = None,
    timeout: float = 60.0,
    name: str = "client",
    **client_kwargs: Any,
) -> Iterator[Proc]:
    """Run an IPIClient with a test driver in a subprocess; killed on exit from the block."""
    cfg = {
        "address": address,
        "sockets_prefix": sockets_prefix,
        "driver": driver,
        "driver_kwargs": driver_kwargs or {},
        "client_kwargs": client_kwargs,
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "client", json.dumps(cfg)]
    proc = start_process(cmd, workdir, name, timeout)
    try:
        yield proc
    finally:
        _kill_group(proc.proc)


def _client_main(cfg: dict[str, Any]) -> int:
    import logging

    from symbreak.engines.ipi_client import IPIClient

    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    driver = DRIVERS[cfg["driver"]](**cfg["driver_kwargs"])
    client = IPIClient(
        driver, cfg["address"], sockets_prefix=cfg["sockets_prefix"], **cfg["client_kwargs"]
    )
    rc = client.run()
    print(f"CLIENT-EXIT rc={rc} requests={client.n_requests}", flush=True)
    if client.driver_busy:  # as `symbreak serve`: do not wait for an abandoned model call
        sys.stderr.flush()
        os._exit(rc)
    return rc


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "client":
        sys.exit(_client_main(json.loads(sys.argv[2])))
    sys.exit(f"usage: {sys.argv[0]} client '<json config>'")
