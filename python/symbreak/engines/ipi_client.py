"""i-PI socket client, generic over a *driver* object (the engine adapter for i-PI).

The client speaks the i-PI wire protocol as implemented by ipi 3.3.1
(``ipi/interfaces/sockets.py``, classes ``Driver`` and ``InterfaceSocket``), converts
units and cell conventions, and hands the structures to a :class:`Driver`, which works
in Å and eV only.

Wire protocol (server → client headers are 12-byte, space-padded ASCII; ints are int32
and floats float64 in native byte order)::

    STATUS    -> reply NEEDINIT | READY | HAVEDATA
    INIT      int32 bead index, int32 length, `length` bytes of parameters string
    POSDATA   unbatched: h (9), h^-1 (9), int32 N, positions (3N)
              batched (batch_size B > 1, announced as "batch_size:B" appended to the INIT
              string): int32 N, B x [h (9), h^-1 (9)], positions (B x 3N)
    GETFORCE  -> reply FORCEREADY then
              unbatched: energy, int32 N, forces (3N), virial (9), int32 len, extras
              batched:   energies (B), int32 N, forces (B x 3N), virials (B x 9),
                         B x [int32 len, extras]
    EXIT      the client ends

Since ipi 3.2 the server sends POSDATA and GETFORCE in one write, with no STATUS in
between ("consolidate_messages"); the client computes as soon as POSDATA has arrived, so
both orders work. Batched requests are always padded by the server to exactly B
structures (it replicates the last one and discards the padded results).

Units and conventions at the wire: Bohr, Hartree, Hartree/Bohr (CODATA 2018 factors
below); the cell ``h`` has the lattice vectors as **columns** (a general matrix: rotated
or inverted cells from ``<ffrotations>`` are neither upper triangular nor right handed);
the virial is ``-dE/d(strain)`` in Hartree, not divided by the volume, in i-PI's
column convention (the transpose of the ASE/row-convention virial the driver returns;
the two agree for symmetric virials).

Driver side: cells ``[B, 3, 3]`` in Å with lattice vectors as **rows** (ASE), positions
``[B, N, 3]`` in Å; results per structure: energy (eV), forces ``[N, 3]`` (eV/Å), virial
``[3, 3]`` (eV, ``-dE/d(strain)``, row convention, not divided by the volume), extras (a
JSON-serialisable dict, forwarded to i-PI, which parses it into fields that
``<trajectory extra_type="key">extras</trajectory>`` can write; the key ``"raw"`` is
reserved by i-PI and refused here).

Socket addresses: a unix socket lives at ``sockets_prefix + address``, exactly as i-PI
builds it (``<simulation sockets_prefix=...>`` / ``i-pi -S``, whose default is
``/tmp/ipi_``), so the same prefix string must be given to both sides. An ``<ffsocket>``
nested in ``<ffrotations>`` ignores the simulation's prefix and always uses ``/tmp/ipi_``;
ASE's ``SocketIOCalculator`` always uses ``/tmp/ipi_`` too.

Not supported: i-PI's ``<ffsocket mode='shm'>`` (shared-memory payloads; the socket
carries only segment names) — use ``mode='unix'``.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import signal
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .control import ControlError, ControlServer, PolicySlot

__all__ = [
    "BOHR_IN_ANGSTROM",
    "HARTREE_IN_EV",
    "EXIT_OK",
    "EXIT_ERROR",
    "EXIT_CONNECT_FAILED",
    "EXIT_DISCONNECTED",
    "ClientError",
    "ConnectError",
    "Driver",
    "DriverError",
    "IPIClient",
    "InvalidDataError",
    "ProtocolError",
    "ServerDisconnected",
    "parse_parameters",
    "split_init_string",
    "unix_socket_path",
]

log = logging.getLogger("symbreak.engines.ipi")

#: CODATA 2018: 1 Bohr in Å and 1 Hartree in eV.
BOHR_IN_ANGSTROM = 0.529177210903
HARTREE_IN_EV = 27.211386245988
_FORCE_EV_A_TO_HA_BOHR = BOHR_IN_ANGSTROM / HARTREE_IN_EV

#: Exit codes of :meth:`IPIClient.run` (a signal gives ``128 + signal number``).
EXIT_OK = 0  #: the server sent EXIT
EXIT_ERROR = 1  #: protocol error, invalid data, or the driver failed
EXIT_CONNECT_FAILED = 2  #: no server came up within ``connect_timeout``
EXIT_DISCONNECTED = 3  #: the server went away without sending EXIT

HDRLEN = 12
_HEADERS = (b"STATUS", b"INIT", b"POSDATA", b"GETFORCE", b"EXIT")


def _msg(text: str) -> bytes:
    return text.upper().ljust(HDRLEN).encode("ascii")


_NEEDINIT = _msg("NEEDINIT")
_READY = _msg("READY")
_HAVEDATA = _msg("HAVEDATA")
_FORCEREADY = _msg("FORCEREADY")

# AF_UNIX sun_path holds 108 bytes including the terminating NUL on Linux.
_UNIX_PATH_MAX = 107


# --------------------------------------------------------------------------------------
# Driver contract
# --------------------------------------------------------------------------------------
@runtime_checkable
class Driver(Protocol):
    """What the client needs from a potential. All quantities in Å and eV.

    Optional methods, used when present:

    - ``set_policy(**kwargs) -> dict``: change the averaging policy at run time (called by
      the client on its main thread, right before a force computation, when an update
      arrived on the control channel); returns the new state (JSON-serialisable).
    - ``get_policy() -> dict``: the current state, queried after INIT for control queries.
    """

    def init(self, bead_index: int, parameters: str) -> None:
        """Called on INIT with the bead (request) index and i-PI's ``<parameters>``
        string for this ffsocket ("k : v , k2 : v2 , "; see :func:`parse_parameters`).
        The ``batch_size`` token i-PI appends is removed."""
        ...

    def compute(
        self, cells: np.ndarray, positions: np.ndarray
    ) -> Sequence[tuple[float, np.ndarray, np.ndarray, Mapping[str, Any]]]:
        """Evaluate B structures.

        Args:
            cells: ``[B, 3, 3]`` float64, Å, lattice vectors as rows.
            positions: ``[B, N, 3]`` float64, Å (not wrapped into the cell).

        Returns:
            B tuples ``(energy eV, forces [N, 3] eV/Å, virial [3, 3] eV, extras dict)``,
            the virial being ``-dE/d(strain)`` (row convention), not divided by volume.
        """
        ...


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------
class ClientError(RuntimeError):
    """Base class of the errors that end :meth:`IPIClient.run`."""

    exit_code = EXIT_ERROR


class ConnectError(ClientError):
    """No server could be reached within the connection timeout."""

    exit_code = EXIT_CONNECT_FAILED


class ServerDisconnected(ClientError):
    """The server closed or reset the connection without sending EXIT."""

    exit_code = EXIT_DISCONNECTED


class ProtocolError(ClientError):
    """The server sent something the i-PI protocol does not allow."""


class InvalidDataError(ClientError):
    """A well-formed message carried unusable data (NaN positions, bad cell)."""


class DriverError(ClientError):
    """The driver raised, or returned results that break the driver contract."""


class _Interrupted(BaseException):
    """Raised from the SIGINT/SIGTERM handler to unwind a blocking call."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def unix_socket_path(address: str, sockets_prefix: str = "/tmp/ipi_") -> str:
    """Path of i-PI's unix socket: ``sockets_prefix + address`` (i-PI's own rule)."""
    return f"{sockets_prefix}{address}"


