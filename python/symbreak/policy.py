"""The averaging-policy grammar and the random rotations, written once and scriptable.

Every front end (Python, ``symbreak serve/control``, i-PI ``<parameters>``, LAMMPS) reads a
policy with :func:`parse_policy`, and random rotations come from :func:`random_rotation`.
Both are TorchScript functions: the exported model file carries them (see
:mod:`symbreak.contract`), and Python calls the very same code eagerly, so a policy means the
same thing, and ``random+seed=N`` draws the same rotations, in every engine.

Grammar: ``family[:L]`` followed by options joined with ``+`` or ``,`` (case and spaces
ignored):

- ``none`` (plain model), ``random`` (one random O(3) rotation per call), ``legendre:L``
  (the study's Euler grid, (2L-1)^2 L rotations), ``lebedev:L`` (Lebedev axes x L in-plane
  angles; L in :data:`LEBEDEV_POINTS`);
- ``inv`` (also ``i``, ``inversion``): add the inversion of every rotation (O(3));
- ``seed=N`` (0 <= N < 10^18): the seed of ``random``;
- ``max=N``: raise the bound on rotations per call (:data:`MAX_ROTATIONS`) on purpose.

Random rotations are counter based: rotation number ``counter`` of seed ``seed`` is a pure
function of the two (a 32-bit integer hash turned into uniforms, then Shoemake's uniform
quaternion, improper half of the time), so that every MPI rank, every engine and a resumed
run draw the same sequence without sharing generator state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Default bound on the rotations of one evaluation (inversion included); ``+max=N`` raises it.
#: 2000 rotations of 64 H2O take ~1 min on 2 cores: a larger grid is a typo more often than not.
MAX_ROTATIONS = 2000


def lebedev_table() -> tuple[list[int], list[int]]:
    """Lebedev orders (algebraic degrees) and their numbers of points; 1 is the identity."""
    orders = [
        1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 35, 41, 47, 53, 59, 65,
        71, 77, 83, 89, 95, 101, 107, 113, 119, 125, 131,
    ]  # fmt: skip
    points = [
        1, 6, 14, 26, 38, 50, 74, 86, 110, 146, 170, 194, 230, 266, 302, 350, 434, 590, 770,
        974, 1202, 1454, 1730, 2030, 2354, 2702, 3074, 3470, 3890, 4334, 4802, 5294, 5810,
    ]  # fmt: skip
    return orders, points


def valid_forms() -> str:
    """What :func:`parse_policy` accepts, for error messages."""
    return (
        "valid forms: 'none', 'random', 'legendre:L' (L >= 1), 'lebedev:L' (L in 1, 3, 5, ..., "
        "31, 35, 41, 47, ..., 131); options joined with '+' or ',': 'inv' (also 'i', "
        "'inversion'), 'seed=N' (0 <= N < 10^18) and 'max=N' (raise the bound of 2000 rotations "
        "per call), e.g. 'legendre:2+inv', 'lebedev:5,inversion', 'random+seed=7'"
    )


#: Lebedev orders available (Python convenience; the grammar reads :func:`lebedev_table`).
LEBEDEV_ORDERS: tuple[int, ...] = tuple(lebedev_table()[0])
VALID_FORMS = valid_forms()


def grid_size(family: str, order: int) -> int:
    """Rotations of a grid without inversion (none, random: 1)."""
    if family == "legendre":
        return (2 * order - 1) * (2 * order - 1) * order
    if family == "lebedev":
        orders, points = lebedev_table()
        return order * points[orders.index(order)] if order > 1 else 1
    return 1


def _count(text: str) -> int:
    """A non-negative decimal integer of at most 18 digits, or -1."""
    if len(text) == 0 or len(text) > 18 or not text.isdigit():
        return -1
    return int(text)


def parse_policy(text: str) -> tuple[str, int, bool, int, int]:
    """``(family, order, inversion, seed, max_rotations)`` of a policy text (module doc);
    ``seed`` is -1 when not given. Raises ValueError naming the problem."""
    parts = text.strip().lower().replace(" ", "").replace(",", "+").split("+")
    head = parts[0]
    family = head
    order = 1
    has_order = False
    if ":" in head:
        pieces = head.split(":")
        if len(pieces) != 2:
            raise ValueError("bad averaging policy '" + text + "'; " + valid_forms())
        family = pieces[0]
        order = _count(pieces[1])
        has_order = True
        if order < 1:
            raise ValueError(
                "averaging policy '"
                + text
                + "': the order must be an integer >= 1; "
                + valid_forms()
            )
    if family not in ["none", "random", "legendre", "lebedev"]:
        raise ValueError("unknown averaging policy '" + text + "'; " + valid_forms())
    if family in ["none", "random"] and has_order:
        raise ValueError(
            "averaging policy '" + text + "': '" + family + "' takes no order; " + valid_forms()
        )
    if family in ["legendre", "lebedev"] and not has_order:
        raise ValueError(
            "averaging policy '" + text + "': '" + family + "' needs an order L; " + valid_forms()
        )
    if family == "lebedev" and order not in lebedev_table()[0]:
        raise ValueError(
            "averaging policy '" + text + "': no Lebedev rule of order " + str(order) + "; "
            + valid_forms()
        )  # fmt: skip
    inversion = False
    seed = -1
    max_rotations = 2000  # MAX_ROTATIONS (TorchScript reads no globals)
    for option in parts[1:]:
        if option in ["i", "inv", "inversion"]:
            inversion = True
        elif option.startswith("seed="):
            seed = _count(option[5:])
            if seed < 0:
                raise ValueError(
                    "averaging policy '" + text + "': the seed must be an integer in "
                    "[0, 10^18), not '" + option[5:] + "'; " + valid_forms()
                )
        elif option.startswith("max="):
            max_rotations = _count(option[4:])
            if max_rotations < 1:
                raise ValueError(
                    "averaging policy '" + text + "': max must be an integer >= 1, not '"
                    + option[4:] + "'; " + valid_forms()
                )  # fmt: skip
        else:
            raise ValueError(
                "bad option '" + option + "' in averaging policy '" + text + "'; " + valid_forms()
            )
    n_rotations = grid_size(family, order) * (2 if inversion else 1)
    if n_rotations > max_rotations:
        raise ValueError(
            "averaging policy '" + text + "' means " + str(n_rotations) + " rotations per call, "
            "more than the bound of " + str(max_rotations) + ": choose a smaller grid, or add "
            "'+max=" + str(n_rotations) + "' to mean it"
        )  # fmt: skip
    return family, order, inversion, seed, max_rotations


def format_policy(family: str, order: int, inversion: bool, seed: int, max_rotations: int) -> str:
    """Canonical text of a policy: ``family[:L][+inv][+seed=N][+max=N]``."""
    out = family if family in ["none", "random"] else family + ":" + str(order)
    if inversion:
        out += "+inv"
    if seed >= 0:
        out += "+seed=" + str(seed)
    if max_rotations != 2000:  # MAX_ROTATIONS
        out += "+max=" + str(max_rotations)
    return out


def _mul32(a: int, b: int) -> int:
    """a * b mod 2^32 for 0 <= a, b < 2^32, without int64 overflow (TorchScript ints)."""
    low = a * (b & 0xFFFF)
    high = ((a * (b >> 16)) & 0xFFFF) << 16
    return (low + high) & 0xFFFFFFFF


def _mix32(x: int) -> int:
    """A 32-bit integer hash with good avalanche (C. Wellons' 'lowbias32')."""
    x = x & 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = _mul32(x, 0x21F0AAAD)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x735A2D97)
    return x ^ (x >> 15)


