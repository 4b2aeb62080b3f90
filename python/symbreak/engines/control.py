"""Run-time control channel of a running engine client (e.g. the i-PI client).

A client opens a small unix-domain *control socket* next to its i-PI socket, at
``sockets_prefix + "symbreak_ctl_" + name`` (``name`` is the i-PI address; a second
client serving the same address gets ``...name.1``, a third ``...name.2``, ...). A daemon
thread serves it. Each connection carries one request and one reply, each a single JSON
object on one line (UTF-8, ``\\n``-terminated):

- ``{"average": "lebedev:5", "inversion": true, "seed": 7}``: a policy update. Every key
  except ``wait`` is passed to ``driver.set_policy(**kwargs)``. The update is parked in a
  thread-safe slot and applied by the client's own thread right before its next force
  computation, so it takes effect from the next force request and the driver is never
  called from two threads. The control thread waits up to ``wait`` seconds (default 5,
  at most 60) for that to happen and replies
  ``{"ok": true, "applied": true, "state": <set_policy's return>}``, or
  ``{"ok": false, "error": "..."}`` if ``set_policy`` raised (the old policy stays), or,
  if no force request came in time, ``{"ok": true, "applied": false, "pending": {...}}``
  (it is still applied at the next request).
- ``{"query": true}``: the current state, without changing anything:
  ``{"ok": true, "state": ..., "pending": [...], "updates_applied": n, "last_error": ...}``.

Every reply also carries ``pid`` and ``socket``. A driver without ``set_policy`` gets
``{"ok": false, "error": ...}`` for updates, and a malformed request (not JSON, not an
object, too long, or not complete within 5 s) an error reply. The socket file is removed
when the client exits (pass or fail); a stale file left by a killed client is detected
and reused.

Security and robustness: the socket is created with mode 0600 whatever the umask, and
the server refuses peers that do not run as its own user (``SO_PEERCRED``). On the other
end, :func:`send_control` only talks to socket files owned by the current user whose
listening process runs as the current user (a socket squatted by another user at the
expected name is reported as an error, never as ok). Each connection is served on a
thread of its own, so a slow or silent peer does not delay the others.

:func:`send_control` is the other end (used by ``symbreak control``).
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import math
import os
import re
import selectors
import socket
import stat
import struct
import threading
import time
from typing import Any

from .sockets import CONTROL_TAG, IPI_DEFAULT_PREFIX, UNIX_PATH_MAX, unix_accepts

__all__ = [
    "ControlError",
    "ControlServer",
    "PolicySlot",
    "control_socket_path",
    "find_control_sockets",
    "send_control",
]

log = logging.getLogger("symbreak.engines.control")

MAX_MESSAGE = 1 << 16  # bytes per request/reply line
DEFAULT_WAIT = 5.0  # seconds a control request waits for the next force request
MAX_WAIT = 60.0
READ_DEADLINE = 5.0  # seconds a peer has to send its whole request line
MAX_CONNECTIONS = 16  # connections served at once; more get a "busy" error reply
_RESERVED = ("wait", "query")


class ControlError(RuntimeError):
    """The control channel could not be used (no client listening, bad reply, timeout)."""


def control_socket_path(name: str, sockets_prefix: str = IPI_DEFAULT_PREFIX, index: int = 0) -> str:
    """Path of the control socket of the ``index``-th client serving i-PI address ``name``."""
    base = f"{sockets_prefix}{CONTROL_TAG}{name}"
    return base if index == 0 else f"{base}.{index}"


def find_control_sockets(
    name: str, sockets_prefix: str = IPI_DEFAULT_PREFIX, *, owned_only: bool = False
) -> list[str]:
    """Existing control socket files for address ``name`` (live or stale); with
    ``owned_only``, only those :func:`untrusted_reason` accepts (owned by this user)."""
    base = control_socket_path(name, sockets_prefix)
    paths = [base] if os.path.lexists(base) else []
    pattern = re.compile(re.escape(base) + r"\.(\d+)$")
    extra = [p for p in glob.glob(glob.escape(base) + ".*") if pattern.match(p)]
    paths += sorted(extra, key=lambda p: int(pattern.match(p).group(1)))
    if owned_only:
        paths = [p for p in paths if untrusted_reason(p) is None]
    return paths


def untrusted_reason(path: str) -> str | None:
    """Why the file at ``path`` is not a control socket of this user (None if it is):
    not a socket, or owned by another user (squatting)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "it does not exist"
    if not stat.S_ISSOCK(st.st_mode):
        return "it is not a socket"
    if st.st_uid != os.geteuid():
        return f"it is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
    return None


