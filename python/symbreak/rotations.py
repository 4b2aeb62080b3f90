"""Rotation sets for rotational averaging: quadrature grids on SO(3)/O(3) and random rotations.

Convention: a rotation ``R`` acts on Cartesian column vectors as ``r' = R @ r``; row-stored
positions ``X [N, 3]`` rotate as ``X @ R.T``, a cell with lattice vectors as rows as ``h @ R.T``
(i-PI's cell, lattice vectors as columns, as ``R @ h``). An averaged energy is
``sum_k w_k E(R_k x)``.

The grids are the ones i-PI 3.3 builds for ``<ffrotations>`` (``ipi.utils.mathtools``), matrix for
matrix, in the same order and with the same (normalised) weights. i-PI applies each stored matrix
``R`` to the positions as ``q @ R.T`` and to its column cell as ``R @ h``, i.e. exactly ``r' = R r``
in our convention, so the sets are directly comparable; with ``inversion`` i-PI appends ``-R``
right after each ``R`` (interleaved), as we do. The matrices are built with numpy/scipy only:

- ``legendre:L`` -- ZXZ Euler angles, ``R = Rz(gamma) Rx(beta) Rz(alpha)`` (alpha applied first),
  alpha and gamma on ``2L-1`` equispaced values ``2 pi j/(2L-1)``, ``cos beta`` on the ``L``
  Gauss-Legendre nodes (ascending) with their weights: ``(2L-1)^2 L`` rotations, ordered with
  alpha slowest, then gamma, then beta. ``L = 1`` is the identity (i-PI special-cases it).
  Exact (see below) up to degree ``l_max = 2L-2``.
- ``lebedev:L`` -- the Lebedev rule of algebraic degree ``L`` (``scipy.integrate.lebedev_rule``)
  for the axis, ``n = (sin b cos a, sin b sin a, cos b)`` giving ``alpha = a`` and ``beta = b``
  (the poles get ``a = pi/2``, as in i-PI's table), times ``L`` equispaced in-plane angles
  ``gamma = 2 pi j/L``: ``L * npoints`` rotations, gamma slowest. ``L = 1`` is the identity.
  Exact up to ``l_max = L-1``.

"Exact up to l_max" means ``sum_k w_k D^l(R_k) = 0`` for every ``1 <= l <= l_max``, where for an
improper ``R = -Q`` we use the O(3) representation on functions, ``D^l(-Q) = (-1)^l D^l(Q)``
(equivalently ``sum_k w_k Y_lm(R_k n) = 0`` for all unit vectors ``n``): the average of any
function whose angular expansion stops at ``l_max`` is exactly invariant. Adding the inversion
cancels every odd ``l``, so the degree grows to the next even value minus one
(``2L-1`` for Legendre, ``L`` for Lebedev, whose orders are odd).
"""

from __future__ import annotations

import functools
import itertools
import re
import secrets
from dataclasses import dataclass, field

import numpy as np

from .policy import (
    LEBEDEV_ORDERS,
    MAX_ROTATIONS,
    format_policy,
    parse_policy,
    valid_forms,
)
from .policy import random_rotations as _policy_random_rotations

__all__ = [
    "LEBEDEV_ORDERS",
    "AveragingPolicy",
    "euler_zxz",
    "exactness_degree",
    "grid",
    "random_rotation",
    "random_rotations",
]

_NO_BOUND = "+max=999999999999999999"  # grid() builds any grid; policies are bounded
_VALID_FORMS = valid_forms()


def euler_zxz(alpha: np.ndarray, beta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """Rotation matrices ``Rz(gamma) @ Rx(beta) @ Rz(alpha)`` [..., 3, 3] (broadcast angles).

    Same as i-PI's ``euler_zxz_to_matrix(alpha, beta, gamma)``; ``Rz(t)`` and ``Rx(t)`` are
    active, counter-clockwise rotations of column vectors by ``t`` radians.
    """
    alpha, beta, gamma = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (alpha, beta, gamma))
    )

    def rz(t: np.ndarray) -> np.ndarray:
        c, s, o, z = np.cos(t), np.sin(t), np.ones_like(t), np.zeros_like(t)
        return np.stack([c, -s, z, s, c, z, z, z, o], axis=-1).reshape(*t.shape, 3, 3)

    c, s, o, z = np.cos(beta), np.sin(beta), np.ones_like(beta), np.zeros_like(beta)
    rx = np.stack([o, z, z, z, c, -s, z, s, c], axis=-1).reshape(*beta.shape, 3, 3)
    return rz(gamma) @ rx @ rz(alpha)


