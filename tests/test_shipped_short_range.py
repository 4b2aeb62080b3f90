"""The shipped model stays physical where its data end (issue: short-range safety): scans
of dimers, of the H–O–H angle and of a molecule pushed into the liquid, plain and
averaged, against limits set from the training data themselves (read here with ASE)."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list

from helpers import DATA
from symbreak.engines.ase import SymbreakCalculator
from symbreak.export import load_model
from symbreak.scans import bend, dimer, energies_and_forces, minima, monotone, push

DATA_FILE = DATA / "water_revpbe0d3_160.xyz"
POLICIES = ["none", "lebedev:3"]
DISTANCES = np.round(np.arange(0.3, 3.41, 0.025), 3)
ANGLES = np.arange(100.0, 19.0, -2.5)  # 100° down to 20°


@pytest.fixture(scope="module")
def shortest_oo() -> float:
    """The shortest O–O distance in the model's training frames (Å)."""
    model = load_model("water-revpbe0d3")
    frames = [ase.io.read(DATA_FILE, k) for k in model.metadata.training["split"]["train"]]
    shortest = np.inf
    for atoms in frames:
        i, j, d = neighbor_list("ijd", atoms, 3.0)
        oo = (atoms.numbers[i] == 8) & (atoms.numbers[j] == 8)
        shortest = min(shortest, d[oo].min(initial=np.inf))
    return float(shortest)


@pytest.fixture(scope="module", params=POLICIES)
def calc(request) -> SymbreakCalculator:
    return SymbreakCalculator("water-revpbe0d3", average=request.param, dtype=torch.float64)


@pytest.fixture(scope="module")
def bend_energies(calc) -> np.ndarray:
    """The bend's energies (eV) from 100° to 20°, every 2.5°."""
    return energies_and_forces(bend(ANGLES), calc)[0]


@pytest.mark.parametrize(
    "numbers, repel_below, bounded_from",
    [((1, 1), 0.7, 0.6), ((8, 1), 0.75, None), ((8, 8), "data", 1.9)],
    ids=["H-H", "O-H", "O-O"],
)
def test_dimers_repel_below_the_data_with_one_minimum(
    calc, shortest_oo, numbers, repel_below, bounded_from
):
    energies, forces = energies_and_forces(dimer(numbers, DISTANCES), calc)
    outward = forces[:, 1, 0]  # force on the second atom along the bond, > 0: repulsive
    limit = shortest_oo if repel_below == "data" else repel_below
    close = DISTANCES < limit
    assert np.all(outward[close] > 0), DISTANCES[close][outward[close] <= 0]
    assert minima(energies) <= 1, energies  # wells deeper than 1 meV
    if bounded_from is not None:
        far = DISTANCES >= bounded_from
        assert np.abs(forces[far]).max() < 50.0
    # the forces are those of the energy: central differences along the scan
    numeric = -np.gradient(energies, DISTANCES)
    inside = (DISTANCES > 0.35) & (DISTANCES < 3.0)
    np.testing.assert_allclose(outward[inside], numeric[inside], atol=0.05 * np.abs(outward).max())


def test_closing_the_angle_costs_energy_all_the_way(bend_energies):
    """From 100° to 20° the energy never falls (the H–H floor at 1.0 Å keeps the learned
    part from the dip it had at H–H 0.74-0.78 Å, the data's few H2 contacts), and the
    rise is more than 3 eV (the collapse of the model without guards was 6.5 eV down)."""
    e = bend_energies
    assert monotone(e), np.round(e - e[0], 3)
    assert e[-1] - e[0] > 3.0


@pytest.mark.parametrize("policy", POLICIES)
def test_a_molecule_pushed_into_the_liquid_meets_a_rising_energy(policy):
    """In float32, as MD runs (192 atoms × 18 rotations × 9 frames in float64 take minutes):
    the rise between 0.1 Å steps is ≥ 0.04 eV, well above float32's rounding of the total."""
    calc = SymbreakCalculator("water-revpbe0d3", average=policy, dtype=torch.float32)
    liquid = ase.io.read(DATA_FILE, 0)
    distances = np.round(np.arange(2.6, 1.79, -0.1), 3)
    energies, forces = energies_and_forces(push(liquid, distances), calc)
    assert monotone(energies), np.round(energies - energies[0], 3)
    assert np.isfinite(forces).all()
