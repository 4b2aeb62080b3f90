"""Socket addresses of a launcher run: private names, free ports, and whether an address
is already taken before i-PI tries to bind it.

Why check first: i-PI fails to bind an address that is taken, but the clients started
with it would connect to whatever listens there — with ``--keep-prefix`` (or a fixed
TCP port) another run's i-PI — and hand-shake with it. The checks here never connect to
the address (a connection to an i-PI socket counts as a client there, and with
``exit_on_disconnect`` its departure would stop that run): a unix socket is looked up
in ``/proc/net/unix`` (Linux), a TCP port is tried with ``bind`` as i-PI binds it.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import stat

from .sockets import unix_accepts

_ACCEPTCON = 0x10000  # /proc/net/unix "Flags" of a listening socket (__SO_ACCEPTCON)


def new_tag() -> str:
    """A short tag unique to this launcher run: ``sb<pid>_<random>_``."""
    return f"sb{os.getpid()}_{secrets.token_hex(3)}_"


def free_port(host: str = "localhost") -> int:
    """A TCP port that is free on ``host`` right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("", "0.0.0.0") else "", 0))
        return int(s.getsockname()[1])


def listening_unix_paths() -> set[str] | None:
    """Paths of the listening unix sockets of this network namespace (from
    ``/proc/net/unix``), or None where that table is not available (not Linux)."""
    try:
        with open("/proc/net/unix") as fd:
            lines = fd.read().splitlines()[1:]
    except OSError:
        return None
    paths = set()
    for line in lines:
        # Num RefCount Protocol Flags Type St Inode [Path]
        parts = line.split(None, 7)
        if len(parts) == 8 and int(parts[3], 16) & _ACCEPTCON:
            paths.add(parts[7])
    return paths


def unix_listening(path: str) -> bool | None:
    """Whether a process listens on the unix socket ``path`` (None: cannot tell)."""
    paths = listening_unix_paths()
    return None if paths is None else path in paths


def unix_live(path: str) -> bool:
    """Whether a process listens on ``path``: looked up in ``/proc/net/unix``, else (not
    Linux) by connecting, which an i-PI server would count as a client."""
    live = unix_listening(path)
    return unix_accepts(path) if live is None else live


def unix_busy(path: str) -> str | None:
    """Why i-PI could not bind a unix socket at ``path``, or None if it can."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"{path} cannot be checked ({err.strerror})"
    if not stat.S_ISSOCK(st.st_mode):
        return f"{path} exists and is not a socket"
    live = unix_listening(path)
    if live:
        return f"unix socket {path} is in use: another process (another run?) listens on it"
    if live is None:
        return f"unix socket {path} exists (in use by another run, or left over: remove it)"
    return f"unix socket {path} exists but no process listens on it (left over: remove it)"


def tcp_busy(host: str, port: int) -> str | None:
    """Why i-PI could not bind TCP ``host:port``, or None if it can (tried as i-PI binds:
    with SO_REUSEADDR, so connections of an earlier run in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return f"TCP port {host}:{port} is in use: another process listens on it"
            return None  # not ours to judge (e.g. an address of another node): i-PI says
    return None
