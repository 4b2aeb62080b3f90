"""The run-time control channel under hostile conditions (issue 23): umask, squatting by
another user, slow peers.

Tests run as root in CI, so "another user" is simulated: a socket a test thread listens
on is chowned to nobody (65534), or the peer-uid check is monkeypatched. Every server and
socket is closed and removed at the end, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time

import pytest
from ipi_helpers import ask, control_server

from symbreak.engines import control as ctl

NOBODY = 65534


@contextlib.contextmanager
def squatter(path: str, uid: int = NOBODY):
    """A listening socket at ``path`` owned by ``uid`` (another user's process)."""
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(4)
    s.setblocking(False)
    os.chown(path, uid, uid)
    try:
        yield s
    finally:
        s.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _accepted(s: socket.socket) -> bool:
    try:
        conn, _ = s.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


# ======================================================================================
@pytest.mark.timeout(20)
def test_socket_mode_is_0600_whatever_the_umask(sock_prefix):
    old = os.umask(0)
    try:
        with control_server("um", sock_prefix) as server:
            mode = stat.S_IMODE(os.stat(server.path).st_mode)
    finally:
        os.umask(old)
    assert mode == 0o600, oct(mode)


@pytest.mark.timeout(20)
@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_squatted_socket_is_untrusted(sock_prefix):
    """Another user's socket at the expected name: the real client moves to ``.1`` and
    ``send_control`` reports the squatter as an untrusted error (never contacted, never
    ok) and the real client's reply."""
    base = ctl.control_socket_path("sq", sock_prefix)
    with squatter(base) as sq, control_server("sq", sock_prefix) as server:
        assert server.path == base + ".1"
        r = ctl.send_control("sq", sock_prefix, average="lebedev:3", wait=5)
        assert r["ok"] is False
        bad, good = r["clients"]
        assert bad["untrusted"] is True and bad["ok"] is False and bad["socket"] == base
        assert f"owned by uid {NOBODY}" in bad["error"]
        assert good["ok"] is True and good["applied"] is True and good["socket"] == server.path
        assert not _accepted(sq)  # the squatter got nothing
        assert ctl.find_control_sockets("sq", sock_prefix, owned_only=True) == [server.path]


@pytest.mark.timeout(20)
def test_listener_of_another_user_is_untrusted(sock_prefix, monkeypatch):
    """The socket file is ours but the process listening on it runs as another user
    (SO_PEERCRED): reported as untrusted, nothing sent."""
    with control_server("pc", sock_prefix) as server:
        monkeypatch.setattr(ctl, "peer_uid", lambda sock: NOBODY)
        r = ctl.send_control("pc", sock_prefix, query=True)
    assert r["ok"] is False
    (entry,) = r["clients"]
    assert entry["untrusted"] is True and f"runs as uid {NOBODY}" in entry["error"]
    assert server.slot.snapshot()["pending"] == []


@pytest.mark.timeout(20)
def test_server_refuses_peers_of_another_user(sock_prefix, monkeypatch):
    with control_server("pu", sock_prefix) as server:
        assert ask(server.path, b'{"query": true}\n')["ok"] is True
        monkeypatch.setattr(ctl, "peer_uid", lambda sock: NOBODY)
        reply = ask(server.path, b'{"average": "lebedev:3"}\n')
        assert reply["ok"] is False and f"peer uid {NOBODY}" in reply["error"]
        assert server.slot.snapshot()["updates_applied"] == 0


@pytest.mark.timeout(20)
def test_silent_peer_does_not_block_others(sock_prefix):
    """A peer that connects and sends nothing: other requests are answered at once; the
    silent one gets a timeout error after the read deadline."""
    with control_server("slow", sock_prefix, read_deadline=2.0) as server:
        with socket.socket(socket.AF_UNIX) as silent:
            silent.settimeout(5)
            silent.connect(server.path)
            silent.sendall(b'{"query": tr')  # ... and never finishes the line
            time.sleep(0.1)
            t0 = time.monotonic()
            r = ctl.send_control("slow", sock_prefix, query=True)
            assert r["ok"] is True and time.monotonic() - t0 < 0.5
            t0 = time.monotonic()
            r = ctl.send_control("slow", sock_prefix, average="lebedev:5", wait=5)
            assert r["clients"][0]["applied"] is True and time.monotonic() - t0 < 0.5
            reply = json.loads(silent.makefile("rb").readline())
            assert reply["ok"] is False and "timed out" in reply["error"]


@pytest.mark.timeout(20)
def test_malformed_requests_get_errors_and_server_keeps_serving(sock_prefix):
    lines = [
        b"1" * 5000 + b"\n",  # an int beyond Python's digit limit (ValueError, not JSON's)
        b"[" * 50_000 + b"\n",  # nesting beyond the recursion limit
        b'{"average": "lebedev:3", "wait": NaN}\n',
        b'{"average": "lebedev:3", "wait": 1e999}\n',
        b"\xff\xfe\n",
        b"x" * (ctl.MAX_MESSAGE + 10),
    ]
    with control_server("mal", sock_prefix) as server:
        for line in lines:
            reply = ask(server.path, line)
            assert isinstance(reply, dict) and "ok" in reply, reply
            if line.startswith(b'{"average": "lebedev:3", "wait": 1e'):
                assert reply["ok"] is True  # an infinite wait is capped at MAX_WAIT
            else:
                assert reply["ok"] is False and reply["error"], (line[:40], reply)
        assert ctl.send_control("mal", sock_prefix, query=True)["ok"] is True
