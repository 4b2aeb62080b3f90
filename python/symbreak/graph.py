"""From a structure to the model's inputs: species indices, edges, reverse edges.

The model reads a *full* neighbour list (every pair in both directions). Edge e is
(centers[e], neighbors[e], S[e]) with vector r = x_j - x_i + S·cell (Å); its reverse
is (j, i, -S) with vector -r, which the model uses to pass messages back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .contract import MIN_DISTANCE
from .neighbors import neighbor_list


@dataclass
class Graph:
    """Model inputs for one structure (numpy, int64 / float64)."""

    species: np.ndarray  # [N] indices into the model's species list
    centers: np.ndarray  # [E]
    neighbors: np.ndarray  # [E]
    shifts: np.ndarray  # [E, 3] integer cell shifts
    vectors: np.ndarray  # [E, 3] Å
    reverse: np.ndarray  # [E]

    @property
    def n_atoms(self) -> int:
        return len(self.species)


def species_indices(numbers: np.ndarray, species: Sequence[int]) -> np.ndarray:
    """Map atomic numbers [N] to indices into ``species``; ValueError names the first
    atom whose element the model does not know."""
    from ase.data import chemical_symbols

    numbers = np.asarray(numbers)
    if numbers.size and (numbers.min() < 1 or numbers.max() >= len(chemical_symbols)):
        atom = int(np.flatnonzero((numbers < 1) | (numbers >= len(chemical_symbols)))[0])
        raise ValueError(
            f"atom {atom} has atomic number {int(numbers[atom])}, which is no element "
            f"(1-{len(chemical_symbols) - 1})"
        )
    lookup = np.full(max(max(species), int(np.max(numbers, initial=0))) + 1, -1, dtype=np.int64)
    lookup[np.asarray(species)] = np.arange(len(species))
    idx = lookup[np.asarray(numbers, dtype=np.int64)]
    bad = np.flatnonzero(idx < 0)
    if bad.size:
        z = int(numbers[bad[0]])
        known = ", ".join(chemical_symbols[s] for s in species)
        raise ValueError(
            f"atom {bad[0]} is {chemical_symbols[z]} (Z={z}), a species the model lacks "
            f"(it knows {known}); {bad.size} such atom(s) in total"
        )
    return idx


def reverse_edges(centers: np.ndarray, neighbors: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Index of the reverse (j, i, -S) of every edge (i, j, S) of a full list."""
    if len(centers) == 0:
        return np.zeros(0, dtype=np.int64)
    s = np.asarray(shifts, dtype=np.int64)
    forward = np.lexsort((s[:, 2], s[:, 1], s[:, 0], neighbors, centers))
    backward = np.lexsort((-s[:, 2], -s[:, 1], -s[:, 0], centers, neighbors))
    reverse = np.empty(len(centers), dtype=np.int64)
    reverse[backward] = forward
    if not (np.array_equal(centers[reverse], neighbors) and np.array_equal(shifts[reverse], -s)):
        raise ValueError("neighbour list is not a full list: some edge has no reverse")
    return reverse


def build_graph(
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray | None,
    pbc: bool | Sequence[bool],
    cutoff: float,
    species: Sequence[int],
) -> Graph:
    """Full neighbour list of a structure (positions [N,3] Å, cell rows = lattice vectors)."""
    idx = species_indices(np.asarray(numbers), species)
    i, j, s, v = neighbor_list(positions, cell, pbc, cutoff, full_list=True)
    close = np.flatnonzero(np.einsum("ei,ei->e", v, v) < MIN_DISTANCE**2)
    if close.size:
        e = close[0]
        raise ValueError(
            f"atoms {i[e]} and {j[e]} (cell shift {s[e].tolist()}) are "
            f"{np.linalg.norm(v[e]):.2e} Å apart: overlapping atoms"
        )
    return Graph(idx, i, j, s, v, reverse_edges(i, j, s))
