"""Socket names shared by the i-PI client, the launcher and the control channel.

i-PI 3.3 puts a unix socket at ``sockets_prefix + address`` (``/tmp/ipi_`` by default, and
always for an ``<ffsocket>`` nested in ``<ffrotations>``); the control socket of a client
serving ``address`` sits beside it at ``sockets_prefix + CONTROL_TAG + address``.
"""

from __future__ import annotations

import socket

#: i-PI's default ``sockets_prefix`` (``-S``): unix socket path = prefix + address.
IPI_DEFAULT_PREFIX = "/tmp/ipi_"
#: Longest unix socket path the OS accepts (``sizeof(sun_path) - 1`` on Linux).
UNIX_PATH_MAX = 107
#: Infix of the run-time control sockets (``symbreak control``).
CONTROL_TAG = "symbreak_ctl_"


def unix_socket_path(address: str, sockets_prefix: str = IPI_DEFAULT_PREFIX) -> str:
    """Path of i-PI's unix socket for ``address``: ``sockets_prefix + address``."""
    return f"{sockets_prefix}{address}"


def unix_accepts(path: str, timeout: float = 1.0) -> bool:
    """Whether a server accepts a connection on the unix socket ``path`` (a live socket;
    a leftover file refuses). The connection is closed at once."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
            return True
        except OSError:
            return False


def check_unix_path(path: str, what: str = "unix socket path") -> str:
    """``path`` if the OS can bind it; ValueError naming it and the limit otherwise."""
    if len(path.encode()) > UNIX_PATH_MAX:
        raise ValueError(
            f"{what} {path!r} is {len(path.encode())} bytes, longer than the {UNIX_PATH_MAX} "
            "the OS allows: use a shorter sockets prefix or address"
        )
    return path
