"""symbreak's PET written as a metatomic ``AtomisticModel`` (``symbreak export --format
metatomic``).

The file runs wherever metatomic models run (metatomic-ase's ``MetatomicCalculator`` and
``SymmetrizedCalculator``, i-PI's ``i-pi-py_driver -m metatomic``, metatomic's LAMMPS pair
style), with the energies of the plain symbreak model: per-atom energies (eV) = the
per-species baseline + the invariant priors + the transformer, read from one full neighbour
list at the PET's cutoff (Å). Forces and stress come from the engine's autograd through the
neighbour-list vectors, as for any metatomic model; averaging is whatever the engine does
(none, or ``SymmetrizedCalculator``'s grid).

The file is written in float64 by default: total energies of large systems (a per-species
baseline of ~10² eV per atom) lose meV in float32, and symbreak keeps energies in float64.
"""

import copy
import json
from pathlib import Path
from typing import Dict, List, Optional  # noqa: UP035 (metatomic checks these annotations)

import torch
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import (
    AtomisticModel,
    ModelCapabilities,
    ModelMetadata,
    ModelOutput,
    NeighborListOptions,
    System,
)
from torch import Tensor

from ..model import PET

#: Where the model and its data come from (metatomic's ``ModelMetadata.references``).
REFERENCES = {
    "architecture": [
        'M. F. Langer, S. N. Pozdnyakov, M. Ceriotti, "Probing the effects of broken '
        'symmetries in machine learning", Mach. Learn.: Sci. Technol. 5, 04LT01 (2024)',
    ],
    "model": [
        'Training data: B. Cheng, E. A. Engel, J. Behler, C. Dellago, M. Ceriotti, "Ab initio '
        'thermodynamics of liquid and solid water", PNAS 116, 1110 (2019)',
        "Data archive of M. F. Langer, S. N. Pozdnyakov, M. Ceriotti, Materials Cloud, "
        "DOI 10.24435/materialscloud:kz-3b (CC BY 4.0)",
    ],
    "implementation": [
        "symbreak: PET with invariant priors, rotational averaging switched at run time"
    ],
}
AUTHORS = ["symbreak contributors (model trained with symbreak train)"]


def _edge_key(i: Tensor, j: Tensor, s: Tensor, n_atoms: int, base: int) -> Tensor:
    """One int64 per edge (i, j, S + span), ordered like (i, j, S) lexicographically."""
    return (((i * n_atoms + j) * base + s[:, 0]) * base + s[:, 1]) * base + s[:, 2]


def reverse_edges(centers: Tensor, neighbors: Tensor, shifts: Tensor, n_atoms: int) -> Tensor:
    """Index of the reverse (j, i, -S) of every edge (i, j, S) of a full list [E]; ValueError
    if some edge has none (a half list)."""
    n_edges = centers.shape[0]
    if n_edges == 0:
        return torch.zeros(0, dtype=torch.int64, device=centers.device)
    span = int(shifts.abs().max())
    s = shifts + span  # >= 0
    forward = _edge_key(centers, neighbors, s, n_atoms, 2 * span + 1)
    backward = _edge_key(neighbors, centers, 2 * span - s, n_atoms, 2 * span + 1)
    ordered, order = torch.sort(forward)
    position = torch.searchsorted(ordered, backward).clamp(max=n_edges - 1)
    reverse = order[position]
    if not bool((forward[reverse] == backward).all()):
        raise ValueError("the neighbour list is not a full list: some edge has no reverse")
    return reverse


