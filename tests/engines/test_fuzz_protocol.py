"""Fuzzing of the i-PI wire codec, the client behind it, and the control channel.

- codec (:mod:`symbreak.engines.ipi_protocol`): random bytes, and truncated and mutated
  copies of recorded valid exchanges (INIT, single and batched POSDATA, GETFORCE, EXIT),
  decoded as the client does. Only the codec's ProtocolError (and subclasses) may be
  raised; whatever decodes must be sane (atom counts in 1..max_atoms, batch sizes in
  1..MAX_BATCH, finite cells and positions). Decoding reads a finite buffer, so it
  cannot hang; hypothesis's deadline catches anything slow.
- client: mutated exchanges sent by a scripted server to a live IPIClient, which must end
  with a documented exit code, in time.
- control: random, truncated and mutated JSON lines against a live ControlServer with a
  fake driver; every line gets a JSON reply with ``ok``, and the server keeps serving.

The default run takes about a minute in all. A longer run::

    SYMBREAK_FUZZ_EXAMPLES=20000 pytest tests/engines/test_fuzz_protocol.py -p no:randomly

sets every codec and control test to that many examples (the live-client test to a tenth
of it), and lifts the time limits accordingly. The number of inputs each test tried is
printed at the end of the module (the terminal summary shows it even without ``-s``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ipi_helpers import FakeServer, ZeroDriver, ask, control_server, short_tmpdir

from symbreak.engines import ipi_protocol as wire
from symbreak.engines.ipi_client import EXIT_DISCONNECTED, EXIT_ERROR, EXIT_OK, IPIClient

LONG = int(os.environ.get("SYMBREAK_FUZZ_EXAMPLES", "0"))
MAX_ATOMS = 1000  # the decoder's bound in these tests (the client's default is 10^7)


def _settings(default: int, live: bool = False) -> settings:
    n = (max(LONG // 10, 1) if live else LONG) if LONG else default
    return settings(
        max_examples=n,
        deadline=None if LONG else (2000 if live else 500),
        database=None,  # no .hypothesis/ directory in the shared checkout
        derandomize=not LONG,  # the default suite is reproducible
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _budget(seconds: float) -> int:
    return int(seconds * max(1.0, LONG / 1000)) if LONG else int(seconds)


COUNTS: Counter = Counter()  # inputs tried, per test
OUTCOMES: Counter = Counter()  # how they ended, per test


@pytest.fixture(scope="module", autouse=True)
def report_counts(request):
    yield
    lines = [f"fuzz inputs tried: {sum(COUNTS.values())} in all"]
    lines += [f"  {k}: {v}" for k, v in sorted(COUNTS.items())]
    lines += [f"  outcomes: {dict(sorted(OUTCOMES.items()))}"]
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    cap = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is None or cap is None:
        print("\n".join(lines))
        return
    with cap.global_and_fixture_disabled():  # shown without -s
        tr.write_line("")
        for line in lines:
            tr.write_line(line)


# ======================================================================================
# Recorded valid exchanges (server -> client bytes)
# ======================================================================================
def _structures(nb: int, nat: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    h = np.triu(rng.uniform(0.5, 1.0, (nb, 3, 3))) * 15.0 + np.eye(3) * 5
    return h, rng.uniform(0.0, 10.0, (nb, nat, 3))


def _exchange(nb: int, nat: int = 4, params: str = " average : lebedev:3 , ") -> bytes:
    h, q = _structures(nb, nat, nb)
    request = wire.encode_posdata(h, q) + wire.GETFORCE
    return (
        wire.STATUS
        + wire.encode_init(params, 0, nb)
        + wire.STATUS
        + request
        + wire.STATUS
        + wire.encode_posdata(*_structures(nb, nat, 7))
        + wire.GETFORCE
        + wire.EXIT
    )


RECORDED = {"single": _exchange(1), "batched": _exchange(3)}


def decode_stream(data: bytes, max_atoms: int = MAX_ATOMS) -> list[str]:
    """Decode a server byte stream as the client does; the messages decoded."""
    read = wire.BytesReader(data)
    batch, seen = 1, []
    while True:
        head = wire.read_header(read)
        seen.append(head)
        if head == "INIT":
            init = wire.read_init(read)
            assert 1 <= init.batch_size <= wire.MAX_BATCH
            for tok in init.parameters.split(","):  # the batch_size token was taken out
                key, sep, _ = tok.partition(":")
                assert not (sep and key.strip() == "batch_size")
            batch = init.batch_size
        elif head == "POSDATA":
            pd = wire.read_posdata(read, batch, max_atoms)
            nb, nat, _ = pd.positions.shape
            assert nb == batch and 1 <= nat and nb * nat <= max_atoms
            assert pd.h.shape == (nb, 3, 3)
            assert np.isfinite(pd.h).all() and np.isfinite(pd.positions).all()
        elif head == "EXIT":
            return seen


def _decode_or_protocol_error(data: bytes) -> str:
    """'ok', or the name of the ProtocolError subclass raised; anything else propagates."""
    try:
        decode_stream(data)
    except wire.ProtocolError as exc:
        outcome = type(exc).__name__
    else:
        outcome = "ok"
    OUTCOMES[f"codec {outcome}"] += 1
    return outcome


def test_recorded_exchanges_decode():
    assert decode_stream(RECORDED["single"]) == [
        "STATUS", "INIT", "STATUS", "POSDATA", "GETFORCE", "STATUS", "POSDATA", "GETFORCE",
        "EXIT",
    ]  # fmt: skip
    assert decode_stream(RECORDED["batched"])[3] == "POSDATA"


# ======================================================================================
# Codec
# ======================================================================================
@st.composite
def mutated(draw, base: bytes | None = None) -> bytes:
    """A recorded exchange with a few byte flips, insertions, deletions, int32 fields set
    to extreme values, and a truncation."""
    data = bytearray(base if base is not None else RECORDED[draw(st.sampled_from(list(RECORDED)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "int32", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "int32" and len(data) >= pos + 4:
            v = draw(st.sampled_from([0, -1, -(2**31), 2**31 - 1, 1 << 20, MAX_ATOMS + 1]))
            data[pos : pos + 4] = np.int32(v).tobytes()
        elif kind == "truncate":
            del data[pos:]
    return bytes(data)


@pytest.mark.timeout(_budget(60))
@_settings(3000)
@given(st.binary(max_size=400))
def test_codec_random_bytes(data):
    COUNTS["codec random bytes"] += 1
    _decode_or_protocol_error(data)
    _decode_or_protocol_error(wire.STATUS + data)  # past the first header
    _decode_or_protocol_error(wire.STATUS + wire.encode_init("", 0, 2) + wire.POSDATA + data)


@pytest.mark.timeout(_budget(60))
@_settings(600)
@given(st.sampled_from(list(RECORDED)), st.data())
def test_codec_truncated(name, data):
    COUNTS["codec truncated"] += 1
    full = RECORDED[name]
    cut = data.draw(st.integers(0, len(full) - 1))
    assert _decode_or_protocol_error(full[:cut]) == "TruncatedMessage"


@pytest.mark.timeout(_budget(90))
@_settings(8000)
@given(mutated())
def test_codec_mutated(data):
    COUNTS["codec mutated"] += 1
    _decode_or_protocol_error(data)


@pytest.mark.timeout(_budget(30))
@_settings(1000)
@given(st.text(max_size=80), st.integers(-(2**31), 2**31 - 1))
def test_init_string_fuzz(text, bead):
    COUNTS["codec INIT strings"] += 1
    raw = text.encode("utf-8")
    msg = wire.INIT + np.int32(bead).tobytes() + np.int32(len(raw)).tobytes() + raw
    read = wire.BytesReader(msg)
    assert wire.read_header(read) == "INIT"
    try:
        init = wire.read_init(read)
    except wire.ProtocolError:
        return
    assert init.bead_index == bead and 1 <= init.batch_size <= wire.MAX_BATCH
    try:
        wire.parse_parameters(init.parameters)
    except ValueError:  # the driver's error (a token without ':'), not the codec's
        pass


# ======================================================================================
# A live client behind mutated exchanges
# ======================================================================================
@pytest.fixture(scope="module")
def live_prefix():
    d = short_tmpdir("fz")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout(_budget(90))
@_settings(1000, live=True)
@given(data=mutated())
def test_live_client_survives_mutated_exchanges(data, live_prefix):
    """The whole client (codec, driver, replies) ends with a documented exit code."""
    COUNTS["live client mutated"] += 1
    path = f"{live_prefix}fz"
    srv = FakeServer(path)
    client = IPIClient(
        ZeroDriver(),  # any cell, however degenerate, costs nothing
        "fz",
        sockets_prefix=live_prefix,
        control=False,
        connect_timeout=5,
        message_timeout=0.5,
        max_atoms=MAX_ATOMS,
        handle_signals=False,
    )
    box = {}
    th = threading.Thread(target=lambda: box.update(rc=client.run()), daemon=True)
    th.start()
    try:
        srv.accept()
        srv.conn.settimeout(2)

        def drain() -> None:  # read whatever the client replies, until it closes
            try:
                while srv.conn.recv(65536):
                    pass
            except OSError:
                pass

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            srv.send(data)
            srv.conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the client already left
        th.join(5)
        assert not th.is_alive(), "client hung"
        assert box["rc"] in (EXIT_OK, EXIT_ERROR, EXIT_DISCONNECTED), client.error
        OUTCOMES[f"client exit {box['rc']}"] += 1
        reader.join(3)
    finally:
        client.stop()
        th.join(2)
        srv.close()


# ======================================================================================
# Control channel
# ======================================================================================
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
keys = st.sampled_from(["average", "inversion", "seed", "wait", "query", "bogus", ""])
requests = st.dictionaries(keys | st.text(max_size=8), json_values, max_size=5)
VALID = [
    b'{"query": true}',
    b'{"average": "lebedev:3", "inversion": true, "wait": 2}',
    b'{"average": "random", "seed": 4}',
]


@st.composite
def control_lines(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "request", "mutated"]))
    if kind == "bytes":
        line = draw(st.binary(max_size=200))
    elif kind == "json":
        line = json.dumps(draw(json_values)).encode()
    elif kind == "request":
        line = json.dumps(draw(requests)).encode()
    else:
        line = draw(mutated(base=draw(st.sampled_from(VALID))))
    return line + draw(st.sampled_from([b"\n", b""]))  # b"": ends with EOF, no newline


@pytest.fixture(scope="module")
def live_control():
    d = short_tmpdir("fc")
    try:
        with control_server("fz", d, apply_every=0.002, read_deadline=2.0) as server:
            yield server
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _send_line(path: str, line: bytes) -> dict:
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(10)
        c.connect(path)
        c.sendall(line)
        if not line.endswith(b"\n"):
            c.shutdown(socket.SHUT_WR)
        raw = c.makefile("rb").readline()
    return json.loads(raw)


@pytest.mark.timeout(_budget(90))
@_settings(2000)
@given(line=control_lines())
def test_control_channel_fuzz(line, live_control):
    COUNTS["control lines"] += 1
    t0 = time.monotonic()
    reply = _send_line(live_control.path, line)
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    assert reply["ok"] or reply.get("error"), reply
    OUTCOMES[f"control ok={reply['ok']}"] += 1
    assert time.monotonic() - t0 < 3.0
    if COUNTS["control lines"] % 50 == 0:  # still serving normal requests
        assert ask(live_control.path, b'{"query": true}\n')["ok"] is True


def test_control_channel_alive_after_fuzz(live_control):
    assert ask(live_control.path, b'{"query": true}\n')["ok"] is True
    assert live_control._thread.is_alive()
