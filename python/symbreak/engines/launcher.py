"""``symbreak run``: start i-PI and the symbreak clients of its input together.

The launcher reads an i-PI XML input, writes a private copy of it into a run directory,
starts ``i-pi`` on that copy and one (or ``--clients N``) ``symbreak serve`` process per
``<ffsocket>``, shows the progress of the simulation, and ends everything when the run
completes, when any process fails, on ``--timeout`` and on SIGINT/SIGTERM/SIGHUP.

Isolation (parallel runs never collide): unless ``--keep-prefix`` is given,

- top-level unix sockets live under a private prefix ``/tmp/ipi_sb<pid>_<random>_t_``
  (``<simulation sockets_prefix=...>``; the path is ``prefix + address``, i-PI 3.3.1);
- an ``<ffsocket>`` nested in another force field (``<ffrotations>``, ``<ffcommittee>``)
  ignores ``sockets_prefix`` and always lives at ``/tmp/ipi_<address>``: its address is
  rewritten to ``sb<pid>_<random>_n_<address>``;
- inet sockets get a free TCP port.

The clients' run-time control sockets (``symbreak control``) are created under the same
private names. Every file that matches the run's tag is removed at the end, pass or fail.

What is rewritten in the copy (``<run-dir>/input.xml``): the sockets (above), relative
file paths of ``<initialize>`` and ``<pes_path>`` (made absolute), optionally
``<total_steps>`` (``--steps``) and the initial structure (``--structure``); a
properties output ``<prefix>.sbprogress`` (step, time, temperature, conserved quantity,
potential) is added for the progress display. i-PI runs in the run directory, so its
outputs and its soft-exit checkpoint ``RESTART`` land there.

Clients: ``python -m symbreak serve --model M --template S --address A ...`` where ``S``
is the initial structure of the input (i-PI does not send atomic species), ``--no-pbc``
for an ``<ffsocket pbc='false'>`` (gas phase), and the averaging comes through i-PI's
INIT from each ``<ffsocket>``'s ``<parameters>``.

Exit codes (also in ``symbreak run --help``):

====  ==============================================================================
0     the simulation completed (i-PI ended normally and every client exited cleanly)
1     input or usage error, nothing was started (bad XML, missing file, no
      ``<ffsocket>``, i-PI not installed, model not found)
2     i-PI failed (non-zero exit, killed by a signal, or it reported a problem)
3     a client failed (non-zero exit, e.g. the model raised or it was killed)
4     ``--timeout`` elapsed: i-PI was stopped cleanly (soft exit, ``RESTART`` written)
5     i-PI stopped early without an error (its own soft exit: an ``EXIT`` file, its
      ``<total_time>`` limit, or a lost client with ``exit_on_disconnect``)
128+n the launcher received signal n (130: SIGINT/Ctrl-C, 143: SIGTERM, 129: SIGHUP);
      i-PI was stopped cleanly (soft exit, ``RESTART`` written)
====  ==============================================================================

On every exit the launcher stops i-PI with SIGTERM (i-PI's soft exit, which sends EXIT
to its clients), gives the clients a grace period to leave, then sends SIGTERM and
finally SIGKILL to every process group it started, and removes the socket files. If the
launcher itself is killed with SIGKILL, its children get SIGTERM from the kernel
(``PR_SET_PDEATHSIG``, Linux) and clean up after themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

# ----------------------------------------------------------------------------- exit codes
EXIT_OK = 0  #: the simulation completed
EXIT_USAGE = 1  #: input or usage error, nothing started
EXIT_IPI_FAILED = 2  #: i-PI failed
EXIT_CLIENT_FAILED = 3  #: a client failed
EXIT_TIMEOUT = 4  #: --timeout elapsed
EXIT_STOPPED_EARLY = 5  #: i-PI's own soft exit before the end, without an error

EXIT_CODES_HELP = """exit codes:
  0      the simulation completed (i-PI ended normally, every client exited cleanly)
  1      input or usage error; nothing was started
  2      i-PI failed (non-zero exit, killed by a signal, or it reported a problem)
  3      a client failed (non-zero exit or killed)
  4      --timeout elapsed; i-PI was stopped cleanly (RESTART written)
  5      i-PI stopped early without an error (EXIT file, <total_time>, ...)
  128+n  the launcher got signal n (130: SIGINT/Ctrl-C, 143: SIGTERM); i-PI was
         stopped cleanly (RESTART written)
Every process started is ended and every socket file removed in all cases."""

IPI_DEFAULT_PREFIX = "/tmp/ipi_"  # i-PI 3.3.1: unix socket path = sockets_prefix + address
PROGRESS_NAME = "sbprogress"  # the properties output added for the progress display
_CONTROL_TAG = "symbreak_ctl_"  # see symbreak.engines.control
_UNIX_PATH_MAX = 107


class LaunchError(RuntimeError):
    """A problem with the input or the environment, found before anything started."""


# ====================================================================================
# Reading and rewriting the input
# ====================================================================================
@dataclass
class SocketSpec:
    """One ``<ffsocket>`` of the input and how its clients reach it."""

    name: str
    mode: str  #: "unix" or "inet"
    address: str  #: i-PI <address> as written in the run's copy (unix name or bind host)
    port: int
    parameters: str
    nested: bool  #: inside another force field (ignores sockets_prefix)
    pbc: bool  #: False only for an explicit pbc='false' (gas phase: --no-pbc)
    batch_size: int
    element: ET.Element = field(repr=False)
    prefix: str = IPI_DEFAULT_PREFIX  #: unix socket prefix the clients must use
    host: str = "localhost"  #: inet: host the clients connect to

    @property
    def socket_path(self) -> str | None:
        """The unix socket file (None for inet)."""
        return self.prefix + self.address if self.mode == "unix" else None

    @property
    def control_name(self) -> str:
        """Name of the clients' control socket (``symbreak control --address``)."""
        return self.address if self.mode == "unix" else f"{self.host}_{self.port}"