class PETModule(torch.nn.Module):
    """A PET behind metatomic's ``ModelInterface``: per-atom or per-system energies (eV)."""

    def __init__(self, pet: PET):
        super().__init__()
        self.pet = pet
        lookup = torch.full((max(pet.species) + 1,), -1, dtype=torch.int64)
        lookup[torch.tensor(pet.species)] = torch.arange(len(pet.species))
        self.register_buffer("species_index", lookup)
        self.neighbors = NeighborListOptions(cutoff=float(pet.cutoff), full_list=True, strict=True)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:  # noqa: UP006
        return [self.neighbors]

    def forward(
        self,
        systems: List[System],  # noqa: UP006
        outputs: Dict[str, ModelOutput],  # noqa: UP006
        selected_atoms: Optional[Labels] = None,  # noqa: UP045
    ) -> Dict[str, TensorMap]:  # noqa: UP006
        if "energy" not in outputs or len(systems) == 0:
            return {}
        # All systems in one graph (i-PI's beads, a batch): indices offset per system.
        species: List[Tensor] = []  # noqa: UP006
        centers: List[Tensor] = []  # noqa: UP006
        neighbors: List[Tensor] = []  # noqa: UP006
        vectors: List[Tensor] = []  # noqa: UP006
        reverse: List[Tensor] = []  # noqa: UP006
        system_of: List[Tensor] = []  # noqa: UP006
        local: List[Tensor] = []  # noqa: UP006
        atom_offset = 0
        edge_offset = 0
        for s, system in enumerate(systems):
            n = len(system)
            nl = system.get_neighbor_list(self.neighbors)
            pairs = nl.samples.values.to(torch.int64)
            i, j = pairs[:, 0], pairs[:, 1]
            species.append(self.species_index[system.types.to(torch.int64)])
            centers.append(i + atom_offset)
            neighbors.append(j + atom_offset)
            vectors.append(nl.values.reshape(-1, 3))
            reverse.append(reverse_edges(i, j, pairs[:, 2:5], n) + edge_offset)
            system_of.append(torch.full([n], s, dtype=torch.int64, device=i.device))
            local.append(torch.arange(n, device=i.device))
            atom_offset += n
            edge_offset += i.shape[0]
        sp = torch.cat(species)
        c = torch.cat(centers)
        nb = torch.cat(neighbors)
        r = torch.cat(vectors)
        dtype = r.dtype
        eps = (
            self.pet.baseline_energies(sp).to(dtype)
            + self.pet.prior_energies(sp, c, nb, r)
            + self.pet.learned_energies(sp, c, nb, r, torch.cat(reverse))
        )
        which = torch.cat(system_of)
        atoms = torch.cat(local)
        if selected_atoms is not None:  # only these atoms' energies (domain decomposition)
            chosen = selected_atoms.values.to(torch.int64)
            starts = torch.zeros(len(systems), dtype=torch.int64, device=c.device)
            counts = torch.bincount(which, minlength=len(systems))
            starts[1:] = torch.cumsum(counts, 0)[:-1]
            keep = starts[chosen[:, 0]] + chosen[:, 1]
            eps, which, atoms = eps[keep], which[keep], atoms[keep]
        if outputs["energy"].sample_kind == "atom":
            values = eps.reshape(-1, 1)
            samples = Labels(["system", "atom"], torch.stack([which, atoms], 1).to(torch.int32))
        else:
            values = torch.zeros(len(systems), 1, dtype=dtype, device=eps.device)
            values = values.index_add(0, which, eps.reshape(-1, 1))
            index = torch.arange(len(systems), device=eps.device).reshape(-1, 1)
            samples = Labels(["system"], index.to(torch.int32))
        block = TensorBlock(
            values=values,
            samples=samples,
            components=[],
            properties=Labels(["energy"], torch.tensor([[0]], device=values.device)),
        )
        keys = Labels(["_"], torch.tensor([[0]], device=values.device))
        return {"energy": TensorMap(keys, [block])}


def atomistic_model(
    pet: PET, name: str, description: str = "", dtype: torch.dtype = torch.float64, extra=None
) -> AtomisticModel:
    """``pet`` (a copy in ``dtype``, eval mode) as a metatomic ``AtomisticModel`` with its
    capabilities (energy in eV per atom, Å, its species, interaction range = layers ×
    cutoff, one full neighbour list at the cutoff) and metadata (authors, references)."""
    pet = copy.deepcopy(pet).to(dtype).eval()
    capabilities = ModelCapabilities(
        outputs={"energy": ModelOutput(quantity="energy", unit="eV", sample_kind="atom")},
        atomic_types=[int(z) for z in pet.species],
        interaction_range=float(pet.cutoff) * len(pet.layers),
        length_unit="angstrom",
        supported_devices=["cpu", "cuda"],
        dtype="float64" if dtype == torch.float64 else "float32",
    )
    metadata = ModelMetadata(
        name=name,
        description=description,
        authors=AUTHORS,
        references=REFERENCES,
        extra={k: json.dumps(v) if not isinstance(v, str) else v for k, v in (extra or {}).items()},
    )
    return AtomisticModel(PETModule(pet).eval(), metadata, capabilities)


def save_metatomic(
    pet: PET, path: str | Path, name: str, dtype: torch.dtype = torch.float64, extra=None
) -> Path:
    """Write ``pet`` as a metatomic model file at ``path``."""
    description = (
        "symbreak's point-edge transformer (PET): invariant radial pair and angular three-body "
        "priors plus a transformer that reads raw Cartesian edge vectors, so the model is not "
        "rotationally equivariant (average it with symbreak or metatomic's "
        "SymmetrizedCalculator). Energies in eV, per atom."
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomistic_model(pet, name, description, dtype, extra).save(str(path))
    return path
