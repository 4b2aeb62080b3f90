"""Tests for symbreak.rotations: equality with i-PI 3.3's <ffrotations> grids, quadrature
exactness, random rotations and the AveragingPolicy text form."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
from scipy.special import sph_harm_y

from symbreak.rotations import (
    LEBEDEV_ORDERS,
    AveragingPolicy,
    _lebedev_axes,
    euler_zxz,
    exactness_degree,
    grid,
    random_rotation,
    random_rotations,
)

mathtools = pytest.importorskip("ipi.utils.mathtools")

# i-PI 3.3.1 loads its Lebedev table with the deprecated importlib.resources.path
pytestmark = pytest.mark.filterwarnings("ignore:path is deprecated:DeprecationWarning")

GRIDS = [("legendre", L) for L in (1, 2, 3, 4, 5)] + [("lebedev", L) for L in (1, 3, 5, 7, 9, 11)]


def ipi_grid(mode: str, order: int, inversion: bool) -> tuple[np.ndarray, np.ndarray]:
    """The (R, w) list i-PI's FFRotations builds (its __init__ + queue loop), weights normalised
    as in FFRotations.gather."""
    if mode == "lebedev":
        quad = mathtools.get_rotation_quadrature_lebedev(order)
    else:
        quad = mathtools.get_rotation_quadrature_legendre(order)
    R, w = [], []
    for r, wk, _ in quad:
        R.append(r)
        w.append(wk)
        if inversion:
            R.append(-r)
            w.append(wk)
    w = np.asarray(w)
    return np.asarray(R), w / w.sum()


@pytest.mark.parametrize("inversion", [False, True])
@pytest.mark.parametrize("mode,order", GRIDS)
def test_grid_equals_ipi(mode: str, order: int, inversion: bool) -> None:
    R, w = grid(f"{mode}:{order}", inversion)
    Ri, wi = ipi_grid(mode, order, inversion)
    assert R.shape == Ri.shape and w.shape == wi.shape
    # same order, hence also the same set
    np.testing.assert_allclose(R, Ri, rtol=0, atol=1e-12)
    np.testing.assert_allclose(w, wi, rtol=0, atol=1e-14)
    # as sets (order-free), in case one side reorders in the future
    d = np.abs(R[:, None] - Ri[None]).max(axis=(2, 3))
    assert d.min(axis=1).max() < 1e-12 and d.min(axis=0).max() < 1e-12


@pytest.mark.parametrize(
    "mode,order,inversion", [("legendre", 2, True), ("lebedev", 3, True), ("lebedev", 5, False)]
)
def test_ffrotations_applies_our_matrices(mode: str, order: int, inversion: bool) -> None:
    """Drive i-PI's FFRotations.queue with a recording inner force field: the k-th request gets
    positions X @ R_k.T and column cell R_k @ h, i.e. r' = R_k r in our convention."""
    from ipi.engine.atoms import Atoms
    from ipi.engine.cell import Cell
    from ipi.engine.forcefields import FFRotations
    from ipi.utils.prng import Random

    class Recorder:
        name = "recorder"

        def __init__(self) -> None:
            self.calls: list[tuple[np.ndarray, np.ndarray]] = []

        def queue(self, atoms, cell, reqid=-1):
            self.calls.append((np.array(atoms.q).reshape(-1, 3), np.array(cell.h)))
            return {"status": "Done"}

    rec = Recorder()
    ff = FFRotations(
        ffsocket=rec,
        grid_mode=mode,
        grid_order=order,
        inversion=inversion,
        prng=Random(1),
        dopbc=False,
    )
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 3))
    h = np.triu(rng.random((3, 3))) + 3 * np.eye(3)  # i-PI cell: lattice vectors as columns
    atoms = Atoms(len(X))
    atoms.q[:] = X.ravel()
    req = ff.queue(atoms, Cell(h))

    R, w = grid(f"{mode}:{order}", inversion)
    assert len(rec.calls) == len(R)
    for (Xk, hk), Rk in zip(rec.calls, R, strict=True):
        np.testing.assert_allclose(Xk, X @ Rk.T, rtol=0, atol=1e-12)
        np.testing.assert_allclose(hk, Rk @ h, rtol=0, atol=1e-12)
    wi = np.array([wk for _, wk in req["rots"]])
    np.testing.assert_allclose(w, wi / wi.sum(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("order", [L for L in LEBEDEV_ORDERS if 3 <= L <= 101])
def test_lebedev_axes_match_ipi_table(order: int) -> None:
    """Every Lebedev rule i-PI ships: same points, order, pole azimuths and weights."""
    with resources.as_file(resources.files("ipi.utils") / "lebedev_grids.npy") as path:
        table = np.load(path, allow_pickle=True).item()[order]
    az, pol, w = _lebedev_axes(order)
    ia, ib, iw = np.asarray(table).T
    np.testing.assert_allclose(euler_zxz(az, pol, 0.0), euler_zxz(ia, ib, 0.0), atol=1e-12, rtol=0)
    np.testing.assert_allclose(w, iw / iw.sum(), rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    "spec,inversion,K",
    [
        ("none", False, 1),
        ("none", True, 2),
        ("legendre:1", False, 1),
        ("legendre:2", False, 18),
        ("legendre:3", False, 75),
        ("legendre:2", True, 36),
        ("legendre:3", True, 150),
        ("lebedev:1", False, 1),
        ("lebedev:3", False, 18),
        ("lebedev:5", False, 70),
        ("lebedev:3", True, 36),
        ("lebedev:5", True, 140),
    ],
)
def test_grid_counts_weights_orthogonality(spec: str, inversion: bool, K: int) -> None:
    R, w = grid(spec, inversion)
    assert R.shape == (K, 3, 3) and w.shape == (K,)
    assert R.dtype == np.float64 and w.dtype == np.float64
    assert np.all(w > 0) and abs(w.sum() - 1) < 1e-14
    np.testing.assert_allclose(
        R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-13
    )
    det = np.linalg.det(R)
    expected = np.tile([1.0, -1.0], K // 2) if inversion else np.ones(K)
    np.testing.assert_allclose(det, expected, atol=1e-12)
    assert AveragingPolicy(spec, inversion).n_rotations == K
    if spec in ("none", "legendre:1", "lebedev:1"):
        np.testing.assert_array_equal(R[0], np.eye(3))


def _harmonic_residual(R: np.ndarray, w: np.ndarray, ell: int, normals: np.ndarray) -> float:
    """max over m, n of |sum_k w_k Y_lm(R_k n)|. Since Y_lm(R n) = sum_m' D^l(R^-1)_mm' Y_lm'(n)
    and D^l is unitary, this vanishes for 2l+1 generic n iff sum_k w_k D^l(R_k) = 0
    (improper R included: Y_lm(-v) = (-1)^l Y_lm(v))."""
    v = np.einsum("kab,jb->kja", R, normals)
    theta = np.arccos(np.clip(v[..., 2], -1.0, 1.0))
    phi = np.arctan2(v[..., 1], v[..., 0])
    m = np.arange(-ell, ell + 1)[:, None, None]
    Y = sph_harm_y(ell, m, theta[None], phi[None])  # [2l+1, K, J]
    return float(np.abs(np.einsum("k,mkj->mj", w, Y)).max())


NORMALS = np.random.default_rng(42).standard_normal((24, 3))
NORMALS /= np.linalg.norm(NORMALS, axis=1, keepdims=True)


@pytest.mark.parametrize("inversion", [False, True])
@pytest.mark.parametrize(
    "spec,lmax",
    [
        ("none", 0),
        ("legendre:2", 2),
        ("legendre:3", 4),
        ("legendre:4", 6),
        ("lebedev:3", 2),
        ("lebedev:5", 4),
        ("lebedev:7", 6),
        ("lebedev:9", 8),
    ],
)
def test_exactness_degree(spec: str, lmax: int, inversion: bool) -> None:
    """Exact for 1 <= l <= l_max, not exact at l_max + 1 (so the check can fail)."""
    if inversion:
        lmax += 1  # the inversion cancels odd l; l_max is even without it
    assert exactness_degree(spec, inversion) == lmax
    assert AveragingPolicy(spec, inversion).exactness_degree == lmax
    R, w = grid(spec, inversion)
    for ell in range(1, lmax + 1):
        assert _harmonic_residual(R, w, ell, NORMALS) < 1e-12, ell
    assert _harmonic_residual(R, w, lmax + 1, NORMALS) > 1e-3
    if inversion:  # every odd l cancels exactly
        assert _harmonic_residual(R, w, lmax + 2, NORMALS) < 1e-12


def test_grids_are_cached_but_returned_as_copies() -> None:
    R, w = grid("lebedev:5")
    R[:] = 0.0
    w[:] = 0.0
    R2, w2 = grid("lebedev:5")
    assert np.all(w2 > 0) and R2.flags.writeable
    p = AveragingPolicy.parse("lebedev:5")
    Ra, _ = p.rotations()
    Rb, _ = p.rotations()
    np.testing.assert_array_equal(Ra, Rb)
    np.testing.assert_array_equal(Ra, R2)


def test_random_rotations_reproducible_and_orthogonal() -> None:
    a = random_rotations(np.random.default_rng(7), 100)
    b = random_rotations(np.random.default_rng(7), 100)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, random_rotations(np.random.default_rng(8), 100))
    np.testing.assert_allclose(
        a @ a.transpose(0, 2, 1), np.broadcast_to(np.eye(3), a.shape), atol=1e-13
    )
    np.testing.assert_allclose(np.abs(np.linalg.det(a)), 1.0, atol=1e-13)
    one = random_rotations(np.random.default_rng(7), 1)[0]
    np.testing.assert_array_equal(random_rotation(np.random.default_rng(7)), one)


def test_random_rotations_distribution() -> None:
    rng = np.random.default_rng(1234)
    n = 20000
    det = np.linalg.det(random_rotations(rng, n))
    assert abs(np.mean(det < 0) - 0.5) < 0.02  # sigma = 0.0035
    assert np.all(np.linalg.det(random_rotations(rng, 50, improper_fraction=0.0)) > 0)
    assert np.all(np.linalg.det(random_rotations(rng, 50, improper_fraction=1.0)) < 0)
    # Haar on SO(3): E[R] = 0 and E[R_ij R_kl] = delta_ik delta_jl / 3 (sigma ~ 0.004)
    R = random_rotations(rng, n, improper_fraction=0.0)
    assert np.abs(R.mean(axis=0)).max() < 0.025
    second = np.einsum("nij,nkl->ijkl", R, R) / n
    expected = np.einsum("ik,jl->ijkl", np.eye(3), np.eye(3)) / 3
    assert np.abs(second - expected).max() < 0.025
    # and the degree-1..2 harmonics average out, as for an exact grid
    for ell in (1, 2):
        assert _harmonic_residual(R[:4000], np.full(4000, 1 / 4000), ell, NORMALS[:6]) < 0.05


def test_random_policy() -> None:
    from symbreak.policy import random_rotations as stream

    p = AveragingPolicy.parse("random+seed=3")
    q = AveragingPolicy.parse("random,seed=3")
    assert p == q and p.n_rotations == 1 and p.is_random and p.exactness_degree is None
    seq_p = [p.rotations()[0] for _ in range(3)]
    seq_q = [q.rotations()[0] for _ in range(3)]
    for a, b in zip(seq_p, seq_q, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(seq_p[0], seq_p[1])  # fresh draw each call
    # The documented stream: call n of seed s is policy.random_rotations(s, n).
    for n, R in enumerate(seq_p):
        np.testing.assert_array_equal(R, stream(3, n, False)[0].numpy())
    assert p.draw() == ("random+seed=3", 3)
    pi = AveragingPolicy("random", inversion=True)
    R, w = pi.rotations()
    assert pi.n_rotations == 2 and R.shape == (2, 3, 3)
    np.testing.assert_array_equal(R[1], -R[0])
    np.testing.assert_allclose(w, [0.5, 0.5])
    # An unseeded policy draws its seed once, then follows that seed's stream.
    text, counter = AveragingPolicy("random").draw()
    assert counter == 0 and text.startswith("random+seed=")


@pytest.mark.parametrize(
    "text,canonical",
    [
        ("none", "none"),
        ("random", "random"),
        ("legendre:2", "legendre:2"),
        ("lebedev:5", "lebedev:5"),
        ("legendre:2+i", "legendre:2+inv"),
        ("legendre:2,inversion", "legendre:2+inv"),
        (" Lebedev:05 + INV ", "lebedev:5+inv"),
        ("random+inv+seed=7", "random+inv+seed=7"),
        ("none+inv", "none+inv"),
    ],
)
def test_policy_round_trip(text: str, canonical: str) -> None:
    p = AveragingPolicy.parse(text)
    assert str(p) == canonical
    assert AveragingPolicy.parse(str(p)) == p
    assert hash(AveragingPolicy.parse(str(p))) == hash(p)


def test_policy_fields() -> None:
    p = AveragingPolicy.parse("legendre:3,inversion")
    assert (p.spec, p.inversion, p.seed) == ("legendre:3", True, None)
    assert p.n_rotations == 150
    assert AveragingPolicy() == AveragingPolicy.parse("none")
    R, w = AveragingPolicy().rotations()
    np.testing.assert_array_equal(R, np.eye(3)[None])
    np.testing.assert_array_equal(w, [1.0])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "foo",
        "legendre",
        "legendre:0",
        "legendre:-2",
        "legendre:x",
        "lebedev:4",
        "lebedev:2",
        "lebedev:133",
        "none:2",
        "random:3",
        "legendre:2+bogus",
        "legendre:2+seed=x",
    ],
)
def test_policy_errors(text: str) -> None:
    with pytest.raises(ValueError) as err:
        AveragingPolicy.parse(text)
    msg = str(err.value)
    assert repr(text) in msg or repr(text.split("+")[-1]) in msg
    assert "valid forms" in msg and "lebedev:L" in msg


def test_grid_errors() -> None:
    with pytest.raises(ValueError, match="'lebedev:4'.*valid forms"):
        grid("lebedev:4")
    with pytest.raises(ValueError, match="not a grid"):
        grid("random")
    with pytest.raises(ValueError, match="bare spec"):
        AveragingPolicy("legendre:2+inv")
    with pytest.raises(ValueError, match="valid forms"):
        AveragingPolicy("legendre:0")