@dataclass
class IPIInput:
    """An i-PI input file, parsed with the parts the launcher needs."""

    path: Path
    tree: ET.ElementTree = field(repr=False)
    sockets: list[SocketSpec]
    structure: Path | None  #: initial structure file (absolute), if any
    structure_mode: str | None
    nbeads: int
    total_steps: int | None
    motion_mode: str
    output_prefix: str

    @property
    def root(self) -> ET.Element:
        return self.tree.getroot()


def _text(el: ET.Element | None, default: str = "") -> str:
    return (el.text or "").strip() if el is not None and el.text is not None else default


def _bool_attr(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.strip().lower() in ("1", "true", "yes", "t", "y")


def _parse_xml(path: Path) -> ET.ElementTree:
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    try:
        return ET.parse(path, parser=parser)
    except ET.ParseError as err:
        raise LaunchError(f"{path}: not a valid XML file: {err}") from None


def read_input(path: str | Path) -> IPIInput:
    """Parse an i-PI input and collect its sockets, initial structure and run length.

    Raises :class:`LaunchError` naming the problem (file missing, not XML, not an i-PI
    ``<simulation>``, no ``<ffsocket>``, a socket mode symbreak cannot serve).
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise LaunchError(f"i-PI input file '{path}' does not exist")
    tree = _parse_xml(path)
    root = tree.getroot()
    if root.tag != "simulation":
        raise LaunchError(f"{path}: the root element is <{root.tag}>, not i-PI's <simulation>")

    sockets: list[SocketSpec] = []
    parents = {child: parent for parent in root.iter() for child in parent}
    for el in root.iter("ffsocket"):
        name = el.get("name")
        if not name:
            raise LaunchError(f"{path}: an <ffsocket> has no name='...' attribute")
        mode = el.get("mode", "inet").strip().lower()
        if mode == "shm":
            raise LaunchError(
                f"{path}: <ffsocket name='{name}' mode='shm'> is not supported by "
                "symbreak serve; use mode='unix'"
            )
        if mode not in ("unix", "inet"):
            raise LaunchError(f"{path}: <ffsocket name='{name}'> has unknown mode '{mode}'")
        port_text = _text(el.find("port"), "65535")
        try:
            port = int(port_text)
            batch = int(_text(el.find("batch_size"), "1"))
        except ValueError as err:
            raise LaunchError(f"{path}: <ffsocket name='{name}'>: {err}") from None
        sockets.append(
            SocketSpec(
                name=name,
                mode=mode,
                address=_text(el.find("address"), "localhost"),
                port=port,
                parameters=_text(el.find("parameters")),
                nested=parents.get(el) is not root,
                pbc=_bool_attr(el.get("pbc")) is not False,
                batch_size=batch,
                element=el,
            )
        )
    if not sockets:
        raise LaunchError(
            f"{path}: no <ffsocket> in the input: nothing for symbreak clients to serve "
            "(an <ffdirect> input runs with plain `i-pi`)"
        )

    structure = mode_ = None
    init_file = root.find("./system/initialize/file")
    if init_file is None:
        init_file = root.find(".//initialize/file")
    if init_file is not None and _text(init_file):
        structure = (path.parent / _text(init_file)).resolve()
        mode_ = init_file.get("mode", "chk")
    init = root.find(".//initialize")
    try:
        nbeads = int(init.get("nbeads", "1")) if init is not None else 1
        steps_text = _text(root.find("total_steps"))
        total_steps = int(steps_text) if steps_text else None
    except ValueError as err:
        raise LaunchError(f"{path}: {err}") from None
    motion = root.find(".//motion")
    output = root.find("output")
    return IPIInput(
        path=path,
        tree=tree,
        sockets=sockets,
        structure=structure,
        structure_mode=mode_,
        nbeads=nbeads,
        total_steps=total_steps,
        motion_mode=motion.get("mode", "dynamics") if motion is not None else "dynamics",
        output_prefix=output.get("prefix", "i-pi") if output is not None else "i-pi",
    )


def free_port(host: str = "localhost") -> int:
    """A TCP port that is free on ``host`` right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("", "0.0.0.0") else "", 0))
        return int(s.getsockname()[1])


def new_tag() -> str:
    """A short tag unique to this launcher run: ``sb<pid>_<random>_``."""
    return f"sb{os.getpid()}_{secrets.token_hex(3)}_"


def _set_text(parent: ET.Element, tag: str, text: str) -> None:
    el = parent.find(tag)
    if el is None:
        el = ET.SubElement(parent, tag)
    el.text = text


def _progress_columns(motion_mode: str) -> str:
    if motion_mode == "dynamics":
        return (
            "[ step, time{picosecond}, temperature{kelvin}, conserved{electronvolt}, "
            "potential{electronvolt} ]"
        )
    return "[ step, potential{electronvolt} ]"


