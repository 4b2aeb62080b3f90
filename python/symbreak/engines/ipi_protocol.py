"""The i-PI wire codec, client side: framing, decoding and encoding, no sockets.

Implements the protocol of ipi 3.3.1 (``ipi/interfaces/sockets.py``, classes ``Driver``
and ``InterfaceSocket``), as ASE's ``IPIProtocol`` does, apart from connection handling
(:mod:`symbreak.engines.ipi_client`). Headers are 12-byte space-padded ASCII; ints are
int32 and floats float64 in native byte order::

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

Everything here is in i-PI's units and conventions: Bohr, Hartree, Hartree/Bohr; ``h``
with the lattice vectors as **columns**; the virial ``-dE/d(strain)`` in Hartree, not
divided by the volume, column convention. Decoding reads from any ``readinto(view, what)``
callable that fills ``view`` completely or raises (a socket wrapper, or
:class:`BytesReader` over recorded bytes), and raises only :class:`ProtocolError` (and
its subclasses) for anything the protocol does not allow: unknown headers, bad lengths,
atom counts outside ``1..max_atoms``, non-finite numbers, truncation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..exit_codes import SERVE_ERROR

__all__ = [
    "HDRLEN",
    "MAX_ATOMS",
    "MAX_BATCH",
    "MAX_INIT_LENGTH",
    "BytesReader",
    "ExtrasError",
    "Init",
    "InvalidDataError",
    "PosData",
    "ProtocolError",
    "TruncatedMessage",
    "decode_forceready",
    "encode_extras",
    "encode_forceready",
    "encode_init",
    "encode_posdata",
    "header",
    "parse_parameters",
    "read_header",
    "read_init",
    "read_posdata",
    "split_init_string",
]

HDRLEN = 12
MAX_ATOMS = 10_000_000  #: default bound on the atoms of one request (all structures)
MAX_BATCH = 4096  #: largest batch size accepted from INIT
MAX_INIT_LENGTH = 1 << 20  #: largest INIT string (bytes)


def header(name: str) -> bytes:
    """The 12-byte header of message ``name`` (upper case, space padded)."""
    return name.upper().ljust(HDRLEN).encode("ascii")


STATUS, INIT, POSDATA, GETFORCE, EXIT = (
    header(n) for n in ("STATUS", "INIT", "POSDATA", "GETFORCE", "EXIT")
)
NEEDINIT, READY, HAVEDATA, FORCEREADY = (
    header(n) for n in ("NEEDINIT", "READY", "HAVEDATA", "FORCEREADY")
)
#: Messages a server may send, by stripped name.
SERVER_MESSAGES = ("STATUS", "INIT", "POSDATA", "GETFORCE", "EXIT")

#: ``readinto(view, what)``: fill ``view`` completely or raise (``what`` names the field).
ReadInto = Callable[[memoryview, str], None]


class ProtocolError(RuntimeError):
    """The server sent something the i-PI protocol does not allow."""

    exit_code = SERVE_ERROR


class TruncatedMessage(ProtocolError):
    """The byte stream ended in the middle of a message."""


class InvalidDataError(ProtocolError):
    """A well-formed message carried unusable data (non-finite positions or cell)."""


class ExtrasError(ValueError):
    """An extras dict that i-PI cannot take (not a dict, not JSON, the key ``"raw"``)."""


class BytesReader:
    """A ``readinto`` over a bytes buffer (recorded exchanges, tests, fuzzing)."""

    def __init__(self, data: bytes):
        self.data = memoryview(bytes(data))
        self.pos = 0

    def __call__(self, view: memoryview, what: str) -> None:
        n = len(view)
        if self.pos + n > len(self.data):
            got = len(self.data) - self.pos
            raise TruncatedMessage(f"stream ended in the middle of {what} ({got} of {n} bytes)")
        view[:] = self.data[self.pos : self.pos + n]
        self.pos += n

    @property
    def at_end(self) -> bool:
        return self.pos >= len(self.data)


# --------------------------------------------------------------------------------------
# Decoding (server -> client)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Init:
    """INIT: the bead (request) index, the driver's parameters string (the ``batch_size``
    token removed, see :func:`split_init_string`) and the batch size (1 if unbatched)."""

    bead_index: int
    parameters: str
    batch_size: int


@dataclass(frozen=True)
class PosData:
    """POSDATA in atomic units: ``h`` ``[B, 3, 3]`` Bohr (lattice vectors as columns),
    ``positions`` ``[B, N, 3]`` Bohr. Both finite."""

    h: np.ndarray
    positions: np.ndarray

    @property
    def natoms(self) -> int:
        return self.positions.shape[1]


def _read_array(read: ReadInto, count: int, dtype: Any, what: str) -> np.ndarray:
    arr = np.empty(count, dtype=dtype)
    if count:
        read(memoryview(arr).cast("B"), what)
    return arr


def _read_int(read: ReadInto, what: str) -> int:
    return int(_read_array(read, 1, np.int32, what)[0])


def read_header(read: ReadInto, what: str = "a message header") -> str:
    """Read one header; returns its name (``"STATUS"``, ...). ProtocolError if unknown."""
    raw = bytearray(HDRLEN)
    read(memoryview(raw), what)
    name = bytes(raw).rstrip(b" \x00")
    if name.decode("ascii", "replace") not in SERVER_MESSAGES or not name.isascii():
        raise ProtocolError(
            f"unknown message header {bytes(raw)!r} (expected one of {', '.join(SERVER_MESSAGES)})"
        )
    return name.decode("ascii")


def read_init(read: ReadInto) -> Init:
    """The body of INIT (after its header)."""
    rid = _read_int(read, "INIT bead index")
    length = _read_int(read, "INIT string length")
    if length < 0 or length > MAX_INIT_LENGTH:
        raise ProtocolError(
            f"malformed INIT: string length {length} (must be 0..{MAX_INIT_LENGTH})"
        )
    raw = _read_array(read, length, np.uint8, "INIT string").tobytes()
    try:
        text = raw.decode("utf-8").rstrip("\x00")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"malformed INIT: string is not UTF-8: {raw[:64]!r}") from exc
    params, batch = split_init_string(text)
    return Init(rid, params, batch)


def _check_natoms(nat: int, nb: int, max_atoms: int) -> None:
    if nat < 1 or nat * nb > max_atoms:
        raise ProtocolError(
            f"malformed POSDATA: atom count {nat} (must be 1..{max_atoms // nb}"
            + (f" for a batch of {nb}" if nb > 1 else "")
            + "); note that <ffsocket mode='shm'> is not supported, use mode='unix'"
        )


def read_posdata(read: ReadInto, batch_size: int = 1, max_atoms: int = MAX_ATOMS) -> PosData:
    """The body of POSDATA (after its header), unbatched or batched (``batch_size`` > 1).

    Raises ProtocolError on a bad atom count (``1..max_atoms`` atoms in all) and
    :class:`InvalidDataError` on non-finite cells or positions.
    """
    nb = int(batch_size)
    if not 1 <= nb <= MAX_BATCH:
        raise ProtocolError(f"batch size {nb} outside 1..{MAX_BATCH}")
    if nb == 1:
        hih = _read_array(read, 18, np.float64, "POSDATA cell")
        nat = _read_int(read, "POSDATA atom count")
        _check_natoms(nat, 1, max_atoms)
        pos = _read_array(read, 3 * nat, np.float64, "POSDATA positions")
        h = hih[:9].reshape(1, 3, 3)
    else:
        nat = _read_int(read, "batched POSDATA atom count")
        _check_natoms(nat, nb, max_atoms)
        hih = _read_array(read, 18 * nb, np.float64, "batched POSDATA cells")
        pos = _read_array(read, 3 * nat * nb, np.float64, "batched POSDATA positions")
        h = hih.reshape(nb, 2, 3, 3)[:, 0]
    positions = pos.reshape(nb, nat, 3)
    if not np.isfinite(h).all():
        b, i, j = _first_bad(h)
        raise InvalidDataError(
            f"non-finite cell received from i-PI (structure {b}, lattice vector {j}, "
            f"component {i}: {h[b, i, j]})"
        )
    if not np.isfinite(positions).all():
        b, i, _ = _first_bad(positions)
        raise InvalidDataError(
            f"non-finite position received from i-PI for atom index {i} "
            f"(0-based; structure {b} of {nb}): {positions[b, i].tolist()}"
        )
    return PosData(np.ascontiguousarray(h), positions)


def _first_bad(arr: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])


def split_init_string(init: str) -> tuple[str, int]:
    """Split i-PI's INIT string into (parameters for the driver, batch size).

    ipi 3.3.1 (``Driver.initialize`` in ``ipi/interfaces/sockets.py``) announces batching
    by appending ``"[,] batch_size:B"`` to the ``<parameters>`` string; that token is
    removed here. Returns batch size 1 when it is absent; ProtocolError outside
    ``1..MAX_BATCH``.
    """
    batch = None
    kept: list[str] = []
    for tok in init.split(","):
        key, sep, value = tok.partition(":")
        if sep and key.strip() == "batch_size":
            value = value.strip()
            if not (value.isascii() and value.isdigit() and len(value) <= 9):
                raise ProtocolError(f"malformed batch_size token {tok.strip()!r} in INIT")
            batch = int(value)
            continue
        kept.append(tok)
    if batch is None:
        return (init if init.strip() else ""), 1
    if not 1 <= batch <= MAX_BATCH:
        raise ProtocolError(f"invalid batch_size {batch} announced in INIT (1..{MAX_BATCH})")
    # i-PI sends " k : v , " + ", batch_size:B": restore " k : v , ".
    params = ",".join(kept).rstrip(" ,")
    return (params + " , " if params.strip() else ""), batch


def parse_parameters(parameters: str) -> dict[str, str]:
    """Parse i-PI's parameters string ``" k : v , k2 : v2 , "`` into ``{k: v}``.

    i-PI builds it from ``<parameters>{k: v, k2: v2}</parameters>`` with ``str(value)``,
    after its own type guessing (``true`` arrives as ``True``, ``5`` as ``5``). Values
    may contain ``:`` (``lebedev:5``) but not ``,``. Empty tokens are skipped; ValueError
    on a token without ``:``.
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