def split_init_string(init: str) -> tuple[str, int]:
    """Split i-PI's INIT string into (parameters for the driver, batch size).

    ipi 3.3.1 (``Driver.initialize`` in ``ipi/interfaces/sockets.py``) announces batching
    by appending ``"[,] batch_size:B"`` to the ``<parameters>`` string; that token is
    removed here. Returns batch size 1 when it is absent.
    """
    batch = None
    kept: list[str] = []
    for tok in init.split(","):
        key, sep, value = tok.partition(":")
        if sep and key.strip() == "batch_size":
            try:
                batch = int(value.strip())
            except ValueError as exc:
                raise ProtocolError(f"malformed batch_size token {tok.strip()!r} in INIT") from exc
            continue
        kept.append(tok)
    if batch is None:
        return (init if init.strip() else ""), 1
    if batch < 1:
        raise ProtocolError(f"invalid batch_size {batch} announced in INIT")
    # i-PI sends " k : v , " + ", batch_size:B": restore " k : v , ".
    params = ",".join(kept).rstrip(" ,")
    return (params + " , " if params.strip() else ""), batch


def parse_parameters(parameters: str) -> dict[str, str]:
    """Parse i-PI's parameters string ``" k : v , k2 : v2 , "`` into ``{k: v}``.

    i-PI builds it from ``<parameters>{k: v, k2: v2}</parameters>`` with ``str(value)``,
    after its own type guessing (``true`` arrives as ``True``, ``5`` as ``5``). Values
    may contain ``:`` (``lebedev:5``) but not ``,``. Empty tokens are skipped.
    """
    out: dict[str, str] = {}
    for tok in parameters.split(","):
        if not tok.strip():
            continue
        key, sep, value = tok.partition(":")
        if not sep:
            raise ValueError(f"parameter token {tok.strip()!r} is not 'key : value'")
        out[key.strip()] = value.strip()
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _encode_extras(extras: Any, index: int) -> bytes:
    if extras is None:
        extras = {}
    if not isinstance(extras, Mapping):
        raise DriverError(
            f"driver returned extras of type {type(extras).__name__} for structure {index}; "
            "expected a dict (i-PI parses extras as a JSON object)"
        )
    if "raw" in extras:
        raise DriverError(
            f"driver returned an extras key 'raw' for structure {index}: i-PI reserves it "
            "(ipi.interfaces.utils.parse_extra raises on it); rename the key"
        )
    try:
        text = json.dumps(extras, default=_json_default, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise DriverError(f"driver extras for structure {index} are not JSON: {exc}") from exc
    return text.encode("utf-8")


def _first_bad(arr: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])