def prepare_input(
    inp: IPIInput,
    *,
    tag: str | None,
    inet: bool = False,
    host: str | None = None,
    steps: int | None = None,
    structure: str | Path | None = None,
    progress: bool = True,
) -> str:
    """Rewrite ``inp`` in place for a private run and return the new XML text.

    Args:
        tag: private name tag (see :func:`new_tag`); None keeps the input's sockets
            prefix, addresses and ports as written (``--keep-prefix``).
        inet: turn unix sockets into inet sockets (free ports unless ``tag`` is None).
        host: inet: the address i-PI binds to and clients connect to (default: the
            input's address for inet sockets, ``localhost`` for converted ones).
        steps: new ``<total_steps>``.
        structure: new initial structure (any file ASE reads, with its cell).
        progress: add the ``sbprogress`` properties output.
    """
    root = inp.root
    base = inp.path.parent
    prefix = root.get("sockets_prefix", IPI_DEFAULT_PREFIX)
    if tag is not None:  # "t_"/"n_": a top-level and a nested address never share a file
        prefix = IPI_DEFAULT_PREFIX + tag + "t_"
        root.set("sockets_prefix", prefix)
    for s in inp.sockets:
        el = s.element
        if inet and s.mode == "unix":
            s.mode = "inet"
            el.set("mode", "inet")
            s.address = host or "localhost"
            _set_text(el, "address", s.address)
            s.port = free_port(s.address)
            _set_text(el, "port", str(s.port))
        elif s.mode == "inet":
            if host:
                s.address = host
                _set_text(el, "address", host)
            if tag is not None:
                s.port = free_port(s.address)
                _set_text(el, "port", str(s.port))
        elif s.nested and tag is not None:
            s.address = tag + "n_" + s.address
            _set_text(el, "address", s.address)
        if s.mode == "unix":
            s.prefix = IPI_DEFAULT_PREFIX if s.nested else prefix
            if len(s.socket_path.encode()) > _UNIX_PATH_MAX:
                raise LaunchError(
                    f"unix socket path {s.socket_path!r} of <ffsocket name='{s.name}'> is "
                    f"longer than the {_UNIX_PATH_MAX} bytes the OS allows: shorten its address"
                )
        else:
            s.prefix = prefix  # the clients' control sockets go there
            s.host = "localhost" if s.address in ("", "0.0.0.0") else s.address

    # absolute paths for the files i-PI reads
    for init in root.iter("initialize"):
        for child in init:
            if child.get("mode") and _text(child):
                p = Path(_text(child))
                if not p.is_absolute() and (base / p).exists():
                    child.text = str((base / p).resolve())
    for el in root.iter("pes_path"):
        p = Path(_text(el))
        if _text(el) and not p.is_absolute():
            el.text = str((base / p).resolve())
    if structure is not None:
        spath = Path(structure).resolve()
        if not spath.is_file():
            raise LaunchError(f"structure file '{spath}' does not exist")
        init = root.find(".//initialize")
        if init is None:
            raise LaunchError(f"{inp.path}: no <initialize> to put the structure in")
        f = init.find("file")
        if f is None:
            f = ET.SubElement(init, "file")
        f.attrib.clear()
        f.set("mode", "ase")
        f.text = str(spath)
        inp.structure, inp.structure_mode = spath, "ase"
    if steps is not None:
        _set_text(root, "total_steps", str(int(steps)))
        inp.total_steps = int(steps)
    if progress:
        output = root.find("output")
        if output is None:
            output = ET.Element("output", {"prefix": inp.output_prefix})
            root.insert(0, output)
        prop = ET.SubElement(
            output, "properties", {"filename": PROGRESS_NAME, "stride": "1", "flush": "1"}
        )
        prop.text = " " + _progress_columns(inp.motion_mode) + " "
    ET.indent(inp.tree)
    return ET.tostring(root, encoding="unicode") + "\n"


def species_template(inp: IPIInput, run_dir: Path, override: str | Path | None = None) -> Path:
    """A file ``symbreak serve --template`` can read, with the atoms in i-PI's order.

    The initial structure itself when ASE reads it (xyz, extended xyz, pdb, ...);
    otherwise the species are read with i-PI's own reader and written to
    ``run_dir/species.xyz``.
    """
    if override is not None:
        path = Path(override).resolve()
        if not path.is_file():
            raise LaunchError(f"template structure file '{path}' does not exist")
        return path
    if inp.structure is None:
        raise LaunchError(
            f"{inp.path}: no <initialize><file> with the initial structure: i-PI does not "
            "send atomic species, so give them with --template FILE"
        )
    if not inp.structure.is_file():
        raise LaunchError(
            f"{inp.path}: the initial structure file '{inp.structure}' "
            "(<initialize><file>) does not exist"
        )
    if inp.structure_mode == "chk":
        raise LaunchError(
            f"{inp.path}: the initial structure is an i-PI checkpoint ({inp.structure}); "
            "give the species with --template FILE"
        )
    import ase.io

    try:
        ase.io.read(str(inp.structure), 0)
        return inp.structure
    except Exception:  # noqa: BLE001 - fall back to i-PI's reader below
        pass
    try:
        from ipi.utils.io import read_file

        with open(inp.structure) as fd:
            names = list(read_file(inp.structure_mode, fd)["atoms"].names)
    except Exception as err:  # noqa: BLE001
        raise LaunchError(
            f"cannot read the atomic species from '{inp.structure}' "
            f"(mode '{inp.structure_mode}'): {err}; give them with --template FILE"
        ) from None
    out = run_dir / "species.xyz"
    lines = [str(len(names)), "species of the i-PI input, in i-PI's order"]
    lines += [f"{n} 0.0 0.0 0.0" for n in names]
    out.write_text("\n".join(lines) + "\n")
    return out


