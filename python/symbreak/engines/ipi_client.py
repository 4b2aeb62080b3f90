"""i-PI socket client, generic over a *driver* object (the engine adapter for i-PI).

Connection handling and the serving loop; the wire codec (headers, message layouts,
INIT-string parsing) is :mod:`symbreak.engines.ipi_protocol`, as ASE splits
``SocketClient`` from ``IPIProtocol``. The client converts i-PI's units and cell
conventions and hands the structures to a :class:`Driver`, which works in Å and eV only.

Since ipi 3.2 the server sends POSDATA and GETFORCE in one write, with no STATUS in
between ("consolidate_messages"); the client computes as soon as POSDATA has arrived, so
both orders work. Batched requests are always padded by the server to exactly B
structures (it replicates the last one and discards the padded results).

Units and conventions at the wire: Bohr, Hartree, Hartree/Bohr with i-PI's own factors
(:mod:`symbreak.engines.units`); the cell ``h`` has the lattice vectors as **columns** (a
general matrix: rotated or inverted cells from ``<ffrotations>`` are neither upper
triangular nor right handed); the virial is ``-dE/d(strain)`` in Hartree, not divided by
the volume, in i-PI's column convention (the transpose of the ASE/row-convention virial
the driver returns; the two agree for symmetric virials).

Driver side: cells ``[B, 3, 3]`` in Å with lattice vectors as **rows** (ASE), positions
``[B, N, 3]`` in Å; results per structure: energy (eV), forces ``[N, 3]`` (eV/Å), virial
``[3, 3]`` (eV, ``-dE/d(strain)``, row convention, not divided by the volume), extras (a
JSON-serialisable dict, forwarded to i-PI, which parses it into fields that
``<trajectory extra_type="key">extras</trajectory>`` can write; the key ``"raw"`` is
reserved by i-PI and refused here).

The driver runs on a worker thread of its own, so that a signal (SIGINT, SIGTERM) ends
the client within a fraction of a second even in the middle of a long model call: the
thread that runs :meth:`IPIClient.run` handles the signal, closes the connection and the
control socket and returns ``128 + n``; the abandoned call finishes (or dies with the
process) on its daemon thread.

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
import logging
import math
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .. import exit_codes
from . import ipi_protocol as wire
from .control import ControlError, ControlServer, PolicySlot
from .ipi_protocol import (
    InvalidDataError,
    ProtocolError,
    parse_parameters,
    split_init_string,
)
from .sockets import IPI_DEFAULT_PREFIX, UNIX_PATH_MAX, unix_socket_path
from .units import BOHR_IN_ANGSTROM, FORCE_EV_A_TO_HA_BOHR, HARTREE_IN_EV

__all__ = [
    "BOHR_IN_ANGSTROM",
    "HARTREE_IN_EV",
    "EXIT_OK",
    "EXIT_ERROR",
    "EXIT_CONNECT_FAILED",
    "EXIT_DISCONNECTED",
    "EXIT_TIMEOUT",
    "ClientError",
    "ConnectError",
    "Driver",
    "DriverError",
    "IPIClient",
    "InvalidDataError",
    "ProtocolError",
    "ServerDisconnected",
    "ServerTimeout",
    "parse_parameters",
    "split_init_string",
    "unix_socket_path",
]

log = logging.getLogger("symbreak.engines.ipi")

#: Exit codes of :meth:`IPIClient.run` (a signal gives ``128 + signal number``); the
#: table is :mod:`symbreak.exit_codes` (SERVE_*).
EXIT_OK = exit_codes.OK  #: the server sent EXIT
EXIT_ERROR = exit_codes.SERVE_ERROR  #: protocol error, invalid data, or the driver failed
EXIT_CONNECT_FAILED = exit_codes.SERVE_CONNECT_FAILED  #: no server within connect_timeout
EXIT_DISCONNECTED = exit_codes.SERVE_DISCONNECTED  #: the server went away without EXIT
EXIT_TIMEOUT = exit_codes.SERVE_TIMEOUT  #: connected, but no message within first_message_timeout


# --------------------------------------------------------------------------------------
# Driver contract
# --------------------------------------------------------------------------------------
@runtime_checkable
class Driver(Protocol):
    """What the client needs from a potential. All quantities in Å and eV.

    Optional methods, used when present:

    - ``set_policy(**kwargs) -> dict``: change the averaging policy at run time (called by
      the client's driver thread, right before a force computation, when an update
      arrived on the control channel); returns the new state (JSON-serialisable).
    - ``get_policy() -> dict``: the current state, queried after INIT for control queries.
    """

    def init(self, bead_index: int, parameters: str) -> None:
        """Called on INIT with the bead (request) index and i-PI's ``<parameters>``
        string for this ffsocket ("k : v , k2 : v2 , "; see :func:`parse_parameters`).
        The ``batch_size`` token i-PI appends is removed. Raising refuses the INIT: the
        client ends with an error before it answers READY."""
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
# Errors (ProtocolError and InvalidDataError come from the codec)
# --------------------------------------------------------------------------------------
class ClientError(RuntimeError):
    """Base class of the connection and driver errors that end :meth:`IPIClient.run`."""

    exit_code = EXIT_ERROR


class ConnectError(ClientError):
    """No server could be reached within the connection timeout."""

    exit_code = EXIT_CONNECT_FAILED


class ServerDisconnected(ClientError):
    """The server closed or reset the connection without sending EXIT."""

    exit_code = EXIT_DISCONNECTED


class ServerTimeout(ClientError):
    """The server accepted the connection but sent nothing within the first-message timeout."""

    exit_code = EXIT_TIMEOUT


class DriverError(ClientError):
    """The driver raised, refused INIT, or returned results that break the contract."""


class _Interrupted(BaseException):
    """Raised from the SIGINT/SIGTERM handler to unwind a blocking call."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_ENDING = (ClientError, ProtocolError)  # errors that end run() with their exit_code