def peer_uid(sock: socket.socket) -> int:
    """The effective uid of the process at the other end of a connected unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _jsonable(obj: Any) -> Any:
    """Best-effort conversion of a driver's state to something json.dumps accepts."""
    try:
        json.dumps(obj)
        return obj
    except (TypeError, ValueError):
        pass
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    return repr(obj)


class _Ticket:
    __slots__ = ("kwargs", "event", "reply")

    def __init__(self, kwargs: dict[str, Any]):
        self.kwargs = kwargs
        self.event = threading.Event()
        self.reply: dict[str, Any] | None = None


class PolicySlot:
    """Thread-safe hand-over of policy updates to the thread that runs the driver.

    The control thread calls :meth:`submit`; the client thread calls
    :meth:`apply_pending` right before each force computation.
    """

    def __init__(self, driver: Any):
        self._lock = threading.Lock()
        self._pending: list[_Ticket] = []
        self._driver_type = type(driver).__name__
        self.supports_updates = callable(getattr(driver, "set_policy", None))
        self.state: Any = None
        self.updates_applied = 0
        self.last_error: str | None = None
        self._closed_reason: str | None = None

    def submit(self, kwargs: dict[str, Any]) -> _Ticket:
        """Queue an update; the returned ticket's event is set once it has been handled."""
        ticket = _Ticket(kwargs)
        with self._lock:
            if self._closed_reason is not None:
                ticket.reply = {"ok": False, "error": self._closed_reason}
                ticket.event.set()
            else:
                self._pending.append(ticket)
        return ticket

    def has_pending(self) -> bool:
        return bool(self._pending)

    def apply_pending(self, driver: Any) -> None:
        """Apply queued updates in order (client thread only). Errors are reported to the
        requester and logged; they never stop the simulation."""
        if not self._pending:  # cheap check without the lock on the hot path
            return
        with self._lock:
            tickets, self._pending = self._pending, []
        for t in tickets:
            try:
                state = driver.set_policy(**t.kwargs)
            except Exception as exc:  # the driver refused: keep the old policy
                msg = f"set_policy({t.kwargs}) failed: {type(exc).__name__}: {exc}"
                log.warning("control: %s", msg)
                self.last_error = msg
                t.reply = {"ok": False, "error": msg}
            else:
                self.state = _jsonable(state)
                self.updates_applied += 1
                self.last_error = None
                log.info("control: policy changed to %s", self.state)
                t.reply = {"ok": True, "applied": True, "state": self.state}
            t.event.set()

    def refresh_state(self, driver: Any) -> None:
        """Record ``driver.get_policy()`` if the driver has it (client thread only)."""
        getter = getattr(driver, "get_policy", None)
        if callable(getter):
            try:
                self.state = _jsonable(getter())
            except Exception as exc:
                log.warning("control: get_policy() failed: %s", exc)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            pending = [dict(t.kwargs) for t in self._pending]
        return {
            "ok": True,
            "state": self.state,
            "pending": pending,
            "updates_applied": self.updates_applied,
            "last_error": self.last_error,
            "supports_updates": self.supports_updates,
        }

    def fail_pending(self, reason: str) -> None:
        """Wake all waiting requesters with an error (the client is going away)."""
        with self._lock:
            self._closed_reason = reason
            tickets, self._pending = self._pending, []
        for t in tickets:
            t.reply = {"ok": False, "error": reason}
            t.event.set()

    def handle(self, request: Any, default_wait: float = DEFAULT_WAIT) -> dict[str, Any]:
        """Handle one decoded control request (called on the control thread)."""
        if not isinstance(request, dict):
            return {"ok": False, "error": "a control request must be a JSON object"}
        if request.get("query"):
            extra = set(request) - set(_RESERVED)
            if extra:
                return {"ok": False, "error": f"query cannot be combined with {sorted(extra)}"}
            return self.snapshot()
        kwargs = {k: v for k, v in request.items() if k not in _RESERVED}
        if not kwargs:
            return {"ok": False, "error": "empty request: give policy keys or query=true"}
        if not self.supports_updates:
            return {
                "ok": False,
                "error": f"driver {self._driver_type} has no set_policy(); "
                "its policy cannot be changed at run time",
            }
        try:
            wait = float(request.get("wait", default_wait))
        except (TypeError, ValueError, OverflowError):
            wait = math.nan
        if math.isnan(wait):
            return {"ok": False, "error": f"wait must be a number, got {request.get('wait')!r}"}
        wait = min(max(wait, 0.0), MAX_WAIT)
        ticket = self.submit(kwargs)
        if ticket.event.wait(wait):
            return dict(ticket.reply)
        return {
            "ok": True,
            "applied": False,
            "pending": kwargs,
            "state": self.state,
            "message": f"no force request within {wait:g} s; the update is queued and "
            "takes effect at the next force request",
        }


