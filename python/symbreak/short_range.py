"""Where the training data end: the floor below which the model reads no shorter contact.

A fitted model knows nothing about distances its training data never reached, and a
network or a spline extrapolates there at random: the sitting-8 water model gave a +76 eV
spike at O–O 2.0 Å and pulled H atoms together below 0.6 Å. Physics says what happens
there instead: the energy rises steeply and monotonically as two atoms are pushed
together. symbreak's models get that from three pieces, each exact where the data are:

* the **pair prior** (:mod:`symbreak.pair`) continues below the data's shortest distance
  of each species pair as a repulsive exponential wall joined to the spline with the same
  value, slope and curvature, so the wall carries all short-range repulsion;
* the **learned part** (the transformer) and the **three-body prior** read every edge
  length through :func:`soft_floor`: unchanged down to the data's shortest distance r₀ of
  its species pair, then bending smoothly onto a floor at r₀ − ``width``. Below r₀ they see
  a contact they were trained on, and their energy stops depending on the contact's length,
  so they cannot undo the wall; the three-body prior also reads the distance between the
  two neighbours through the floor, which bounds it as an angle closes;
* the pair prior's fit (:func:`symbreak.pair.fit_pair_prior`) keeps the spline monotone
  below the well-sampled range and penalises its curvature, so thin data (three O–O
  samples between 1.5 and 2.4 Å) give a smooth curve, not an oscillation.

``floor`` [S, S] (Å) is measured from the training frames (:func:`short_range_bounds`) and
stored in the model; 0 switches the floor off (files made before it have none). A floor can
be raised afterwards (:meth:`ShortRangeFloor.raise_floors`, ``symbreak export --floor
H-H=1.0``) where the data hold too few contacts for the transformer to learn from: the water
data have 8 H–H pairs below 1.0 Å in 160 frames (H₂ and proton-sharing contacts).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def soft_floor(r: Tensor, floor: Tensor, width: float) -> Tensor:
    """r [E] where r ≥ floor [E] (exactly), floor − width·tanh((floor − r)/width) below it:
    C² at the floor (slope 1, curvature 0 on both sides), never below floor − width, and
    flat (zero slope) far below it. Lengths in Å."""
    below = (floor - r).clamp(min=0.0)
    return r + (below - width * torch.tanh(below / width))


class ShortRangeFloor(nn.Module):
    """The floor of each species pair (module docstring). ``floor`` [S, S] (Å, 0: off)."""

    def __init__(self, n_species: int, width: float = 0.1):
        super().__init__()
        self.width = float(width)
        self.register_buffer("floor", torch.zeros(n_species, n_species, dtype=torch.float64))

    def raise_floors(self, raised: dict[tuple[int, int], float], names: list[str]) -> None:
        """Set the floors of species index pairs {(a, b): Å} (both orders; ``names``: the
        species' symbols, for errors). A floor can only be raised: below the data's shortest
        distance the learned part was never trained. ValueError naming the pair otherwise."""
        for (a, b), value in raised.items():
            current = float(self.floor[a, b])
            if not value >= current or not np.isfinite(value):
                raise ValueError(
                    f"the floor of {names[a]}-{names[b]} is {current:.4f} Å (the data's "
                    f"shortest distance); it can only be raised, not set to {value} Å"
                )
            with torch.no_grad():
                self.floor[a, b] = value
                self.floor[b, a] = value

    def lengths(self, species_a: Tensor, species_b: Tensor, r: Tensor) -> Tensor:
        """Edge lengths [E] (Å) through the floor of the species pairs (a, b) [E] each."""
        floor = self.floor.to(r.dtype)[species_a.long(), species_b.long()]
        return soft_floor(r, floor, self.width)

    def vectors(
        self, species: Tensor, centers: Tensor, neighbors: Tensor, vectors: Tensor
    ) -> Tensor:
        """Edge vectors [E, 3] (Å) with their lengths through the floor, directions kept;
        bit-identical to ``vectors`` for every edge at or above its floor."""
        r = torch.linalg.vector_norm(vectors, dim=1)
        stretch = self.lengths(species[centers], species[neighbors], r) - r  # 0 above the floor
        return vectors + vectors * (stretch / r)[:, None]


def pair_distances(graphs: list, n_species: int) -> dict[tuple[int, int], np.ndarray]:
    """Every edge length (Å) of ``graphs`` (:class:`symbreak.graph.Graph`, full edge
    lists) by ordered species pair (a, b) of centre and neighbour."""
    parts: dict[tuple[int, int], list[np.ndarray]] = {}
    for g in graphs:
        r = np.linalg.norm(g.vectors, axis=1)
        key = g.species[g.centers] * n_species + g.species[g.neighbors]
        for k in np.unique(key):
            parts.setdefault(divmod(int(k), n_species), []).append(r[key == k])
    return {pair: np.concatenate(rs) for pair, rs in parts.items()}


def short_range_bounds(
    graphs: list, n_species: int, monotone_quantile: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """The shortest distance [S, S] (Å) of each species pair over the edges of ``graphs``
    (:class:`symbreak.graph.Graph`, full edge lists, so both are symmetric): where floors and
    walls go; and its ``monotone_quantile`` quantile, below which the pair prior is fitted
    non-increasing. 0 for a pair that never meets within the cutoff (no floor: nothing is
    known about it)."""
    shortest = np.zeros((n_species, n_species))
    monotone = np.zeros((n_species, n_species))
    for (a, b), r in pair_distances(graphs, n_species).items():
        shortest[a, b] = r.min()
        monotone[a, b] = np.quantile(r, monotone_quantile)
    return shortest, monotone


def parse_floors(texts: list[str], species: list[int]) -> dict[tuple[int, int], float]:
    """``["H-H=1.0", ...]`` as {(a, b): Å} in species indices of a model of ``species``
    (atomic numbers); ValueError naming the bad text."""
    from ase.data import atomic_numbers

    out: dict[tuple[int, int], float] = {}
    for text in texts:
        pair, sep, value = text.partition("=")
        elements = pair.split("-")
        try:
            if not sep or len(elements) != 2:
                raise ValueError
            a, b = (species.index(atomic_numbers[s.strip()]) for s in elements)
            out[(a, b)] = float(value)
        except (ValueError, KeyError):
            raise ValueError(
                f"floor '{text}': expected PAIR=Å with elements of the model "
                f"({', '.join(symbols(species))}), e.g. H-H=1.0"
            ) from None
    return out


def symbols(species: list[int]) -> list[str]:
    """Element symbols of atomic numbers."""
    from ase.data import chemical_symbols

    return [chemical_symbols[z] for z in species]