# --------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------
class IPIClient:
    """An i-PI socket client that serves the forces of ``driver``.

    Args:
        driver: the potential (see :class:`Driver`); called only from the thread that
            runs :meth:`run`.
        address: i-PI's ``<address>``: the socket name in unix mode (path
            ``sockets_prefix + address``), the host name in inet mode.
        unix: unix-domain socket (True) or TCP (False).
        host: inet mode: host to connect to (default: ``address``).
        port: inet mode: TCP port.
        sockets_prefix: prefix of unix socket paths, i-PI's ``sockets_prefix`` / ``-S``
            (default ``/tmp/ipi_``); also used for the control socket.
        connect_timeout: seconds to keep retrying until the server is up (None: forever).
        control: open the run-time control socket (see :mod:`symbreak.engines.control`).
        control_name: name of the control socket (default: ``address`` in unix mode,
            ``host_port`` in inet mode).
        message_timeout: seconds allowed for the body of a message to arrive once its
            header has (waiting for the next header has no timeout).
        max_atoms: largest atom count accepted in POSDATA (guards against garbage).
        handle_signals: install SIGINT/SIGTERM handlers while :meth:`run` runs (only
            possible, and only done, on the main thread).
    """

    def __init__(
        self,
        driver: Driver,
        address: str = "localhost",
        unix: bool = True,
        host: str | None = None,
        port: int = 31415,
        sockets_prefix: str = "/tmp/ipi_",
        connect_timeout: float | None = 120.0,
        control: bool = True,
        control_name: str | None = None,
        message_timeout: float = 60.0,
        max_atoms: int = 10_000_000,
        handle_signals: bool = True,
    ):
        if not callable(getattr(driver, "compute", None)) or not callable(
            getattr(driver, "init", None)
        ):
            raise TypeError("driver must define init(bead_index, parameters) and compute()")
        self.driver = driver
        self.address = address
        self.unix = unix
        self.host = host if host is not None else address
        self.port = int(port)
        self.sockets_prefix = sockets_prefix
        self.connect_timeout = connect_timeout
        self.control = control
        self.control_name = control_name or (address if unix else f"{self.host}_{self.port}")
        self.message_timeout = message_timeout
        self.max_atoms = max_atoms
        self.handle_signals = handle_signals

        self.policy = PolicySlot(driver)
        self.control_server: ControlServer | None = None
        self.error: str | None = None  #: message of the error that ended run(), if any
        self.exit_code: int | None = None
        self.n_requests = 0  #: POSDATA messages served
        self.n_structures = 0  #: structures computed (B per batched request)
        self.batch_size = 1
        self.bead_index: int | None = None
        self.parameters = ""

        self._sock: socket.socket | None = None
        self._timeout_now: float | None = None
        self._initialized = False
        self._reply: bytes | None = None
        self._hdr = bytearray(HDRLEN)
        self._stopping = False
        self._stop_event = threading.Event()
        self._old_handlers: dict[int, Any] = {}
        self._ran = False

    # ---------------------------------------------------------------- public API
    @property
    def target(self) -> str:
        """Human-readable server address."""
        if self.unix:
            return f"unix socket {unix_socket_path(self.address, self.sockets_prefix)}"
        return f"inet {self.host}:{self.port}"

    def run(self) -> int:
        """Connect, serve force requests until EXIT, and clean up (socket, control socket).

        Returns an exit code: :data:`EXIT_OK` on EXIT from the server,
        :data:`EXIT_DISCONNECTED` if the server went away, :data:`EXIT_CONNECT_FAILED` if
        it never came up, :data:`EXIT_ERROR` on protocol/data/driver errors, and
        ``128 + signum`` on SIGINT/SIGTERM. The reason is logged and kept in ``.error``.
        """
        if self._ran:
            raise RuntimeError("IPIClient.run() can only be called once")
        self._ran = True
        self._install_signal_handlers()
        try:
            if self.control:
                server = ControlServer(self.control_name, self.sockets_prefix, self.policy)
                try:
                    server.start()
                except ControlError as exc:
                    raise ClientError(f"{exc} (pass control=False to run without)") from exc
                self.control_server = server
                log.info("control socket at %s", server.path)
            self._connect()
            self._serve()
            log.info("i-PI sent EXIT after %d requests; bye", self.n_requests)
            self.exit_code = EXIT_OK
        except BaseException as exc:
            self._stopping = True  # from here on a second signal does not interrupt cleanup
            if not self._classify_exit(exc):
                raise  # KeyboardInterrupt/SystemExit when we own no handlers (after cleanup)
        finally:
            self._stopping = True
            self.close()
            self._restore_signal_handlers()
        return self.exit_code

    def _classify_exit(self, exc: BaseException) -> bool:
        """Record exit code and message for ``exc``; False if it must propagate."""
        if isinstance(exc, _Interrupted):
            name = signal.Signals(exc.signum).name
            self.error = f"received {name}; closing the connection to i-PI ({self.target})"
            log.warning("symbreak i-PI client: %s", self.error)
            self.exit_code = 128 + exc.signum
        elif isinstance(exc, ClientError) and self._stop_event.is_set():
            log.info("stopped on request (%s)", exc)
            self.exit_code = EXIT_OK
        elif isinstance(exc, ClientError):
            self.error = str(exc)
            log.error("symbreak i-PI client: %s", self.error)
            self.exit_code = exc.exit_code
        elif isinstance(exc, Exception):  # a bug or an unexpected OS error
            self.error = f"unexpected {type(exc).__name__}: {exc}"
            log.error("symbreak i-PI client: %s", self.error, exc_info=exc)
            self.exit_code = EXIT_ERROR
        else:
            return False
        return True

    def stop(self) -> None:
        """Ask a running :meth:`run` (on another thread) to end soon: wakes it from a
        connection retry or a blocking read. :meth:`run` then returns :data:`EXIT_OK`."""
        self._stop_event.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Close the i-PI connection and the control socket (idempotent)."""
        # wake control requests still waiting for a force request first, so that the
        # control thread is free to stop
        self.policy.fail_pending("the client is exiting; the update was not applied")
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        server, self.control_server = self.control_server, None
        if server is not None:
            server.close()

    # ---------------------------------------------------------------- signals
    def _install_signal_handlers(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            if not self._stopping:
                self._stopping = True
                raise _Interrupted(signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old_handlers[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):  # not the main interpreter, or similar
                pass

    def _restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            try:
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass
        self._old_handlers.clear()

    # ---------------------------------------------------------------- connection
    def _connect(self) -> None:
        if self.unix:
            path = unix_socket_path(self.address, self.sockets_prefix)
            if len(path.encode()) > _UNIX_PATH_MAX:
                raise ConnectError(
                    f"unix socket path {path!r} is {len(path.encode())} bytes, longer than the "
                    f"{_UNIX_PATH_MAX} the OS allows; use a shorter sockets prefix or address"
                )
            family, target = socket.AF_UNIX, path
        else:
            family, target = socket.AF_INET, None
            try:
                infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise ConnectError(f"cannot resolve i-PI host {self.host!r}: {exc}") from exc
            family, _, _, _, target = infos[0]

        retryable = (
            FileNotFoundError,
            ConnectionRefusedError,
            ConnectionAbortedError,
            ConnectionResetError,
            TimeoutError,
            BlockingIOError,
        )
        start = time.monotonic()
        deadline = None if self.connect_timeout is None else start + self.connect_timeout
        delay = 0.02
        attempts = 0
        while True:
            attempts += 1
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                remaining = 5.0 if deadline is None else deadline - time.monotonic()
                sock.settimeout(min(5.0, max(0.05, remaining)))
                sock.connect(target)
                break
            except retryable as exc:
                sock.close()
                last = exc
            except OSError as exc:
                sock.close()
                if exc.errno in (errno.EAGAIN, errno.ECONNREFUSED, errno.ENOENT):
                    last = exc
                else:
                    raise ConnectError(f"cannot connect to i-PI at {self.target}: {exc}") from exc
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise ConnectError(
                    f"no i-PI server at {self.target} after {now - start:.1f} s "
                    f"({attempts} attempts; last error: {last.strerror or last}); "
                    "is i-PI running with the same address"
                    + (" and sockets prefix" if self.unix else " and port")
                    + "?"
                )
            if self._stop_event.wait(delay if deadline is None else min(delay, deadline - now)):
                raise ConnectError("stopped on request while waiting for the server")
            delay = min(delay * 1.5, 0.5)
        if not self.unix:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.settimeout(None)
        self._timeout_now = None
        self._sock = sock
        if self._stop_event.is_set():
            raise ConnectError("stopped on request")
        log.info("connected to i-PI at %s", self.target)

    # ---------------------------------------------------------------- low-level I/O
    def _set_timeout(self, value: float | None) -> None:
        if self._timeout_now != value:
            self._sock.settimeout(value)
            self._timeout_now = value

    def _recv_into(self, view: memoryview, what: str, *, first: bool = False) -> None:
        """Fill ``view`` from the socket; ``first`` marks the start of a new message."""
        n = len(view)
        pos = 0
        while pos < n:
            try:
                k = self._sock.recv_into(view[pos:], n - pos)
            except TimeoutError as exc:
                raise ProtocolError(
                    f"timed out after {self.message_timeout} s with {pos} of {n} bytes of "
                    f"{what} received (malformed or truncated message)"
                ) from exc
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
                raise ServerDisconnected(
                    f"connection to i-PI at {self.target} was reset ({exc.strerror}) while "
                    f"reading {what}; the server has exited or crashed"
                ) from exc
            if k == 0:
                if first and pos == 0:
                    raise ServerDisconnected(
                        f"i-PI at {self.target} closed the connection without sending EXIT "
                        f"(after {self.n_requests} requests); the server has exited or crashed"
                    )
                raise ServerDisconnected(
                    f"i-PI at {self.target} closed the connection in the middle of {what} "
                    f"({pos} of {n} bytes received)"
                )
            pos += k

    def _recv_array(self, count: int, dtype: Any, what: str) -> np.ndarray:
        arr = np.empty(count, dtype=dtype)
        if count:
            self._recv_into(memoryview(arr).cast("B"), what)
        return arr

    def _recv_int(self, what: str) -> int:
        return int(self._recv_array(1, np.int32, what)[0])

    def _send(self, payload: bytes) -> None:
        self._set_timeout(None)
        try:
            self._sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            raise ServerDisconnected(
                f"i-PI at {self.target} went away while the client was replying "
                f"({exc.strerror}); the server has exited or crashed"
            ) from exc

    # ---------------------------------------------------------------- protocol loop
    def _serve(self) -> None:
        hdr_view = memoryview(self._hdr)
        while True:
            self._set_timeout(None)  # block until the next message, however long
            self._recv_into(hdr_view, "a message header", first=True)
            raw = bytes(self._hdr)
            head = raw.rstrip(b" \x00")
            if head == b"STATUS":
                if not self._initialized:
                    self._send(_NEEDINIT)
                elif self._reply is not None:
                    self._send(_HAVEDATA)
                else:
                    self._send(_READY)
            elif head == b"POSDATA":
                self._set_timeout(self.message_timeout)
                self._on_posdata()
            elif head == b"GETFORCE":
                if self._reply is None:
                    raise ProtocolError("received GETFORCE before any POSDATA (no forces to send)")
                reply, self._reply = self._reply, None
                self._send(reply)
            elif head == b"INIT":
                self._set_timeout(self.message_timeout)
                self._on_init()
            elif head == b"EXIT":
                return
            else:
                raise ProtocolError(
                    f"unknown message header {raw!r} from {self.target} "
                    f"(expected one of {', '.join(h.decode() for h in _HEADERS)})"
                )

    def _on_init(self) -> None:
        rid = self._recv_int("INIT bead index")
        length = self._recv_int("INIT string length")
        if length < 0 or length > (1 << 20):
            raise ProtocolError(f"malformed INIT: string length {length} (must be 0..1048576)")
        raw = self._recv_array(length, np.uint8, "INIT string").tobytes()
        try:
            text = raw.decode("utf-8").rstrip("\x00")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"malformed INIT: string is not UTF-8: {raw[:64]!r}") from exc
        params, batch = split_init_string(text)
        log.info("INIT bead %d, batch size %d, parameters %r", rid, batch, params)
        try:
            self.driver.init(rid, params)
        except ClientError:
            raise
        except Exception as exc:
            log.exception("driver.init failed")
            raise DriverError(
                f"driver.init({rid}, {params!r}) failed: {type(exc).__name__}: {exc}"
            ) from exc
        self.bead_index, self.parameters, self.batch_size = rid, params, batch
        self._initialized = True
        self._reply = None
        self.policy.refresh_state(self.driver)

    def _check_natoms(self, nat: int) -> None:
        if nat < 1 or nat > self.max_atoms:
            raise ProtocolError(
                f"malformed POSDATA: atom count {nat} (must be 1..{self.max_atoms}); "
                "note that <ffsocket mode='shm'> is not supported, use mode='unix'"
            )

    def _on_posdata(self) -> None:
        if not self._initialized:
            raise ProtocolError("received POSDATA before INIT (the client replied NEEDINIT)")
        if self._reply is not None:
            raise ProtocolError("received a second POSDATA before GETFORCE collected the forces")
        nb = self.batch_size
        if nb == 1:
            hih = self._recv_array(18, np.float64, "POSDATA cell")
            nat = self._recv_int("POSDATA atom count")
            self._check_natoms(nat)
            pos = self._recv_array(3 * nat, np.float64, "POSDATA positions")
            h = hih[:9].reshape(1, 3, 3)
        else:
            nat = self._recv_int("batched POSDATA atom count")
            self._check_natoms(nat)
            hih = self._recv_array(18 * nb, np.float64, "batched POSDATA cells")
            pos = self._recv_array(3 * nat * nb, np.float64, "batched POSDATA positions")
            h = hih.reshape(nb, 2, 3, 3)[:, 0]
        # i-PI: columns are lattice vectors (C order); the driver wants rows.
        cells = np.ascontiguousarray(np.transpose(h, (0, 2, 1))) * BOHR_IN_ANGSTROM
        positions = pos.reshape(nb, nat, 3) * BOHR_IN_ANGSTROM
        if not np.isfinite(cells).all():
            b, i, j = _first_bad(cells)
            raise InvalidDataError(
                f"non-finite cell received from i-PI (structure {b}, lattice vector {i}, "
                f"component {j}: {cells[b, i, j]})"
            )
        if not np.isfinite(positions).all():
            b, i, _ = _first_bad(positions)
            raise InvalidDataError(
                f"non-finite position received from i-PI for atom index {i} "
                f"(0-based; structure {b} of {nb}): {positions[b, i].tolist()}"
            )
        getforce_read = self._take_consolidated_getforce()
        self.n_requests += 1
        self.policy.apply_pending(self.driver)
        try:
            results = self.driver.compute(cells, positions)
        except ClientError:
            raise
        except Exception as exc:
            log.exception("driver.compute failed")
            raise DriverError(f"driver.compute failed: {type(exc).__name__}: {exc}") from exc
        self._reply = self._pack(results, nb, nat)
        self.n_structures += nb
        if getforce_read:
            reply, self._reply = self._reply, None
            self._send(reply)

    def _take_consolidated_getforce(self) -> bool:
        """Read the GETFORCE that i-PI wrote right behind POSDATA (consolidated messages)
        before computing, if it is already there; True if it was.

        Then no unread bytes sit in the socket while the model runs, so if this process
        is killed mid-computation the kernel closes the connection with an EOF instead of
        a reset. ipi 3.3.1 re-queues the request of a client that closed (another client
        can take over), but a reset raises ConnectionResetError in its polling thread,
        which dies and leaves the simulation hanging forever.
        """
        previous = self._timeout_now
        self._set_timeout(0.0)  # non-blocking: with a timeout, Python would wait for data
        try:
            head = self._sock.recv(HDRLEN, socket.MSG_PEEK)
        except OSError:  # nothing there yet (EAGAIN), or an error the main loop will see
            return False
        finally:
            self._set_timeout(previous)
        if len(head) < HDRLEN or head.rstrip(b" \x00") != b"GETFORCE":
            return False
        self._recv_into(memoryview(self._hdr), "GETFORCE")
        return True

    def _pack(self, results: Any, nb: int, nat: int) -> bytes:
        """Validate the driver's results and build the FORCEREADY reply (atomic units)."""
        try:
            results = list(results)
        except TypeError as exc:
            raise DriverError("driver.compute must return a list of B result tuples") from exc
        if len(results) != nb:
            raise DriverError(f"driver.compute returned {len(results)} results for {nb} structures")
        energies = np.empty(nb, np.float64)
        forces = np.empty((nb, nat, 3), np.float64)
        virials = np.empty((nb, 3, 3), np.float64)
        extras: list[bytes] = []
        for b, res in enumerate(results):
            try:
                e, f, v, x = res
            except (TypeError, ValueError) as exc:
                raise DriverError(
                    f"result {b} is not an (energy, forces, virial, extras) tuple"
                ) from exc
            try:
                energies[b] = float(e)
                f = np.asarray(f, dtype=np.float64)
                v = np.asarray(v, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise DriverError(f"result {b} has non-numeric values: {exc}") from exc
            if f.shape != (nat, 3):
                raise DriverError(
                    f"driver forces for structure {b} have shape {f.shape}, expected ({nat}, 3)"
                )
            if v.shape != (3, 3):
                raise DriverError(
                    f"driver virial for structure {b} has shape {v.shape}, expected (3, 3)"
                )
            if not math.isfinite(energies[b]):
                raise DriverError(f"driver returned a non-finite energy ({e}) for structure {b}")
            if not np.isfinite(f).all():
                i, _ = _first_bad(f)
                raise DriverError(
                    f"driver returned non-finite forces for atom index {i} (structure {b})"
                )
            if not np.isfinite(v).all():
                raise DriverError(f"driver returned a non-finite virial for structure {b}")
            forces[b] = f
            virials[b] = v.T  # row convention (ASE) -> i-PI's column convention
            extras.append(_encode_extras(x, b))
        energies /= HARTREE_IN_EV
        forces *= _FORCE_EV_A_TO_HA_BOHR
        virials /= HARTREE_IN_EV
        natb = np.int32(nat).tobytes()
        if nb == 1:
            parts = [
                _FORCEREADY,
                energies.tobytes(),
                natb,
                forces.tobytes(),
                virials.tobytes(),
                np.int32(len(extras[0])).tobytes(),
                extras[0],
            ]
        else:
            parts = [_FORCEREADY, energies.tobytes(), natb, forces.tobytes(), virials.tobytes()]
            for x in extras:
                parts += [np.int32(len(x)).tobytes(), x]
        return b"".join(parts)
