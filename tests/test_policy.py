"""The one policy grammar and the counter-based random rotations (symbreak.policy).

The grammar and the random stream are TorchScript functions that every model file carries;
Python runs the same functions eagerly. Checked: scripted == eager (texts, errors, bits),
validation at the moment a policy is made in every Python front end, and the random stream
against the Haar measure's known moments and rotation-angle density."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from symbreak import policy as P
from symbreak.rotations import AveragingPolicy

scripted_parse = torch.jit.script(P.parse_policy)
scripted_random = torch.jit.script(P.random_rotations)

VALID = [
    "none", "random", "legendre:2", "lebedev:5+inv", " Lebedev:05 , INV ", "random+inv+seed=7",
    "random+seed=999999999999999999", "legendre:8", "lebedev:17+inv+max=3740", "legendre:2+i",
    "none+inversion", "legendre:100+max=3960100",
]  # fmt: skip
INVALID = [
    ("random+seed=-1", "seed must be an integer"),
    ("random+seed=1000000000000000000", "seed must be an integer"),
    ("legendre:100", r"3960100 rotations per call, more than the bound of 2000.*\+max=3960100"),
    ("lebedev:19+inv", r"5548 rotations.*\+max=5548"),
    ("legendre:9", r"\+max=2601"),
    ("legendre:2+max=0", "max must be an integer >= 1"),
    ("lebedev:4", "no Lebedev rule of order 4"),
    ("legendre", "needs an order"),
    ("random:2", "takes no order"),
    ("sometimes", "unknown averaging policy"),
    ("legendre:2+fast", "bad option 'fast'"),
    ("legendre:1:2", "bad averaging policy"),
]


@pytest.mark.parametrize("text", VALID)
def test_scripted_grammar_equals_eager_and_round_trips(text: str) -> None:
    parsed = P.parse_policy(text)
    assert scripted_parse(text) == parsed
    canonical = P.format_policy(*parsed)
    assert P.parse_policy(canonical) == parsed
    assert str(AveragingPolicy.parse(text)) == canonical
    assert AveragingPolicy.parse(canonical) == AveragingPolicy.parse(text)


@pytest.mark.parametrize("text,message", INVALID)
def test_bad_policies_are_named_by_both_parsers(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as eager:
        P.parse_policy(text)
    assert repr(text) in str(eager.value)
    with pytest.raises(torch.jit.Error) as scripted:
        scripted_parse(text)
    assert str(eager.value) in str(scripted.value)  # the same message from the file's code
    with pytest.raises(ValueError, match=message):
        AveragingPolicy.parse(text)


def test_bound_counts_the_rotations_of_the_grid() -> None:
    for family, orders in (("legendre", range(1, 10)), ("lebedev", P.LEBEDEV_ORDERS[:12])):
        for order in orders:
            k = AveragingPolicy(f"{family}:{order}", max_rotations=10**6).n_rotations
            assert P.grid_size(family, order) == k  # the count the bound uses is the grid's
    policy = AveragingPolicy.parse("legendre:9+max=2601")
    assert policy.n_rotations == 2601 and str(policy) == "legendre:9+max=2601"
    with pytest.raises(ValueError, match="bound of 2000"):
        AveragingPolicy("legendre:9")


def test_negative_seeds_and_bad_options_fail_where_they_are_given(tmp_path) -> None:
    from symbreak.engines.ase import SymbreakCalculator, make_policy
    from symbreak.evaluator import Evaluator
    from symbreak.rotations import AveragingPolicy as AP

    with pytest.raises(ValueError, match="seed"):
        AP("random", seed=-1)
    with pytest.raises(ValueError, match="seed"):
        AP.parse("random").with_options(seed=-1)
    with pytest.raises(ValueError, match="seed"):
        make_policy("random", seed=-1)
    with pytest.raises(ValueError, match="seed"):  # before any model is loaded
        SymbreakCalculator("no-such-model-file.pt", average="random", seed=-1)
    with pytest.raises(ValueError, match="rotation_batch"):
        Evaluator("water-revpbe0d3", rotation_batch=-3)
    with pytest.raises(ValueError, match="workers"):
        Evaluator("water-revpbe0d3", workers=0)


def test_inversion_has_one_meaning() -> None:
    """None keeps what the text says, True adds the inversion, False removes it, in every
    Python front end (issue: Evaluator.set_policy removed it, make_policy kept it)."""
    from symbreak.engines.ase import make_policy

    base = AveragingPolicy.parse("lebedev:3+inv")
    assert base.with_options() is base
    assert base.with_options(inversion=None).inversion
    assert not base.with_options(inversion=False).inversion
    assert AveragingPolicy.parse("lebedev:3").with_options(inversion=True).inversion
    assert make_policy("lebedev:3+inv").inversion
    assert not make_policy("lebedev:3+inv", inversion=False).inversion
    assert make_policy("lebedev:3", inversion=True).inversion


def test_random_stream_is_the_same_bits_in_the_file_and_in_python() -> None:
    for seed in (0, 1, 3, 2**40 + 7, 10**18 - 1):
        for counter in (0, 1, 2, 1000, 2**33 + 5):
            for inversion in (False, True):
                r1, w1 = P.random_rotations(seed, counter, inversion)
                r2, w2 = scripted_random(seed, counter, inversion)
                assert torch.equal(r1, r2) and torch.equal(w1, w2)
    assert not torch.equal(P.random_rotation(3, 0), P.random_rotation(3, 1))
    assert not torch.equal(P.random_rotation(3, 0), P.random_rotation(4, 0))
    with pytest.raises(ValueError):
        P.random_rotation(-1, 0)


def test_random_stream_is_haar_distributed_with_half_improper() -> None:
    """Against the Haar measure on O(3) with a fair sign: E[R] = 0, E[R_ij R_kl] =
    δ_ik δ_jl / 3, the proper part's rotation angle has density (1 - cos θ)/π, and half of
    the draws are improper (binomial bounds, 5 sigma)."""
    n = 20000
    rots = torch.stack([P.random_rotation(11, c) for c in range(n)]).numpy()
    np.testing.assert_allclose(
        np.einsum("nij,nkj->nik", rots, rots), np.eye(3)[None].repeat(n, 0), atol=1e-12
    )
    det = np.linalg.det(rots)
    np.testing.assert_allclose(np.abs(det), 1.0, atol=1e-12)
    improper = np.mean(det < 0)
    assert abs(improper - 0.5) < 5 * np.sqrt(0.25 / n)
    assert np.abs(rots.mean(0)).max() < 5 * np.sqrt(1 / 3 / n)
    second = np.einsum("nij,nkl->ijkl", rots, rots) / n
    expected = np.einsum("ik,jl->ijkl", np.eye(3), np.eye(3)) / 3
    assert np.abs(second - expected).max() < 0.02
    proper = rots * np.sign(det)[:, None, None]
    theta = np.arccos(np.clip((np.trace(proper, axis1=1, axis2=2) - 1) / 2, -1, 1))
    edges = np.linspace(0, np.pi, 11)
    counts, _ = np.histogram(theta, edges)
    cdf = (edges - np.sin(edges)) / np.pi
    expected_counts = n * np.diff(cdf)
    chi2 = np.sum((counts - expected_counts) ** 2 / expected_counts)
    assert chi2 < 30  # 9 degrees of freedom: p ≈ 4e-4