# --------------------------------------------------------------------------------------
# Encoding (client -> server)
# --------------------------------------------------------------------------------------
def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def encode_extras(extras: Mapping[str, Any] | None) -> bytes:
    """One structure's extras as i-PI parses them: a JSON object (UTF-8). ExtrasError
    if it is not a dict, not JSON-serialisable or has the key ``"raw"`` (i-PI's
    ``ipi.interfaces.utils.parse_extra`` raises on it)."""
    if extras is None:
        extras = {}
    if not isinstance(extras, Mapping):
        raise ExtrasError(
            f"extras of type {type(extras).__name__}; expected a dict "
            "(i-PI parses extras as a JSON object)"
        )
    if "raw" in extras:
        raise ExtrasError(
            "extras key 'raw': i-PI reserves it (ipi.interfaces.utils.parse_extra raises on "
            "it); rename the key"
        )
    try:
        text = json.dumps(extras, default=_json_default, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ExtrasError(f"extras are not JSON: {exc}") from exc
    return text.encode("utf-8")


def encode_forceready(
    energies: np.ndarray, forces: np.ndarray, virials: np.ndarray, extras: Sequence[bytes]
) -> bytes:
    """FORCEREADY with its body, in atomic units.

    Args:
        energies: ``[B]`` Hartree.
        forces: ``[B, N, 3]`` Hartree/Bohr.
        virials: ``[B, 3, 3]`` Hartree, i-PI's column convention.
        extras: B encoded extras strings (:func:`encode_extras`).

    B = 1 gives the unbatched layout, B > 1 the batched one.
    """
    energies = np.ascontiguousarray(energies, np.float64)
    forces = np.ascontiguousarray(forces, np.float64)
    virials = np.ascontiguousarray(virials, np.float64)
    nb, nat = forces.shape[0], forces.shape[1]
    if energies.shape != (nb,) or virials.shape != (nb, 3, 3) or len(extras) != nb:
        raise ValueError("energies, forces, virials and extras disagree on the batch size")
    parts = [FORCEREADY, energies.tobytes(), np.int32(nat).tobytes()]
    parts += [forces.tobytes(), virials.tobytes()]
    for x in extras:
        parts += [np.int32(len(x)).tobytes(), bytes(x)]
    return b"".join(parts)


# --------------------------------------------------------------------------------------
# The server's side (test servers, recorded exchanges)
# --------------------------------------------------------------------------------------
def encode_init(parameters: str = "", bead_index: int = 0, batch_size: int = 1) -> bytes:
    """INIT as ipi 3.3.1 sends it (``", batch_size:B"`` appended when B > 1)."""
    text = parameters + (f", batch_size:{batch_size}" if batch_size > 1 else "")
    raw = text.encode("utf-8")
    return INIT + np.int32(bead_index).tobytes() + np.int32(len(raw)).tobytes() + raw


def encode_posdata(h: np.ndarray, positions: np.ndarray, batched: bool | None = None) -> bytes:
    """POSDATA for ``h`` ``[B, 3, 3]`` (columns, Bohr) and positions ``[B, N, 3]`` (Bohr);
    the batched layout if ``batched`` (default: B > 1)."""
    h = np.asarray(h, np.float64).reshape(-1, 3, 3)
    q = np.asarray(positions, np.float64).reshape(len(h), -1, 3)
    nat = np.int32(q.shape[1]).tobytes()
    batched = len(h) > 1 if batched is None else batched
    if not batched:
        if len(h) != 1:
            raise ValueError("the unbatched layout carries one structure")
        return POSDATA + h[0].tobytes() + np.linalg.inv(h[0]).tobytes() + nat + q.tobytes()
    cells = b"".join(hb.tobytes() + np.linalg.inv(hb).tobytes() for hb in h)
    return POSDATA + nat + cells + q.tobytes()


def decode_forceready(
    read: ReadInto, batch_size: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[bytes]]:
    """The client's FORCEREADY reply (header included): energies ``[B]``, forces
    ``[B, N, 3]``, virials ``[B, 3, 3]`` (atomic units, columns) and B extras strings."""
    raw = bytearray(HDRLEN)
    read(memoryview(raw), "FORCEREADY")
    if bytes(raw) != FORCEREADY:
        raise ProtocolError(f"expected FORCEREADY, got {bytes(raw)!r}")
    nb = int(batch_size)
    energies = _read_array(read, nb, np.float64, "energies")
    nat = _read_int(read, "atom count")
    _check_natoms(nat, nb, MAX_ATOMS)
    forces = _read_array(read, 3 * nat * nb, np.float64, "forces").reshape(nb, nat, 3)
    virials = _read_array(read, 9 * nb, np.float64, "virials").reshape(nb, 3, 3)
    extras = []
    for _ in range(nb):
        n = _read_int(read, "extras length")
        if n < 0 or n > MAX_INIT_LENGTH:
            raise ProtocolError(f"extras length {n}")
        extras.append(_read_array(read, n, np.uint8, "extras").tobytes())
    return energies, forces, virials, extras