class ControlServer:
    """Serves the control socket of one client: an accept loop on a daemon thread, and a
    short-lived daemon thread per connection (at most ``max_connections`` at once)."""

    def __init__(
        self,
        name: str,
        sockets_prefix: str,
        slot: PolicySlot,
        default_wait: float = DEFAULT_WAIT,
        max_clients: int = 64,
        max_connections: int = MAX_CONNECTIONS,
        read_deadline: float = READ_DEADLINE,
    ):
        self.name = name
        self.sockets_prefix = sockets_prefix
        self.slot = slot
        self.default_wait = default_wait
        self.max_clients = max_clients
        self.read_deadline = read_deadline
        self.path: str | None = None
        self.n_served = 0  #: connections answered (any reply, errors included)
        self._listen: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(max_connections)
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._closed = False

    def _bind(self) -> None:
        for index in range(self.max_clients):
            path = control_socket_path(self.name, self.sockets_prefix, index)
            if len(path.encode()) > UNIX_PATH_MAX:
                raise ControlError(
                    f"control socket path {path!r} is longer than the {UNIX_PATH_MAX} bytes "
                    "the OS allows; use a shorter sockets prefix/address or disable control"
                )
            for _attempt in range(2):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.bind(path)
                except OSError as exc:
                    sock.close()
                    if exc.errno != errno.EADDRINUSE:
                        raise ControlError(f"cannot create control socket {path}: {exc}") from exc
                    reason = untrusted_reason(path)
                    if reason is not None:
                        log.warning("control: skipping %s: %s", path, reason)
                        break
                    if unix_accepts(path):
                        break  # another client owns this one: try the next index
                    try:  # stale file from a killed client: reclaim it once
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                    except OSError:
                        break
                    continue
                try:
                    # 0600 whatever the umask; before listen(), so no connection can be
                    # made while the mode is still the umask's
                    os.chmod(path, 0o600)
                    sock.listen(8)
                except OSError as exc:
                    sock.close()
                    _unlink(path)
                    raise ControlError(f"cannot set up control socket {path}: {exc}") from exc
                self._listen, self.path = sock, path
                return
        raise ControlError(
            f"{self.max_clients} control sockets already exist for {self.name!r} "
            "(live, or not owned by you)"
        )

    def start(self) -> str:
        """Bind the socket and start the serving thread; returns the socket path."""
        self._bind()
        try:
            self._wake_r, self._wake_w = socket.socketpair()
            self._thread = threading.Thread(
                target=self._loop, name=f"symbreak-control-{self.name}", daemon=True
            )
            self._thread.start()
        except BaseException:
            self.close()
            raise
        return self.path

    def close(self) -> None:
        """Stop the threads and remove the socket file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:  # wake connection threads blocked reading
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for s in (self._listen, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        if self.path is not None:
            _unlink(self.path)

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listen, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while True:
                for key, _ in sel.select():  # blocks; woken by a client or by close()
                    if key.data == "wake":
                        return
                    try:
                        conn, _ = self._listen.accept()
                    except OSError:
                        continue
                    self._dispatch(conn)
        except Exception:  # never let the thread die silently
            log.exception("control thread crashed; run-time control disabled")
        finally:
            sel.close()

    def _dispatch(self, conn: socket.socket) -> None:
        """Check the peer, then serve ``conn`` on a thread of its own."""
        try:
            uid = peer_uid(conn)
        except OSError:
            conn.close()
            return
        if uid != os.geteuid():
            log.warning("control: refused a connection from uid %d", uid)
            self._reply(conn, {"ok": False, "error": f"refused: peer uid {uid} is not the owner"})
            conn.close()
            return
        if not self._slots.acquire(blocking=False):
            self._reply(conn, {"ok": False, "error": "busy: too many control connections"})
            conn.close()
            return
        with self._conns_lock:
            self._conns.add(conn)
        try:
            threading.Thread(
                target=self._serve_conn, args=(conn,), name="symbreak-control-conn", daemon=True
            ).start()
        except BaseException:
            self._release(conn)
            raise

    def _release(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)
        conn.close()
        self._slots.release()

    def _serve_conn(self, conn: socket.socket) -> None:
        try:
            self._serve_one(conn)
        except Exception:
            log.exception("control: unexpected error serving a request")
        finally:
            self._release(conn)

    def _serve_one(self, conn: socket.socket) -> None:
        try:
            line = _read_line(conn, time.monotonic() + self.read_deadline)
            reply = self.handle_line(line)
        except ControlError as exc:
            reply = {"ok": False, "error": str(exc)}
        except OSError:
            return  # the requester went away
        self._reply(conn, reply)

    def handle_line(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line (without ``pid``/``socket``)."""
        try:
            request = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            # ValueError: JSONDecodeError, and ints beyond Python's digit limit
            return {"ok": False, "error": f"control request is not JSON: {exc}"}
        return self.slot.handle(request, self.default_wait)

    def _reply(self, conn: socket.socket, reply: dict[str, Any]) -> None:
        reply.update(pid=os.getpid(), socket=self.path)
        self.n_served += 1
        try:
            text = json.dumps(_jsonable(reply))
        except (ValueError, RecursionError) as exc:
            text = json.dumps({"ok": False, "error": f"reply not serialisable: {exc}"})
        try:
            conn.settimeout(self.read_deadline)
            conn.sendall(text.encode("utf-8") + b"\n")
        except OSError:
            pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _read_line(conn: socket.socket, deadline: float | None = None) -> bytes:
    """One ``\\n``-terminated line (without it); ControlError past ``deadline``
    (``time.monotonic()``) or beyond MAX_MESSAGE bytes."""
    buf = bytearray()
    while b"\n" not in buf:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ControlError("timed out waiting for a complete JSON line")
            conn.settimeout(left)
        try:
            chunk = conn.recv(4096)
        except TimeoutError as exc:
            raise ControlError("timed out waiting for a complete JSON line") from exc
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_MESSAGE:
            raise ControlError(f"message longer than {MAX_MESSAGE} bytes")
    return bytes(buf).split(b"\n", 1)[0]