def _uniform(seed: int, counter: int, slot: int) -> float:
    """Uniform double in [0, 1) (53 random bits), a pure function of its arguments >= 0."""
    h = _mix32(slot * 0x9E3779B9 + 0x85EBCA6B)
    h = _mix32(h ^ ((counter >> 32) & 0xFFFFFFFF))
    h = _mix32(h ^ (counter & 0xFFFFFFFF))
    h = _mix32(h ^ ((seed >> 32) & 0xFFFFFFFF))
    h = _mix32(h ^ (seed & 0xFFFFFFFF))
    high = _mix32(h ^ 0x68E31DA4) >> 5  # 27 bits
    low = _mix32(h ^ 0xB5297A4D) >> 6  # 26 bits
    return float(high * 67108864 + low) / 9007199254740992.0


def random_rotation(seed: int, counter: int) -> Tensor:
    """Rotation number ``counter`` of the stream ``seed``, float64 [3, 3] (r' = R r).

    Haar-uniform on SO(3) (Shoemake's uniform quaternion), multiplied by -1 (improper) half
    of the time, as i-PI's ``random_rotation``.
    """
    if seed < 0 or counter < 0:
        raise ValueError("random_rotation: seed and counter must be >= 0")
    u1 = _uniform(seed, counter, 0)
    u2 = _uniform(seed, counter, 1)
    u3 = _uniform(seed, counter, 2)
    u4 = _uniform(seed, counter, 3)
    s1 = math.sqrt(1.0 - u1)
    s2 = math.sqrt(u1)
    a = s1 * math.sin(2.0 * math.pi * u2)
    b = s1 * math.cos(2.0 * math.pi * u2)
    c = s2 * math.sin(2.0 * math.pi * u3)
    d = s2 * math.cos(2.0 * math.pi * u3)
    sign = -1.0 if u4 < 0.5 else 1.0
    values = [
        1.0 - 2.0 * (c * c + d * d), 2.0 * (b * c - a * d), 2.0 * (b * d + a * c),
        2.0 * (b * c + a * d), 1.0 - 2.0 * (b * b + d * d), 2.0 * (c * d - a * b),
        2.0 * (b * d - a * c), 2.0 * (c * d + a * b), 1.0 - 2.0 * (b * b + c * c),
    ]  # fmt: skip
    # torch.full keeps doubles exact (TorchScript's torch.tensor(list) goes through float32).
    entries = [torch.full([1], sign * v, dtype=torch.float64) for v in values]
    return torch.cat(entries).view(3, 3)


def random_rotations(seed: int, counter: int, inversion: bool) -> tuple[Tensor, Tensor]:
    """``(R [K, 3, 3], w [K])`` float64 of a ``random`` policy's call number ``counter``:
    one rotation (K = 1), or with ``inversion`` the pair ``[R, -R]`` with weights 1/2, as
    i-PI's ``random=True`` at ``grid_order=1``."""
    r = random_rotation(seed, counter)
    if inversion:
        return torch.stack([r, -r]), torch.full([2], 0.5, dtype=torch.float64)
    return r.unsqueeze(0), torch.ones(1, dtype=torch.float64)