# ====================================================================================
# Processes
# ====================================================================================
def _pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGTERM this child when the launcher dies (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _describe_rc(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


def find_ipi() -> str:
    """Path of the ``i-pi`` command (next to this Python first, then on PATH)."""
    here = Path(sys.executable).parent
    found = shutil.which("i-pi", path=f"{here}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise LaunchError(
            f"i-PI is not installed: no 'i-pi' command next to {sys.executable} or on PATH "
            "(pip install ipi==3.3.1)"
        )
    return found


class Child:
    """A process started by the launcher, in its own session, logging to a file."""

    def __init__(self, name: str, cmd: Sequence[str], log: Path, *, kind: str):
        self.name, self.cmd, self.log, self.kind = name, list(cmd), log, kind
        self.proc: subprocess.Popen | None = None
        self.rc: int | None = None

    def start(self, cwd: Path, env: dict[str, str]) -> None:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_pdeathsig if sys.platform.startswith("linux") else None,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def poll(self) -> int | None:
        if self.proc is None:
            return None
        if self.rc is None:
            self.rc = self.proc.poll()
            if self.rc is not None:
                self._kill_group(signal.SIGKILL)  # leftovers of its group, if any
        return self.rc

    def running(self) -> bool:
        return self.proc is not None and self.poll() is None

    def signal(self, sig: int, group: bool = True) -> None:
        if self.proc is None or self.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    def _kill_group(self, sig: int) -> None:
        # the group id is the leader's pid (start_new_session); the kernel does not reuse
        # a pid while it names a process group, so this reaches only our leftovers
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.rc

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])


# ====================================================================================
# Progress
# ====================================================================================
@dataclass
class ProgressRow:
    step: int
    values: dict[str, float]
    wall: float  #: seconds since the launcher started when the row was seen


class ProgressReader:
    """Reads the ``sbprogress`` properties file as i-PI writes it."""

    def __init__(self, path_glob: str):
        self.path_glob = path_glob
        self.path: Path | None = None
        self.names: list[str] = []
        self.rows: list[ProgressRow] = []
        self._offset = 0
        self._partial = ""

    def poll(self, now: float) -> list[ProgressRow]:
        if self.path is None:
            found = sorted(glob.glob(self.path_glob))
            if not found:
                return []
            self.path = Path(found[0])
        try:
            with open(self.path) as fd:
                fd.seek(self._offset)
                chunk = fd.read()
                self._offset = fd.tell()
        except FileNotFoundError:
            return []
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            if line.startswith("#"):
                parts = line.split("-->")
                if len(parts) > 1:
                    self.names.append(parts[1].split(":")[0].strip().split("{")[0])
                continue
            fields = line.split()
            if not fields:
                continue
            try:
                vals = [float(x) for x in fields]
            except ValueError:
                continue
            row = ProgressRow(int(vals[0]), dict(zip(self.names, vals, strict=False)), now)
            self.rows.append(row)
            new.append(row)
        return new