# --------------------------------------------------------------------------------------
# The driver's thread
# --------------------------------------------------------------------------------------
class _DriverThread:
    """Runs every driver call on one daemon thread; the caller waits in short slices, so
    that the thread running the client (the main thread, which gets the signals) can be
    interrupted in the middle of a long model call, or stopped with ``stop_event``."""

    def __init__(self, stop_event: threading.Event):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stop_event = stop_event
        self.busy = False  #: a call is running (True after an interrupted call)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="symbreak-driver", daemon=True)
            self._thread.start()
        done = threading.Event()
        box: dict[str, Any] = {}
        self.busy = True
        self._jobs.put((fn, args, box, done))
        while not done.wait(0.5):  # a signal handler raising here ends the wait
            if self._stop_event.is_set():
                raise ClientError("stopped on request during a driver call")
        self.busy = False
        if "exc" in box:
            raise box["exc"]
        return box["result"]

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, box, done = job
            try:
                box["result"] = fn(*args)
            except BaseException as exc:  # re-raised on the caller's thread
                box["exc"] = exc
            finally:
                del fn, args
                done.set()

    def close(self) -> None:
        """End the thread: joined if idle; an abandoned busy call is not waited for."""
        if self._thread is not None:
            self._jobs.put(None)
            if not self.busy:
                # joined, so that no thread that ran torch ops is still alive while the
                # interpreter shuts down (libtorch/OpenMP thread state torn down under a
                # live thread aborts with "terminate called without an active exception")
                self._thread.join(timeout=10.0)


