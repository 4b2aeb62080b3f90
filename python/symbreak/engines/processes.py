"""The child processes of a launcher run (i-PI and the clients).

Each :class:`Child` runs in its own session (process group), logs stdout and stderr to
one file, and is ended with its whole group. On Linux every child also asks the kernel
for SIGTERM when the launcher dies (``PR_SET_PDEATHSIG``), so that even a launcher
killed with SIGKILL leaves nothing running for long.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .ipi_xml import LaunchError


def pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGTERM this child when the launcher dies (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def describe_rc(rc: int) -> str:
    """A return code in words: ``exit code 3`` or ``killed by SIGKILL`` (rc < 0)."""
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
    """A process started by the launcher, in its own session, logging to a file.

    ``kind`` is ``"ipi"`` or ``"client"``; ``rc`` is the return code once it has exited
    (negative: killed by that signal).
    """

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
                preexec_fn=pdeathsig if sys.platform.startswith("linux") else None,
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
        """Send ``sig`` to the child's process group (or to the child alone)."""
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
        """Wait up to ``timeout`` s; the return code, or None if still running."""
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.rc

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the child's log."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])