class ProgressDisplay:
    """tqdm bar on a terminal, a line every ``interval`` s otherwise, or nothing."""

    def __init__(self, total: int | None, mode: str, interval: float, stream: TextIO):
        self.total, self.interval, self.stream = total, interval, stream
        if mode == "auto":
            mode = "bar" if stream.isatty() else "lines"
        self.mode = mode
        self.bar = None
        self._last_line = -1e9
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", file=stream, dynamic_ncols=True)

    @staticmethod
    def describe(row: ProgressRow) -> str:
        v = row.values
        parts = []
        if "time" in v:
            parts.append(f"t={v['time']:.4f} ps")
        if "temperature" in v:
            parts.append(f"T={v['temperature']:.1f} K")
        if "conserved" in v:
            parts.append(f"E_cons={v['conserved']:.4f} eV")
        if "potential" in v:
            parts.append(f"E_pot={v['potential']:.4f} eV")
        return "  ".join(parts)

    def update(self, rows: list[ProgressRow], now: float) -> None:
        if not rows or self.mode == "none":
            return
        last = rows[-1]
        if self.bar is not None:
            self.bar.n = last.step
            self.bar.set_postfix_str(self.describe(last), refresh=False)
            self.bar.refresh()
        elif now - self._last_line >= self.interval or (
            self.total is not None and last.step >= self.total
        ):
            self._last_line = now
            total = f"/{self.total}" if self.total else ""
            print(
                f"[{now:7.1f} s] step {last.step}{total}  {self.describe(last)}",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ====================================================================================
# The run
# ====================================================================================
@dataclass
class Switch:
    """Change the clients' averaging when the simulation reaches ``step``."""

    step: int
    average: str
    inversion: bool
    seed: int | None = None
    forcefield: str | None = None  #: only the clients of this <ffsocket> (None: all)
    done: bool = False
    result: dict[str, Any] | None = None
    at_step: int | None = None  #: the last step seen when the switch was sent
    at_wall: float | None = None

    @classmethod
    def parse(cls, text: str) -> Switch:
        """``STEP=SPEC[@FORCEFIELD]``, SPEC as in ``--average`` (``lebedev:3+inv``)."""
        from ..rotations import AveragingPolicy

        step, sep, rest = text.partition("=")
        if not sep:
            raise ValueError(f"--switch-at {text!r}: expected STEP=SPEC, e.g. 10=lebedev:3+inv")
        spec, _, ff = rest.partition("@")
        try:
            policy = AveragingPolicy.parse(spec)
            return cls(int(step), policy.spec, policy.inversion, policy.seed, ff or None)
        except ValueError as err:
            raise ValueError(f"--switch-at {text!r}: {err}") from None


@dataclass
class RunResult:
    """What happened, for callers of :func:`launch` (the demo)."""

    exit_code: int
    message: str
    run_dir: Path
    input_xml: Path
    progress: list[ProgressRow]
    switches: list[Switch]
    elapsed: float
    ipi_rc: int | None
    client_rcs: dict[str, int | None]


@dataclass
class LaunchOptions:
    """Options of :func:`launch` (the ``symbreak run`` command line)."""

    model: str = "water-revpbe0d3"
    clients: int = 1
    timeout: float | None = None
    threads: int | None = None
    inet: bool = False
    host: str | None = None
    keep_prefix: bool = False
    run_dir: Path | None = None
    steps: int | None = None
    structure: str | None = None
    template: str | None = None
    switches: list[Switch] = field(default_factory=list)
    connect_timeout: float = 120.0
    grace: float = 10.0
    progress: str = "auto"  #: auto | bar | lines | none
    progress_interval: float = 10.0
    client_args: list[str] = field(default_factory=list)
    dry_run: bool = False


def _model_arg(model: str) -> str:
    """The model as the clients get it: absolute path for a file, else a shipped name
    (checked here without importing torch, so that a typo fails before anything starts)."""
    p = Path(model)
    if p.is_file():
        return str(p.resolve())
    shipped = Path(__file__).resolve().parents[1] / "models"
    if (shipped / f"{model}.pt").is_file():
        return model
    have = sorted(q.stem for q in shipped.glob("*.pt"))
    raise LaunchError(
        f"model '{model}' not found: no such file and no shipped model of that name "
        f"(shipped: {', '.join(have) or 'none yet'}); pass --model FILE.pt"
    )


def _child_env() -> dict[str, str]:
    """The clients must import this very symbreak, even when it is not installed."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in paths:
        env["PYTHONPATH"] = os.pathsep.join([src, *paths])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def default_threads(n_clients: int) -> int:
    """Torch threads per client: the idle cores shared out, at least 1.

    Cores already busy (1-minute load average) are left alone: on a loaded machine extra
    torch threads compete for the same cores and slow every call down several times."""
    cores = os.cpu_count() or 1
    try:
        idle = cores - os.getloadavg()[0]
    except OSError:
        idle = cores
    return max(1, min(cores, int(idle + 0.5)) // max(1, n_clients))


def client_command(
    s: SocketSpec, model: str, template: Path, threads: int, opts: LaunchOptions
) -> list[str]:
    """The ``symbreak serve`` command line for one client of socket ``s``."""
    cmd = [sys.executable, "-m", "symbreak", "serve", "--model", model]
    cmd += ["--template", str(template), "--address", s.address]
    if s.mode == "inet":
        cmd += ["--inet", "--host", s.host, "--port", str(s.port)]
    cmd += ["--socket-prefix", s.prefix, "--threads", str(threads)]
    cmd += ["--connect-timeout", f"{opts.connect_timeout:g}"]
    if not s.pbc:
        cmd.append("--no-pbc")
    return cmd + list(opts.client_args)


class Launcher:
    """Starts i-PI and the clients of one input, supervises and cleans up."""

    def __init__(self, input_path: str | Path, opts: LaunchOptions, stream: TextIO = sys.stderr):
        self.opts = opts
        self.stream = stream
        self.t0 = time.monotonic()
        self.inp = read_input(input_path)
        self.ipi_cmd = find_ipi()
        self.model = _model_arg(opts.model)
        self.tag = None if opts.keep_prefix else new_tag()
        self.run_dir = self._make_run_dir(opts.run_dir)
        self.xml = prepare_input(
            self.inp,
            tag=self.tag,
            inet=opts.inet,
            host=opts.host,
            steps=opts.steps,
            structure=opts.structure,
        )
        self.template = species_template(self.inp, self.run_dir, opts.template)
        self.input_xml = self.run_dir / "input.xml"
        self.input_xml.write_text(self.xml)
        self.ipi = Child(
            "i-pi", [self.ipi_cmd, str(self.input_xml)], self.run_dir / "ipi.log", kind="ipi"
        )
        n_total = opts.clients * len(self.inp.sockets)
        threads = opts.threads or default_threads(n_total)
        self.threads = threads
        self.clients: list[Child] = []
        for s in self.inp.sockets:
            for k in range(opts.clients):
                name = f"client {s.name}" + (f" #{k}" if opts.clients > 1 else "")
                log = self.run_dir / f"client_{s.name}_{k}.log"
                cmd = client_command(s, self.model, self.template, threads, opts)
                self.clients.append(Child(name, cmd, log, kind="client"))
        self.progress = ProgressReader(
            str(self.run_dir / f"{self.inp.output_prefix}.{PROGRESS_NAME}*")
        )
        self._signal: int | None = None
        self._old_handlers: dict[int, Any] = {}
        self._switch_threads: list[threading.Thread] = []

    # -------------------------------------------------------------- setup helpers
    def _make_run_dir(self, run_dir: Path | None) -> Path:
        if run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path("runs") / f"{self.inp.path.stem}-{stamp}-{os.getpid()}"
            if self.inp.path.stem == "input":
                run_dir = Path("runs") / f"{self.inp.path.parent.name}-{stamp}-{os.getpid()}"
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("EXIT", f"{self.inp.output_prefix}.{PROGRESS_NAME}"):
            with contextlib.suppress(FileNotFoundError):
                (run_dir / stale).unlink()
        return run_dir

    def say(self, text: str) -> None:
        print(f"symbreak run: {text}", file=self.stream, flush=True)

    def describe(self) -> str:
        lines = [f"run directory {self.run_dir}"]
        if self.clients:
            lines.append(f"{len(self.clients)} client(s), {self.threads} torch thread(s) each")
        for s in self.inp.sockets:
            where = (
                f"unix socket {s.socket_path}"
                if s.mode == "unix"
                else f"inet {s.address}:{s.port} (clients connect to {s.host}:{s.port})"
            )
            params = f", parameters {{{s.parameters.strip('{} ')}}}" if s.parameters else ""
            lines.append(f"<ffsocket name='{s.name}'>: {where}{params}")
            lines.append(
                f"  run-time control: symbreak control --address {s.control_name} "
                f"--socket-prefix {s.prefix} --average SPEC"
            )
        return "\n  ".join(lines)

    def client_commands(self) -> list[str]:
        return [" ".join(c.cmd) for c in self.clients]

    # -------------------------------------------------------------- signals
    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            if self._signal is None:
                self._signal = signum
            else:  # a second signal: no more grace
                self.opts.grace = 0.0

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError, OSError):
                self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signals(self) -> None:
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, old if old is not None else signal.SIG_DFL)

    # -------------------------------------------------------------- run
    def run(self) -> RunResult:
        """Start everything, supervise until the end, clean up; never leaves processes."""
        self._install_signals()
        display = ProgressDisplay(
            self.inp.total_steps, self.opts.progress, self.opts.progress_interval, self.stream
        )
        code, message = EXIT_OK, ""
        try:
            self.say(self.describe())
            env = _child_env()
            self.ipi.start(self.run_dir, env)
            for c in self.clients:
                c.start(self.run_dir, env)
            if not self.clients:
                self.say("no clients started (--clients 0); start them with e.g.:")
                for s in self.inp.sockets:
                    cmd = client_command(s, self.model, self.template, 1, self.opts)
                    self.say("  " + " ".join(cmd))
            code, message = self._supervise(display)
        except BaseException as exc:  # noqa: BLE001 - cleanup below, then re-raise
            code, message = EXIT_USAGE, f"launcher error: {exc!r}"
            raise
        finally:
            display.close()
            stop_code = self._shutdown(code)
            if code == EXIT_OK and stop_code:
                code, message = stop_code, message or "a client failed at the end"
            self._cleanup_sockets()
            self._restore_signals()
            for t in self._switch_threads:
                t.join(5.0)
        elapsed = time.monotonic() - self.t0
        return RunResult(
            exit_code=code,
            message=message,
            run_dir=self.run_dir,
            input_xml=self.input_xml,
            progress=self.progress.rows,
            switches=self.opts.switches,
            elapsed=elapsed,
            ipi_rc=self.ipi.rc,
            client_rcs={c.name: c.rc for c in self.clients},
        )

    def _now(self) -> float:
        return time.monotonic() - self.t0

    def _failure(self, child: Child, code: int, what: str) -> tuple[int, str]:
        tail = child.tail()
        msg = f"{child.name} {what} ({_describe_rc(child.rc or 0)}); log {child.log}"
        if tail:
            msg += "; last lines:\n    " + tail.replace("\n", "\n    ")
        return code, msg

    def _ipi_softexit_message(self) -> str | None:
        try:
            text = self.ipi.log.read_text(errors="replace")
        except FileNotFoundError:
            return None
        marker = "Soft exit has been requested with message: '"
        if marker not in text:
            return None
        return text.split(marker, 1)[1].split("'. Cleaning up.", 1)[0].strip()

    def _ipi_finished(self) -> tuple[int, str]:
        """Classify i-PI's exit (called once it has exited)."""
        if self.ipi.rc != 0:
            return self._failure(self.ipi, EXIT_IPI_FAILED, "failed")
        soft = self._ipi_softexit_message()
        if soft and "reports a problem" in soft:
            return self._failure(self.ipi, EXIT_IPI_FAILED, f"stopped with a problem: {soft}")
        last = self.progress.rows[-1].step if self.progress.rows else None
        total = self.inp.total_steps
        early = total is not None and (last is None or last < total)
        if early and self.inp.motion_mode == "minimize":
            return EXIT_OK, "i-PI completed (optimisation converged)"
        if early:
            try:
                log = self.ipi.log.read_text(errors="replace")
            except FileNotFoundError:
                log = ""
            reasons = {
                "EXIT file detected": "an EXIT file in the run directory",
                "Wall clock time expired": "its <total_time> wall-clock limit",
                "Maximum wallclock time elapsed": "its wall-clock limit",
            }
            why = next((v for k, v in reasons.items() if k in log), soft or "unknown reason")
            return EXIT_STOPPED_EARLY, f"i-PI stopped early, at step {last} of {total}: {why}"
        return EXIT_OK, "i-PI completed"

    def _supervise(self, display: ProgressDisplay) -> tuple[int, str]:
        deadline = None if self.opts.timeout is None else self.t0 + self.opts.timeout
        while True:
            now = self._now()
            rows = self.progress.poll(now)
            display.update(rows, now)
            self._maybe_switch()
            if self._signal is not None:
                name = signal.Signals(self._signal).name
                return 128 + self._signal, f"received {name}: stopping i-PI and the clients"
            if self.ipi.poll() is not None:
                display.update(self.progress.poll(self._now()), self._now())
                return self._ipi_finished()
            for c in self.clients:
                rc = c.poll()
                if rc is None or rc == 0:
                    continue  # 0: it got EXIT, i-PI is finishing
                # the root cause may be i-PI (a client sees its socket go away first)
                if self.ipi.wait(2.0) is not None:
                    self.progress.poll(self._now())
                    return self._ipi_finished()
                return self._failure(c, EXIT_CLIENT_FAILED, "failed")
            if deadline is not None and time.monotonic() > deadline:
                return EXIT_TIMEOUT, (
                    f"--timeout {self.opts.timeout:g} s elapsed: stopping i-PI (soft exit, "
                    "RESTART written) and the clients"
                )
            time.sleep(0.1)

    def _maybe_switch(self) -> None:
        if not self.progress.rows:
            return
        last = self.progress.rows[-1].step
        for sw in self.opts.switches:
            if sw.done or last < sw.step:
                continue
            sw.done, sw.at_step, sw.at_wall = True, last, self._now()
            targets = [s for s in self.inp.sockets if sw.forcefield in (None, s.name)]
            t = threading.Thread(target=self._send_switch, args=(sw, targets), daemon=True)
            t.start()
            self._switch_threads.append(t)
            label = sw.average + ("+inv" if sw.inversion else "")
            self.say(f"step {last}: switching the averaging to {label}")

    def _send_switch(self, sw: Switch, targets: list[SocketSpec]) -> None:
        from .control import ControlError, send_control

        policy: dict[str, Any] = {"average": sw.average, "inversion": sw.inversion}
        if sw.seed is not None:
            policy["seed"] = sw.seed
        replies = {}
        for s in targets:
            try:
                replies[s.name] = send_control(
                    s.control_name, s.prefix, wait=30.0, timeout=10.0, **policy
                )
            except ControlError as err:
                replies[s.name] = {"ok": False, "error": str(err)}
                self.say(f"switch at step {sw.step} failed for '{s.name}': {err}")
        sw.result = replies

    # -------------------------------------------------------------- shutdown
    def _shutdown(self, code: int) -> int:
        """Stop i-PI (soft exit), then the clients; returns EXIT_CLIENT_FAILED if a
        client failed during a normal end, else 0."""
        grace = self.opts.grace
        if self.ipi.running():
            self.ipi.signal(signal.SIGTERM, group=False)  # i-PI's soft exit: RESTART, EXIT
            if self.ipi.wait(grace) is None:
                self.say(f"i-PI did not stop within {grace:g} s: killing it")
                self.ipi.signal(signal.SIGKILL)
                self.ipi.wait(5.0)
            if not (self.run_dir / "RESTART").is_file():  # promised by the exit codes 4, 128+n
                self.say(f"i-PI stopped without writing its RESTART (see {self.ipi.log})")
        # clients got EXIT (or lost the connection); give them time to leave
        deadline = time.monotonic() + (grace if code == EXIT_OK else min(grace, 5.0))
        for c in self.clients:
            c.wait(max(0.0, deadline - time.monotonic()))
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            alive = [c for c in self.clients if c.running()]
            for c in alive:
                c.signal(sig)
            for c in alive:
                c.wait(wait)
        self.ipi.signal(signal.SIGKILL)
        if code == EXIT_OK:
            bad = [c for c in self.clients if c.rc not in (0, None)]
            if bad:
                return self._failure(bad[0], EXIT_CLIENT_FAILED, "failed at the end")[0]
        return 0

    def _cleanup_sockets(self) -> None:
        """Remove the run's socket files (i-PI's and the clients' control sockets)."""
        paths: set[str] = set()
        if self.tag is not None:
            paths.update(glob.glob(glob.escape(IPI_DEFAULT_PREFIX + self.tag) + "*"))
            paths.update(glob.glob(glob.escape(IPI_DEFAULT_PREFIX + _CONTROL_TAG + self.tag) + "*"))
        else:  # shared names: remove only what no live process listens on
            from .control import find_control_sockets

            for s in self.inp.sockets:
                if s.socket_path:
                    paths.add(s.socket_path)
                paths.update(find_control_sockets(s.control_name, s.prefix))
            paths = {p for p in paths if not _is_live_unix(p)}
        for p in paths:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                if not os.path.isdir(p):
                    os.unlink(p)


def _is_live_unix(path: str) -> bool:
    from .control import _is_live

    return _is_live(path)


def launch(input_path: str | Path, opts: LaunchOptions, stream: TextIO = sys.stderr) -> RunResult:
    """Run one i-PI input with its symbreak clients (the Python API of ``symbreak run``).

    Raises :class:`LaunchError` for problems found before anything started.
    """
    return Launcher(input_path, opts, stream).run()


# ====================================================================================
# Command line
# ====================================================================================
def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="i-PI XML input with one or more <ffsocket>")
    p.add_argument("--model", default="water-revpbe0d3", help="shipped model name or file")
    p.add_argument("--clients", type=int, default=1, help="clients per <ffsocket> (0: start none)")
    p.add_argument("--timeout", type=float, help="stop everything after this many seconds")
    p.add_argument(
        "--threads", type=int, help="torch threads per client (default: idle cores / clients)"
    )
    p.add_argument(
        "--inet",
        action="store_true",
        help="use TCP sockets (unix sockets become inet on free ports)",
    )
    p.add_argument("--host", help="inet: address i-PI binds to / clients connect to")
    p.add_argument(
        "--keep-prefix",
        action="store_true",
        help="use the input's sockets_prefix, addresses and ports as written (for clients "
        "started elsewhere); by default they are made private to this run",
    )
    p.add_argument("--run-dir", type=Path, help="where i-PI runs (default runs/<input>-<time>)")
    p.add_argument("--steps", type=int, help="override <total_steps>")
    p.add_argument("--structure", help="override the initial structure (any ASE file with a cell)")
    p.add_argument("--template", help="structure giving the species (default: the initial one)")
    p.add_argument(
        "--average",
        help="the clients' averaging, e.g. lebedev:3+inv, for sockets whose <parameters> "
        "do not set one (those set it through i-PI's INIT)",
    )
    p.add_argument(
        "--switch-at",
        action="append",
        default=[],
        metavar="STEP=SPEC[@FF]",
        help="change the clients' averaging at STEP, e.g. 20=lebedev:3+inv (repeatable)",
    )
    p.add_argument("--connect-timeout", type=float, default=120.0, help="clients wait for i-PI")
    p.add_argument("--grace", type=float, default=10.0, help="seconds allowed for a clean stop")
    p.add_argument(
        "--progress", choices=("auto", "bar", "lines", "none"), default="auto", help="display"
    )
    p.add_argument("--progress-interval", type=float, default=10.0, help="seconds between lines")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="write the run directory and print the commands, start nothing",
    )


