"""Isolated molecules for the gas-phase term of training.

A model trained only on condensed-phase frames never sees an atom with two neighbours; its
learned part then extrapolates freely in the gas phase (measured on the sitting-5 water
model: a 0.5 eV bump along the O–H stretch that turns the pair prior's single well into a
double well, and an isolated molecule that heats up in NVE). Without gas-phase labels, the
training can instead push the learned part's forces on isolated, distorted molecules
towards zero, so that the invariant priors (fitted to the same data) describe the isolated
molecule. The molecules are cut from the training frames: covalent connectivity from ASE's
natural cutoffs, each molecule unwrapped across the periodic boundaries.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from .graph import Graph, build_graph
from .model import atom_forces
from .rotations import random_rotations

# A non-periodic box far larger than any molecule plus the cutoff.
_BOX = np.eye(3) * 100.0
_NO_PBC = np.zeros(3, dtype=bool)


@dataclass
class Molecule:
    numbers: np.ndarray  # [n] atomic numbers
    positions: np.ndarray  # [n, 3] Å, unwrapped, centred on the origin
    source: tuple[int, np.ndarray]  # (frame index, the atoms' indices in it)


def cut_molecules(
    frames: list, max_atoms: int = 12, bond_scale: float = 1.3, min_share: float = 0.1
) -> list[Molecule]:
    """The molecules of ``frames`` (ASE Atoms): connected components of the bonds shorter
    than ``bond_scale`` × the sum of natural (covalent) radii, at most ``max_atoms`` atoms
    each (larger components are networks, not molecules), of a composition that makes up
    at least ``min_share`` of all components. The last drops the transient fragments of a
    liquid (in the water data at 1.3: 94 % H2O, the rest OH, H, H3O and pairs of molecules
    sharing a proton)."""
    from ase.neighborlist import natural_cutoffs, neighbor_list
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, connected_components

    molecules = []
    for f, atoms in enumerate(frames):
        n = len(atoms)
        cutoffs = np.array(natural_cutoffs(atoms, mult=bond_scale))
        i, j, d = neighbor_list("ijD", atoms, cutoffs)  # D: minimum-image bond vectors
        bonds = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsr()
        n_comp, labels = connected_components(bonds, directed=False)
        vector = {(a, b): v for a, b, v in zip(i.tolist(), j.tolist(), d, strict=True)}
        for c in range(n_comp):
            members = np.flatnonzero(labels == c)
            if len(members) > max_atoms:
                continue
            # Unwrap by walking the bonds from the first atom (breadth first).
            order, parent = breadth_first_order(bonds, members[0], directed=False)
            pos = {int(members[0]): np.zeros(3)}
            for a in order[1:]:
                pos[int(a)] = pos[int(parent[a])] + vector[(int(parent[a]), int(a))]
            xyz = np.array([pos[int(a)] for a in members])
            centred = xyz - xyz.mean(axis=0)
            molecules.append(Molecule(atoms.numbers[members].copy(), centred, (f, members)))
    formulas = Counter(tuple(sorted(m.numbers.tolist())) for m in molecules)
    common = {f for f, n in formulas.items() if n >= min_share * len(molecules)}
    return [m for m in molecules if tuple(sorted(m.numbers.tolist())) in common]


def distorted_graphs(
    molecules: list[Molecule],
    rng: np.random.Generator,
    count: int,
    noise: float,
    cutoff: float,
    species: list[int],
) -> list[Graph]:
    """``count`` molecules drawn from ``molecules``, each displaced by Gaussian noise
    (``noise`` Å per Cartesian component), randomly rotated (proper or improper) and
    placed alone in a non-periodic box; their neighbour graphs at ``cutoff``."""
    picks = rng.integers(len(molecules), size=count)
    rotations = random_rotations(rng, count)
    graphs = []
    for k, rot in zip(picks, rotations, strict=True):
        m = molecules[k]
        pos = m.positions + rng.normal(0.0, noise, m.positions.shape)
        graphs.append(build_graph(m.numbers, pos @ rot.T + 50.0, _BOX, _NO_PBC, cutoff, species))
    return graphs


def dimer_graphs(
    rng: np.random.Generator, count: int, floor: np.ndarray, cutoff: float, species: list[int]
) -> list[Graph]:
    """``count`` isolated pairs of atoms, each of a random pair of ``species`` (atomic
    numbers) at a distance drawn uniformly between the pair's short-range floor
    ``floor`` [S, S] (Å, :mod:`symbreak.short_range`) and ``cutoff``, randomly oriented.
    Nothing in condensed-phase data looks like a dimer, so the learned part's dimer curves
    are free to wiggle; pushing its forces there towards zero leaves each dimer curve to
    the pair prior (one well, a wall below the data)."""
    graphs = []
    pairs = rng.integers(len(species), size=(count, 2))
    for a, b in pairs:
        r = rng.uniform(float(floor[a, b]), cutoff)
        direction = rng.normal(size=3)
        positions = np.array([np.zeros(3), r * direction / np.linalg.norm(direction)]) + 50.0
        numbers = np.array([species[a], species[b]])
        graphs.append(build_graph(numbers, positions, _BOX, _NO_PBC, cutoff, species))
    return graphs


def learned_force_msq(model, species, centers, neighbors, vectors, reverse) -> torch.Tensor:
    """Mean square (eV/Å)² over atoms and components of the forces of the model's learned
    part alone (``learned_energies``: no baseline, no invariant priors), differentiable
    with respect to the model's parameters."""
    vectors = vectors.detach().requires_grad_(True)
    energy = model.learned_energies(species, centers, neighbors, vectors, reverse).sum()
    (grad,) = torch.autograd.grad(energy, vectors, create_graph=True)
    forces = atom_forces(grad, centers, neighbors, species.shape[0])
    return (forces.float() ** 2).mean()
