"""One policy grammar and one meaning of inversion/seed in every Python front end:
`symbreak serve` and `symbreak run` options, the i-PI driver (INIT <parameters>, the
control channel), the in-process PES and the ASE calculator."""

from __future__ import annotations

import pytest

from symbreak.cli import build_parser
from symbreak.engines.ase import SymbreakCalculator
from symbreak.engines.ipi_driver import SymbreakDriver
from symbreak.engines.run_cli import _average_args


@pytest.fixture(scope="module")
def driver():
    return SymbreakDriver(species="O H H")


def test_serve_options_keep_the_policy_text() -> None:
    args = build_parser().parse_args(["serve", "--address", "a", "--average", "lebedev:3+inv"])
    assert args.inversion is None  # not given: the text decides
    args = build_parser().parse_args(
        ["serve", "--address", "a", "--average", "lebedev:3+inv", "--no-inversion"]
    )
    assert args.inversion is False


def test_run_passes_the_whole_policy_text_to_its_clients() -> None:
    assert _average_args("Random , inv+seed=3+max=50") == ["--average", "random+inv+seed=3+max=50"]
    with pytest.raises(ValueError, match="seed"):
        _average_args("random+seed=-2")


def test_driver_policy_semantics(driver) -> None:
    assert str(driver.policy) == "none"
    driver.set_policy(average="lebedev:3+inv")
    assert str(driver.policy) == "lebedev:3+inv"
    driver.set_policy(inversion="false")  # the control channel's form
    assert str(driver.policy) == "lebedev:3"
    driver.set_policy(average="random", seed="4")
    assert str(driver.policy) == "random+seed=4"
    for bad in ({"seed": "-1"}, {"average": "legendre:100"}, {"seed": "x"}):
        with pytest.raises(ValueError):
            driver.set_policy(**bad)
    assert str(driver.policy) == "random+seed=4"  # a refused update changes nothing
    driver.init(0, " average : lebedev:5 , inversion : True , ")
    assert str(driver.policy) == "lebedev:5+inv"
    with pytest.raises(ValueError, match="seed"):
        driver.init(0, " average : random , seed : -1 , ")
    driver.set_policy(average="none")


def test_driver_and_calculator_keep_the_text_unless_told(driver) -> None:
    assert SymbreakDriver(species="O H H", average="legendre:2+inv").policy.inversion
    assert not SymbreakDriver(
        species="O H H", average="legendre:2+inv", inversion=False
    ).policy.inversion
    calc = SymbreakCalculator(driver.evaluator, average="legendre:2+inv")
    assert calc.policy.inversion
    assert not calc.set_average("legendre:2+inv", inversion=False).inversion