def register(subparsers) -> None:
    """Add ``symbreak run`` (and ``symbreak demo``) to the CLI."""
    p = subparsers.add_parser(
        "run",
        help="run an i-PI input together with its symbreak clients",
        description="Start i-PI on a private copy of INPUT and a `symbreak serve` client per "
        "<ffsocket> (nested ones in <ffrotations> included), show the progress, and end "
        "everything on completion, failure, --timeout or Ctrl-C, leaving no process or "
        "socket file behind.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.set_defaults(func=_run)
    try:
        from . import demo
    except ImportError:  # pragma: no cover
        return
    demo.register(subparsers)


def options_from_args(args: argparse.Namespace) -> LaunchOptions:
    return LaunchOptions(
        model=args.model,
        clients=args.clients,
        timeout=args.timeout,
        threads=args.threads,
        inet=args.inet,
        host=args.host,
        keep_prefix=args.keep_prefix,
        run_dir=args.run_dir,
        steps=args.steps,
        structure=args.structure,
        template=args.template,
        switches=[Switch.parse(s) for s in args.switch_at],
        connect_timeout=args.connect_timeout,
        grace=args.grace,
        progress=args.progress,
        progress_interval=args.progress_interval,
        dry_run=args.dry_run,
        client_args=_average_args(args.average),
    )


def _average_args(spec: str | None) -> list[str]:
    """``symbreak serve`` options for ``--average SPEC`` (validated here)."""
    if not spec:
        return []
    from ..rotations import AveragingPolicy

    policy = AveragingPolicy.parse(spec)
    out = ["--average", policy.spec] + (["--inversion"] if policy.inversion else [])
    return out + (["--seed", str(policy.seed)] if policy.seed is not None else [])


def _run(args: argparse.Namespace) -> int:
    try:
        if args.clients < 0:
            raise LaunchError("--clients must be >= 0")
        opts = options_from_args(args)
        launcher = Launcher(args.input, opts)
    except (LaunchError, ValueError) as err:
        print(f"symbreak run: {err}", file=sys.stderr)
        return EXIT_USAGE
    if opts.dry_run:
        print(launcher.describe())
        print(" ".join([launcher.ipi_cmd, str(launcher.input_xml)]), f"  # in {launcher.run_dir}")
        for cmd in launcher.client_commands():
            print(cmd)
        return EXIT_OK
    result = launcher.run()
    rate = ""
    if result.progress:
        last = result.progress[-1]
        rate = f", {last.step} steps"
    if result.exit_code == EXIT_OK:
        launcher.say(
            f"{result.message} in {result.elapsed:.1f} s{rate}; outputs in {result.run_dir}"
        )
    else:
        launcher.say(f"{result.message}")
        launcher.say(f"exit code {result.exit_code}; outputs in {result.run_dir}")
    return result.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m symbreak.engines.launcher run|demo ...``: the same as ``symbreak run``
    and ``symbreak demo`` (usable before the CLI registers this module)."""
    parser = argparse.ArgumentParser(prog="symbreak")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
