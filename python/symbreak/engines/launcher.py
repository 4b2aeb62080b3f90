"""``symbreak run``: start i-PI and the symbreak clients of its input together.

The launcher reads an i-PI XML input, writes a private copy of it into a run directory,
starts ``i-pi`` on that copy and one (or ``--clients N``) ``symbreak serve`` process per
``<ffsocket>``, shows the progress of the simulation, and ends everything when the run
completes, when any process fails, on ``--timeout`` and on SIGINT/SIGTERM/SIGHUP.

==================  ==================================================================
module              concept
==================  ==================================================================
``ipi_xml``         reading an i-PI input; editing a copy (sockets, paths, steps, ...)
``addresses``       private socket names, free ports, is an address already taken
``clients``         the ``symbreak serve`` command line of each client
``processes``       child processes (own session, log file, ended with their group)
``progress``        the progress output added to the input, and its display
``launcher``        this module: the supervisor (:class:`Launcher`, :func:`launch`)
``run_cli``         ``symbreak run`` (argparse)
==================  ==================================================================

Isolation (parallel runs never collide): unless ``--keep-prefix`` is given,

- top-level unix sockets live under a private prefix ``/tmp/ipi_sb<pid>_<random>_t_``
  (``<simulation sockets_prefix=...>``; the path is ``prefix + address``, i-PI 3.3.1);
- an ``<ffsocket>`` nested in another force field (``<ffrotations>``, ``<ffcommittee>``)
  ignores ``sockets_prefix`` and always lives at ``/tmp/ipi_<address>``: its address is
  rewritten to ``sb<pid>_<random>_n_<address>``;
- inet sockets get a free TCP port.

With ``--keep-prefix`` the addresses are the input's own: if one is already taken (a
live unix socket or a leftover file at the path, a TCP port in use), the launcher stops
with a usage error before starting anything, so that its clients never attach to
another run's i-PI.

The clients' run-time control sockets (``symbreak control``) are created under the same
private names. Every file that matches the run's tag is removed at the end, pass or fail.

What is rewritten in the copy (``<run-dir>/input.xml``): the sockets (above), relative
file paths of ``<initialize>`` and ``<pes_path>`` (made absolute), optionally
``<total_steps>`` (``--steps``) and the initial structure (``--structure``); a
properties output ``<prefix>.sbprogress`` (step, time, temperature, conserved quantity,
potential) is added for the progress display. i-PI runs in the run directory, so its
outputs and its soft-exit checkpoint ``RESTART`` land there.

Exit codes: :mod:`symbreak.exit_codes` (``OK``, ``USAGE``, ``RUN_*``; also in
``symbreak run --help``).

On every exit the launcher stops i-PI with SIGTERM (i-PI's soft exit, which sends EXIT
to its clients), gives the clients a grace period to leave, then sends SIGTERM and
finally SIGKILL to every process group it started, and removes the socket files. If the
launcher itself is killed with SIGKILL, its children get SIGTERM from the kernel
(``PR_SET_PDEATHSIG``, Linux) and clean up after themselves.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .. import exit_codes
from .addresses import new_tag, tcp_busy, unix_busy, unix_live
from .clients import child_env, client_command, default_threads, model_arg, species_template
from .ipi_xml import IPIInput, LaunchError, SocketSpec, prepare_input, read_input
from .processes import Child, describe_rc, find_ipi
from .progress import PROGRESS_NAME, ProgressDisplay, ProgressReader, ProgressRow
from .sockets import CONTROL_TAG, IPI_DEFAULT_PREFIX

__all__ = [
    "LaunchError",
    "LaunchOptions",
    "Launcher",
    "RunResult",
    "Switch",
    "check_addresses_free",
    "launch",
]


# ====================================================================================
# Options and results
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
    """What happened, for callers of :func:`launch` (the demo, the reproduction)."""

    exit_code: int  #: one of :mod:`symbreak.exit_codes` (OK, RUN_*, 128+n)
    message: str
    run_dir: Path
    input_xml: Path
    progress: list[ProgressRow]
    switches: list[Switch]
    elapsed: float  #: wall seconds
    ipi_rc: int | None
    client_rcs: dict[str, int | None]


@dataclass
class LaunchOptions:
    """Options of :func:`launch` (the ``symbreak run`` command line)."""

    model: str = "water-revpbe0d3"
    clients: int = 1
    timeout: float | None = None  #: seconds
    threads: int | None = None
    inet: bool = False
    host: str | None = None
    keep_prefix: bool = False
    run_dir: Path | None = None
    steps: int | None = None
    structure: str | None = None
    template: str | None = None
    switches: list[Switch] = field(default_factory=list)
    connect_timeout: float = 120.0  #: seconds
    grace: float = 10.0  #: seconds
    progress: str = "auto"  #: auto | bar | lines | none
    progress_interval: float = 10.0  #: seconds
    client_args: list[str] = field(default_factory=list)
    dry_run: bool = False

    def validate(self) -> None:
        """:class:`LaunchError` naming the option for values that cannot run."""
        if self.clients < 0:
            raise LaunchError(f"--clients must be >= 0 (got {self.clients})")
        # i-PI takes <total_steps> 0 or less as a run already done and fails (exit 2)
        if self.steps is not None and self.steps < 1:
            raise LaunchError(f"--steps must be >= 1 (got {self.steps})")


def check_addresses_free(inp: IPIInput, *, keep_prefix: bool = False) -> None:
    """:class:`LaunchError` if i-PI could not bind one of the input's addresses.

    Called before anything starts: with a taken address i-PI would fail to bind, and its
    clients would attach to whatever listens there (another run's i-PI)."""
    for s in inp.sockets:
        why = unix_busy(s.socket_path) if s.mode == "unix" else tcp_busy(s.address, s.port)
        if why:
            hint = " (--keep-prefix: without it the run gets private sockets)"
            raise LaunchError(
                f"<ffsocket name='{s.name}'>: {why}; nothing was started"
                + (hint if keep_prefix else "")
            )


# ====================================================================================
# The run
# ====================================================================================
class Launcher:
    """Starts i-PI and the clients of one input, supervises and cleans up."""

    def __init__(self, input_path: str | Path, opts: LaunchOptions, stream: TextIO = sys.stderr):
        self.opts = opts
        self.stream = stream
        self.t0 = time.monotonic()
        opts.validate()
        self.inp = read_input(input_path)
        self.ipi_cmd = find_ipi()
        self.model = model_arg(opts.model)
        self.tag = None if opts.keep_prefix else new_tag()
        self.xml = prepare_input(
            self.inp,
            tag=self.tag,
            inet=opts.inet,
            host=opts.host,
            steps=opts.steps,
            structure=opts.structure,
        )
        check_addresses_free(self.inp, keep_prefix=opts.keep_prefix)  # before any file
        self.run_dir = self._make_run_dir(opts.run_dir)
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
                cmd = self._client_command(s, threads)
                self.clients.append(Child(name, cmd, log, kind="client"))
        self.progress = ProgressReader(
            str(self.run_dir / f"{self.inp.output_prefix}.{PROGRESS_NAME}*")
        )
        self._signal: int | None = None
        self._old_handlers: dict[int, Any] = {}
        self._switch_threads: list[threading.Thread] = []

    # -------------------------------------------------------------- setup helpers
    def _client_command(self, s: SocketSpec, threads: int) -> list[str]:
        return client_command(
            s,
            self.model,
            self.template,
            threads,
            connect_timeout=self.opts.connect_timeout,
            extra_args=self.opts.client_args,
        )

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
        code, message = exit_codes.OK, ""
        try:
            self.say(self.describe())
            env = child_env()
            self.ipi.start(self.run_dir, env)
            for c in self.clients:
                c.start(self.run_dir, env)
            if not self.clients:
                self.say("no clients started (--clients 0); start them with e.g.:")
                for s in self.inp.sockets:
                    cmd = self._client_command(s, 1)
                    self.say("  " + " ".join(cmd))
            code, message = self._supervise(display)
        except BaseException as exc:  # noqa: BLE001 - cleanup below, then re-raise
            code, message = exit_codes.USAGE, f"launcher error: {exc!r}"
            raise
        finally:
            display.close()
            stop_code, stop_message = self._shutdown(code)
            if code == exit_codes.OK and stop_code:  # say what failed, not "i-PI completed"
                code, message = stop_code, f"{message}, but {stop_message}"
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
        msg = f"{child.name} {what} ({describe_rc(child.rc or 0)}); log {child.log}"
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
            return self._failure(self.ipi, exit_codes.RUN_IPI_FAILED, "failed")
        soft = self._ipi_softexit_message()
        if soft and "reports a problem" in soft:
            return self._failure(
                self.ipi, exit_codes.RUN_IPI_FAILED, f"stopped with a problem: {soft}"
            )
        last = self.progress.rows[-1].step if self.progress.rows else None
        total = self.inp.total_steps
        early = total is not None and (last is None or last < total)
        if early and self.inp.motion_mode == "minimize":
            return exit_codes.OK, "i-PI completed (optimisation converged)"
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
            return (
                exit_codes.RUN_STOPPED_EARLY,
                f"i-PI stopped early, at step {last} of {total}: {why}",
            )
        return exit_codes.OK, "i-PI completed"

    def _supervise(self, display: ProgressDisplay) -> tuple[int, str]:
        deadline = None if self.opts.timeout is None else self.t0 + self.opts.timeout
        while True:
            now = self._now()
            rows = self.progress.poll(now)
            display.update(rows, now)
            self._maybe_switch()
            if self._signal is not None:
                name = signal.Signals(self._signal).name
                return exit_codes.from_signal(
                    self._signal
                ), f"received {name}: stopping i-PI and the clients"
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
                return self._failure(c, exit_codes.RUN_CLIENT_FAILED, "failed")
            if deadline is not None and time.monotonic() > deadline:
                return exit_codes.RUN_TIMEOUT, (
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
    def _shutdown(self, code: int) -> tuple[int, str]:
        """Stop i-PI (soft exit), then the clients; returns RUN_CLIENT_FAILED and what
        failed if a client failed during a normal end, else ``(0, "")``."""
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
        deadline = time.monotonic() + (grace if code == exit_codes.OK else min(grace, 5.0))
        for c in self.clients:
            c.wait(max(0.0, deadline - time.monotonic()))
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            alive = [c for c in self.clients if c.running()]
            for c in alive:
                c.signal(sig)
            for c in alive:
                c.wait(wait)
        self.ipi.signal(signal.SIGKILL)
        if code == exit_codes.OK:
            bad = [c for c in self.clients if c.rc not in (0, None)]
            if bad:
                return self._failure(bad[0], exit_codes.RUN_CLIENT_FAILED, "failed at the end")
        return 0, ""

    def _cleanup_sockets(self) -> None:
        """Remove the run's socket files (i-PI's and the clients' control sockets)."""
        paths: set[str] = set()
        if self.tag is not None:
            paths.update(glob.glob(glob.escape(IPI_DEFAULT_PREFIX + self.tag) + "*"))
            paths.update(glob.glob(glob.escape(IPI_DEFAULT_PREFIX + CONTROL_TAG + self.tag) + "*"))
        else:  # shared names: remove only what no live process listens on
            from .control import find_control_sockets

            for s in self.inp.sockets:
                if s.socket_path:
                    paths.add(s.socket_path)
                paths.update(find_control_sockets(s.control_name, s.prefix))
            paths = {p for p in paths if not unix_live(p)}
        for p in paths:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                if not os.path.isdir(p):
                    os.unlink(p)


def launch(input_path: str | Path, opts: LaunchOptions, stream: TextIO = sys.stderr) -> RunResult:
    """Run one i-PI input with its symbreak clients (the Python API of ``symbreak run``).

    Raises :class:`LaunchError` for problems found before anything started.
    """
    return Launcher(input_path, opts, stream).run()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m symbreak.engines.launcher run|demo ...`` (kept for scripts): the same
    as :func:`symbreak.engines.run_cli.main`."""
    from .run_cli import main as run_main

    return run_main(argv)


if __name__ == "__main__":
    sys.exit(main())