# --------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------
class IPIClient:
    """An i-PI socket client that serves the forces of ``driver``.

    Args:
        driver: the potential (see :class:`Driver`); all its calls run on one worker
            thread, one at a time.
        address: i-PI's ``<address>``: the socket name in unix mode (path
            ``sockets_prefix + address``), the host name in inet mode.
        unix: unix-domain socket (True) or TCP (False).
        host: inet mode: host to connect to (default: ``address``).
        port: inet mode: TCP port.
        sockets_prefix: prefix of unix socket paths, i-PI's ``sockets_prefix`` / ``-S``
            (default ``/tmp/ipi_``); also used for the control socket.
        connect_timeout: seconds to keep retrying until the server is up (None: forever).
        first_message_timeout: seconds allowed, once connected, for the server's first
            message (None: forever); ends with :data:`EXIT_TIMEOUT` (a server that
            accepts and never speaks, or not an i-PI server at all).
        control: open the run-time control socket (see :mod:`symbreak.engines.control`).
        control_name: name of the control socket (default: ``address`` in unix mode,
            ``host_port`` in inet mode).
        message_timeout: seconds allowed for the body of a message to arrive once its
            header has (waiting for the next header has no timeout).
        max_atoms: most atoms accepted in one POSDATA, all structures of a batch together
            (guards against garbage).
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
        sockets_prefix: str = IPI_DEFAULT_PREFIX,
        connect_timeout: float | None = 120.0,
        control: bool = True,
        control_name: str | None = None,
        message_timeout: float = 60.0,
        max_atoms: int = wire.MAX_ATOMS,
        handle_signals: bool = True,
        first_message_timeout: float | None = None,
    ):
        if not callable(getattr(driver, "compute", None)) or not callable(
            getattr(driver, "init", None)
        ):
            raise TypeError("driver must define init(bead_index, parameters) and compute()")
        if first_message_timeout is not None and not first_message_timeout > 0:
            raise ValueError(f"first_message_timeout must be > 0, got {first_message_timeout}")
        self.driver = driver
        self.address = address
        self.unix = unix
        self.host = host if host is not None else address
        self.port = int(port)
        self.sockets_prefix = sockets_prefix
        self.connect_timeout = connect_timeout
        self.first_message_timeout = first_message_timeout
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
        self.n_messages = 0  #: message headers received
        self.batch_size = 1
        self.bead_index: int | None = None
        self.parameters = ""

        self._sock: socket.socket | None = None
        self._timeout_now: float | None = None
        self._initialized = False
        self._reply: bytes | None = None
        self._stopping = False
        self._stop_event = threading.Event()
        self._worker = _DriverThread(self._stop_event)
        self._old_handlers: dict[int, Any] = {}
        self._ran = False

    # ---------------------------------------------------------------- public API
    @property
    def target(self) -> str:
        """Human-readable server address."""
        if self.unix:
            return f"unix socket {unix_socket_path(self.address, self.sockets_prefix)}"
        return f"inet {self.host}:{self.port}"

    @property
    def driver_busy(self) -> bool:
        """True if a driver call was abandoned (a signal or stop() interrupted it): the
        worker thread may still be running it, and the process should end promptly."""
        return self._worker.busy

    def run(self) -> int:
        """Connect, serve force requests until EXIT, and clean up (socket, control socket).

        Returns an exit code: :data:`EXIT_OK` on EXIT from the server,
        :data:`EXIT_DISCONNECTED` if the server went away, :data:`EXIT_CONNECT_FAILED` if
        it never came up, :data:`EXIT_TIMEOUT` if it never spoke, :data:`EXIT_ERROR` on
        protocol/data/driver errors (a refused INIT included), and ``128 + signum`` on
        SIGINT/SIGTERM. The reason is logged and kept in ``.error``.
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
            busy = " (abandoning the model call in progress)" if self.driver_busy else ""
            self.error = f"received {name}; closing the connection to i-PI ({self.target}){busy}"
            log.warning("symbreak i-PI client: %s", self.error)
            self.exit_code = exit_codes.from_signal(exc.signum)
        elif isinstance(exc, _ENDING) and self._stop_event.is_set():
            log.info("stopped on request (%s)", exc)
            self.exit_code = EXIT_OK
        elif isinstance(exc, _ENDING):
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
        connection retry, a blocking read or a driver call. :meth:`run` then returns
        :data:`EXIT_OK`."""
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
        self._worker.close()

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
            if len(path.encode()) > UNIX_PATH_MAX:
                raise ConnectError(
                    f"unix socket path {path!r} is {len(path.encode())} bytes, longer than the "
                    f"{UNIX_PATH_MAX} the OS allows; use a shorter sockets prefix or address"
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

    def _recv_into(self, view: memoryview, what: str, first: bool = False) -> None:
        """Fill ``view`` from the socket (the codec's ``readinto``); ``first`` marks the
        header of a new message."""
        n = len(view)
        pos = 0
        while pos < n:
            try:
                k = self._sock.recv_into(view[pos:], n - pos)
            except TimeoutError as exc:
                if first and pos == 0:
                    raise ServerTimeout(
                        f"the server at {self.target} accepted the connection but sent "
                        f"nothing within {self._timeout_now:g} s (--timeout); is it an i-PI "
                        "server, and is it running a simulation?"
                    ) from exc
                raise ProtocolError(
                    f"timed out after {self._timeout_now:g} s with {pos} of {n} bytes of "
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

    def _recv_header(self, view: memoryview, what: str) -> None:
        self._recv_into(view, what, first=True)

    def _send(self, payload: bytes) -> None:
        self._set_timeout(None)
        try:
            self._sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            raise ServerDisconnected(
                f"i-PI at {self.target} went away while the client was replying "
                f"({exc.strerror}); the server has exited or crashed"
            ) from exc

    def _call_driver(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._worker.call(fn, *args)

    # ---------------------------------------------------------------- protocol loop
    def _serve(self) -> None:
        while True:
            # the first message within first_message_timeout; later ones: however long
            self._set_timeout(self.first_message_timeout if self.n_messages == 0 else None)
            head = wire.read_header(self._recv_header)
            self.n_messages += 1
            if head == "STATUS":
                if not self._initialized:
                    self._send(wire.NEEDINIT)
                elif self._reply is not None:
                    self._send(wire.HAVEDATA)
                else:
                    self._send(wire.READY)
            elif head == "POSDATA":
                self._set_timeout(self.message_timeout)
                self._on_posdata()
            elif head == "GETFORCE":
                if self._reply is None:
                    raise ProtocolError("received GETFORCE before any POSDATA (no forces to send)")
                reply, self._reply = self._reply, None
                self._send(reply)
            elif head == "INIT":
                self._set_timeout(self.message_timeout)
                self._on_init()
            else:  # EXIT
                return

    def _on_init(self) -> None:
        init = wire.read_init(self._recv_into)
        rid, params = init.bead_index, init.parameters
        log.info("INIT bead %d, batch size %d, parameters %r", rid, init.batch_size, params)
        try:
            self._call_driver(self.driver.init, rid, params)
        except _ENDING:
            raise
        except Exception as exc:
            log.debug("driver.init failed", exc_info=True)
            raise DriverError(
                f"i-PI's INIT <parameters> {params.strip(' ,')!r} (bead {rid}) were refused: "
                f"{type(exc).__name__}: {exc}; the client stops before serving any request"
            ) from exc
        self.bead_index, self.parameters, self.batch_size = rid, params, init.batch_size
        self._initialized = True
        self._reply = None
        self.policy.refresh_state(self.driver)

    def _on_posdata(self) -> None:
        if not self._initialized:
            raise ProtocolError("received POSDATA before INIT (the client replied NEEDINIT)")
        if self._reply is not None:
            raise ProtocolError("received a second POSDATA before GETFORCE collected the forces")
        nb = self.batch_size
        data = wire.read_posdata(self._recv_into, nb, self.max_atoms)
        # i-PI: columns are lattice vectors (C order); the driver wants rows.
        cells = np.ascontiguousarray(np.transpose(data.h, (0, 2, 1))) * BOHR_IN_ANGSTROM
        positions = data.positions * BOHR_IN_ANGSTROM
        getforce_read = self._take_consolidated_getforce()
        self.n_requests += 1
        try:
            results = self._call_driver(self._compute, cells, positions)
        except _ENDING:
            raise
        except Exception as exc:
            log.error("driver.compute failed", exc_info=exc)
            raise DriverError(f"driver.compute failed: {type(exc).__name__}: {exc}") from exc
        self._reply = self._pack(results, nb, data.natoms)
        self.n_structures += nb
        if getforce_read:
            reply, self._reply = self._reply, None
            self._send(reply)

    def _compute(self, cells: np.ndarray, positions: np.ndarray) -> Any:
        """On the driver thread: pending policy updates, then the force computation."""
        self.policy.apply_pending(self.driver)
        return self.driver.compute(cells, positions)

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
            head = self._sock.recv(wire.HDRLEN, socket.MSG_PEEK)
        except OSError:  # nothing there yet (EAGAIN), or an error the main loop will see
            return False
        finally:
            self._set_timeout(previous)
        if len(head) < wire.HDRLEN or head.rstrip(b" \x00") != b"GETFORCE":
            return False
        self._recv_into(memoryview(bytearray(wire.HDRLEN)), "GETFORCE")
        self.n_messages += 1
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
                i = int(np.argwhere(~np.isfinite(f))[0, 0])
                raise DriverError(
                    f"driver returned non-finite forces for atom index {i} (structure {b})"
                )
            if not np.isfinite(v).all():
                raise DriverError(f"driver returned a non-finite virial for structure {b}")
            forces[b] = f
            virials[b] = v.T  # row convention (ASE) -> i-PI's column convention
            try:
                extras.append(wire.encode_extras(x))
            except wire.ExtrasError as exc:
                raise DriverError(f"driver returned bad extras for structure {b}: {exc}") from exc
        return wire.encode_forceready(
            energies / HARTREE_IN_EV,
            forces * FORCE_EV_A_TO_HA_BOHR,
            virials / HARTREE_IN_EV,
            extras,
        )