def _parse_grid_spec(spec: str) -> tuple[str, int]:
    """'legendre:2' -> ('legendre', 2); 'none' -> ('none', 1); raises ValueError otherwise."""
    if re.search(r"[+,]", str(spec)):
        raise ValueError(
            f"rotation spec {spec!r}: options are not part of a grid spec; {_VALID_FORMS}"
        )
    try:
        family, order, _, _, _ = parse_policy(str(spec) + _NO_BOUND)
    except ValueError as err:
        raise ValueError(str(err).replace(str(spec) + _NO_BOUND, str(spec))) from None
    return family, order


def _lebedev_axes(L: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Azimuth a, polar angle b, weights (sum 1) [M] of the degree-L Lebedev rule, i-PI's order.

    The points and weights come from scipy; i-PI stores the same rules (to ~1e-15) in
    ``ipi/utils/lebedev_grids.npy`` but in another order within each octahedral orbit. We reorder
    scipy's points to i-PI's order (verified against i-PI's table for every order 3-101 in the
    tests) so that per-rotation results can be compared one to one:
    orbits keep scipy's order; in a 48-point orbit (a, b, c) the points follow
    ``itertools.permutations`` of scipy's first point, then the sign patterns lexicographically
    (x slowest, '+' before '-'); in the other orbits the runs of equal ``|x|, |y|, |z|`` keep
    scipy's order and their sign patterns go lexicographically over the axes, except that in a
    (l, l, m) orbit the axis holding m is the fastest.
    """
    if L == 1:
        return np.zeros(1), np.zeros(1), np.ones(1)
    from scipy.integrate import lebedev_rule  # scipy >= 1.15; imported lazily (import cost)

    x, w = lebedev_rule(L)
    x = np.asarray(x, dtype=np.float64).T  # [M, 3]
    w = np.asarray(w, dtype=np.float64)
    order = _ipi_lebedev_order(x)
    x, w = x[order], w[order] / w.sum()
    rho = np.hypot(x[:, 0], x[:, 1])
    azimuth = np.where(rho < 1e-12, np.pi / 2, np.arctan2(x[:, 1], x[:, 0]))
    polar = np.arccos(np.clip(x[:, 2], -1.0, 1.0))
    return azimuth, polar, w


def _ipi_lebedev_order(x: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """Permutation taking scipy's Lebedev point order [M, 3] to i-PI's (see ``_lebedev_axes``)."""
    a = np.abs(x)
    s = np.sort(a, axis=1)
    perms = list(itertools.permutations(range(3)))
    out: list[int] = []

    def runs(lo: int, hi: int, key: np.ndarray) -> list[tuple[int, int]]:
        bounds, i = [], lo
        while i < hi:
            j = i + 1
            while j < hi and np.abs(key[j] - key[i]).max() < tol:
                j += 1
            bounds.append((i, j))
            i = j
        return bounds

    for i, j in runs(0, len(x), s):  # octahedral orbits (consecutive in scipy's list)
        if j - i == 48:
            base = a[i]

            def key48(r: int, base: np.ndarray = base) -> tuple:
                p = next(k for k, q in enumerate(perms) if np.abs(a[r] - base[list(q)]).max() < tol)
                return (p, *(x[r] < 0))

            out += sorted(range(i, j), key=key48)
            continue
        for k, m in runs(i, j, a):  # runs of equal |x|, |y|, |z|
            mag = a[k]
            nonzero = [ax for ax in range(3) if mag[ax] > tol]
            unique = {ax: sum(abs(mag[b] - mag[ax]) < tol for b in nonzero) == 1 for ax in nonzero}
            axes = sorted(nonzero, key=lambda ax: (unique[ax], ax))
            out += sorted(range(k, m), key=lambda r: tuple(x[r, ax] < 0 for ax in axes))
    return np.asarray(out, dtype=np.intp)


@functools.lru_cache(maxsize=32)
def _grid_cached(family: str, L: int, inversion: bool) -> tuple[np.ndarray, np.ndarray]:
    if family == "none" or L == 1:
        R, w = np.eye(3)[None], np.ones(1)
    elif family == "legendre":
        n = 2 * L - 1
        cosb, wb = np.polynomial.legendre.leggauss(L)  # ascending nodes, as i-PI's
        ang = 2 * np.pi * np.arange(n) / n
        # i-PI loops alpha (outer), gamma, beta (inner)
        al, ga, be = np.meshgrid(ang, ang, np.arccos(cosb), indexing="ij")
        R = euler_zxz(al, be, ga).reshape(-1, 3, 3)
        w = np.broadcast_to(wb, al.shape).reshape(-1)
    elif family == "lebedev":
        az, pol, wl = _lebedev_axes(L)
        ga = 2 * np.pi * np.arange(L) / L
        # i-PI loops gamma (outer), Lebedev points (inner)
        R = euler_zxz(az[None, :], pol[None, :], ga[:, None]).reshape(-1, 3, 3)
        w = np.broadcast_to(wl, (L, wl.size)).reshape(-1)
    else:  # pragma: no cover - guarded by the parser
        raise ValueError(f"not a grid family: {family!r}")
    if inversion:  # i-PI interleaves: R_0, -R_0, R_1, -R_1, ...
        R = np.stack([R, -R], axis=1).reshape(-1, 3, 3)
        w = np.repeat(w, 2)
    w = w / w.sum()
    R.setflags(write=False)
    w.setflags(write=False)
    return R, w


def grid(spec: str, inversion: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic rotation grid: ``R`` float64 [K, 3, 3] and weights ``w`` float64 [K] (sum 1).

    ``spec``: ``"none"`` (identity, K=1), ``"legendre:L"`` (K = (2L-1)^2 L) or ``"lebedev:L"``
    (K = L * npoints(L)); ``inversion`` appends ``-R`` after each ``R`` (K doubles). Equal to
    i-PI 3.3's ``<ffrotations grid_mode=.. grid_order=L inversion=..>`` set, same order.
    Returns fresh (writable) copies of a cached grid.
    """
    family, L = _parse_grid_spec(spec)
    if family == "random":
        raise ValueError("'random' is not a grid: use random_rotations() or AveragingPolicy")
    R, w = _grid_cached(family, L, bool(inversion))
    return R.copy(), w.copy()


def exactness_degree(spec: str, inversion: bool = False) -> int:
    """Largest ``l_max`` with ``sum_k w_k D^l(R_k) = 0`` for all ``1 <= l <= l_max`` (module doc).

    ``none``: 0 (1 with inversion); ``legendre:L``: ``2L-2`` (``2L-1``); ``lebedev:L``: ``L-1``
    (``L``). Checked in the tests, including that ``l_max + 1`` is not exact.
    """
    family, L = _parse_grid_spec(spec)
    if family == "random":
        raise ValueError("'random' has no exactness degree")
    deg = 2 * L - 2 if family == "legendre" else L - 1  # 'none' is L = 1: 0
    if inversion and deg % 2 == 0:  # the inversion kills every odd l
        deg += 1
    return deg


def random_rotations(
    rng: np.random.Generator, n: int, improper_fraction: float = 0.5
) -> np.ndarray:
    """``n`` independent Haar-uniform rotations [n, 3, 3], each improper (``-Q``) with the given
    probability. Like i-PI's ``random_rotation``: a normalised Gaussian quaternion (uniform on
    S^3, hence Haar on SO(3)), then a uniform draw decides the sign. Consumes ``rng``.
    """
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    a, b, c, d = q.T
    R = np.stack(
        [
            1 - 2 * (c * c + d * d), 2 * (b * c - a * d), 2 * (b * d + a * c),
            2 * (b * c + a * d), 1 - 2 * (b * b + d * d), 2 * (c * d - a * b),
            2 * (b * d - a * c), 2 * (c * d + a * b), 1 - 2 * (b * b + c * c),
        ],
        axis=-1,
    ).reshape(n, 3, 3)  # fmt: skip
    flip = rng.random(n) < improper_fraction
    R[flip] *= -1.0
    return R


def random_rotation(rng: np.random.Generator, improper_fraction: float = 0.5) -> np.ndarray:
    """One random O(3) rotation [3, 3]; same stream as ``random_rotations(rng, 1)[0]``."""
    return random_rotations(rng, 1, improper_fraction)[0]


@dataclass(frozen=True)
class AveragingPolicy:
    """Which rotations a model is averaged over: plain, random, or a quadrature grid.

    ``spec``: ``"none" | "random" | "legendre:L" | "lebedev:L"``; ``inversion``: also use ``-R``
    (O(3) instead of SO(3)); ``seed``: the seed of ``"random"`` (None: one drawn from the OS
    when the policy is made); ``max_rotations``: the bound on rotations per call
    (:data:`~symbreak.policy.MAX_ROTATIONS` unless raised on purpose). The text form is the
    one grammar of :mod:`symbreak.policy` (``parse`` / ``str``, ``parse(str(p)) == p``), e.g.
    ``"lebedev:5+inv"``, ``"random+seed=3"``. Invalid values raise ValueError when the policy
    is made, never at a later evaluation.
    """

    spec: str = "none"
    inversion: bool = False
    seed: int | None = None
    max_rotations: int = MAX_ROTATIONS
    # Mutable state of a random policy: [seed actually used, calls drawn so far].
    _state: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or re.search(r"[+,]", self.spec):
            raise ValueError(
                f"AveragingPolicy.spec must be a bare spec, got {self.spec!r} "
                f"(use AveragingPolicy.parse for options); {_VALID_FORMS}"
            )
        if self.seed is not None and (
            not isinstance(self.seed, int | np.integer) or not 0 <= self.seed < 10**18
        ):
            raise ValueError(f"the seed must be an integer in [0, 10^18), not {self.seed!r}")
        if not isinstance(self.max_rotations, int | np.integer) or self.max_rotations < 1:
            raise ValueError(f"max_rotations must be an integer >= 1, not {self.max_rotations!r}")
        inv = "+inv" if self.inversion else ""
        text = f"{self.spec}{inv}+max={int(self.max_rotations)}"
        family, order, _, _, _ = parse_policy(text)  # validates, bound included
        canonical = family if family in ("none", "random") else f"{family}:{order}"
        object.__setattr__(self, "spec", canonical)
        object.__setattr__(self, "inversion", bool(self.inversion))
        object.__setattr__(self, "max_rotations", int(self.max_rotations))
        if self.seed is not None:
            object.__setattr__(self, "seed", int(self.seed))

    @classmethod
    def parse(cls, text: str) -> AveragingPolicy:
        """Policy from its text form (:mod:`symbreak.policy`); ``ValueError`` on bad input."""
        family, order, inversion, seed, max_rotations = parse_policy(str(text))
        spec = family if family in ("none", "random") else f"{family}:{order}"
        return cls(spec, inversion, None if seed < 0 else seed, max_rotations)

    def with_options(
        self, inversion: bool | None = None, seed: int | None = None
    ) -> AveragingPolicy:
        """This policy with ``inversion`` and/or ``seed`` replaced; None keeps the current
        value. The one meaning of these options in every front end: ``inversion=False``
        removes the inversion, ``True`` adds it."""
        if inversion is None and seed is None:
            return self
        return AveragingPolicy(
            self.spec,
            self.inversion if inversion is None else bool(inversion),
            self.seed if seed is None else seed,
            self.max_rotations,
        )

    def __str__(self) -> str:
        order = int(self.spec.split(":")[1]) if ":" in self.spec else 1
        family = self.spec.split(":")[0]
        seed = -1 if self.seed is None else self.seed
        return format_policy(family, order, self.inversion, seed, self.max_rotations)

    @property
    def is_random(self) -> bool:
        """True for ``"random"`` (a fresh draw on every call of ``rotations``)."""
        return self.spec == "random"

    @property
    def n_rotations(self) -> int:
        """K, the number of rotations per evaluation (random: 1, or 2 with inversion)."""
        if self.is_random:
            return 2 if self.inversion else 1
        return len(_grid_cached(*_parse_grid_spec(self.spec), self.inversion)[1])

    @property
    def exactness_degree(self) -> int | None:
        """See ``exactness_degree``; None for ``"random"``."""
        return None if self.is_random else exactness_degree(self.spec, self.inversion)

    def draw(self) -> tuple[str, int]:
        """The text and call counter a model file needs for the next evaluation
        (``module.policy_rotations(text, counter)``), advancing a random policy's counter.
        An unseeded random policy gets a seed drawn from the OS once."""
        if not self.is_random:
            return str(self), 0
        if not self._state:
            seed = secrets.randbelow(10**18) if self.seed is None else self.seed
            self._state.extend([seed, 0])
        seed, counter = self._state
        self._state[1] += 1
        text = format_policy("random", 1, self.inversion, seed, self.max_rotations)
        return text, counter

    def rotations(self) -> tuple[np.ndarray, np.ndarray]:
        """``(R [K, 3, 3], w [K])`` float64 for one evaluation (numpy reference).

        Grids: the cached deterministic grid (fresh copies). ``"random"``: the next rotation
        of the policy's stream (:func:`symbreak.policy.random_rotations`; with ``inversion``
        the pair ``[R, -R]``, weights 1/2), the same stream a model file draws.
        """
        if not self.is_random:
            return grid(self.spec, self.inversion)
        _, counter = self.draw()
        seed = self._state[0]  # drawn (or given) by draw()
        rot, w = _policy_random_rotations(seed, counter, self.inversion)
        return rot.numpy(), w.numpy()