def _untrusted(path: str, why: str) -> dict[str, Any]:
    return {
        "ok": False,
        "untrusted": True,
        "socket": path,
        "error": f"untrusted control socket {path}: {why}; not sent (another user may be "
        "squatting the name)",
    }


def send_control(
    address: str,
    sockets_prefix: str = IPI_DEFAULT_PREFIX,
    *,
    timeout: float = 10.0,
    wait: float = DEFAULT_WAIT,
    query: bool = False,
    **policy: Any,
) -> dict[str, Any]:
    """Send a policy update (``**policy``) or a query to every client serving ``address``.

    Args:
        address: the i-PI address (control name) the clients serve.
        sockets_prefix: the clients' sockets prefix (i-PI's, default ``/tmp/ipi_``).
        timeout: seconds to connect and send, and for the reply beyond ``wait``.
        wait: seconds each client waits for its next force request to apply the update.
        query: only ask for the current state.
        **policy: keys for ``driver.set_policy``, e.g. ``average="lebedev:5"``.

    Returns:
        ``{"ok": all clients ok, "clients": [reply, ...]}`` (one reply per live client,
        each with ``pid`` and ``socket``; a client's reply has ``"ok": false`` and
        ``"error"`` if it refused). A socket file owned by another user, or whose
        listener runs as another user, gets an entry ``{"ok": false, "untrusted": true,
        "error": ...}`` and is sent nothing.

    Raises:
        ControlError: no control socket exists for ``address``, none is live, or a client
            did not answer in time.
    """
    if query and policy:
        raise ValueError("give either query=True or policy keys, not both")
    if not query and not policy:
        raise ValueError("nothing to send: give policy keys or query=True")
    request: dict[str, Any] = {"query": True} if query else dict(policy, wait=wait)
    line = json.dumps(request).encode("utf-8") + b"\n"
    paths = find_control_sockets(address, sockets_prefix)
    if not paths:
        raise ControlError(
            f"no symbreak client is listening for address {address!r}: "
            f"{control_socket_path(address, sockets_prefix)} does not exist (is the client "
            "running, with control enabled and the same sockets prefix?)"
        )
    replies: list[dict[str, Any]] = []
    stale: list[str] = []
    for path in paths:
        why = untrusted_reason(path)
        if why is not None:
            replies.append(_untrusted(path, why))
            continue
        reply = _exchange(path, line, timeout + (0.0 if query else min(max(wait, 0), MAX_WAIT)))
        if reply is None:
            stale.append(path)
        else:
            replies.append(reply)
    if not replies:
        raise ControlError(
            f"no symbreak client is listening for address {address!r}: stale control socket "
            f"file(s) {', '.join(stale)} (the client exited or was killed)"
        )
    return {"ok": all(r.get("ok", False) is True for r in replies), "clients": replies}


def _exchange(path: str, line: bytes, reply_timeout: float) -> dict[str, Any] | None:
    """Send ``line`` to the control socket at ``path`` and return its reply (None if
    nothing listens there); an untrusted entry if its listener is another user."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(min(reply_timeout, 10.0))
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        uid = peer_uid(s)
        if uid != os.geteuid():
            return _untrusted(path, f"its server runs as uid {uid}, not as you")
        s.sendall(line)
        try:
            raw = _read_line(s, time.monotonic() + reply_timeout)
        except ControlError as exc:
            raise ControlError(f"client at {path} did not reply: {exc}") from exc
        except OSError as exc:
            raise ControlError(f"client at {path} failed to reply: {exc}") from exc
        if not raw:
            raise ControlError(f"client at {path} closed the connection without replying")
        try:
            reply = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ControlError(f"client at {path} sent a malformed reply: {raw[:200]!r}") from exc
        if not isinstance(reply, dict):
            raise ControlError(f"client at {path} sent a malformed reply: {raw[:200]!r}")
        reply["socket"] = path  # where we sent it, whatever the reply claims
        return reply
    finally:
        s.close()
