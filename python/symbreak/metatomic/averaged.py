"""Any metatomic model behind symbreak's contract: :class:`MetatomicAveraged`.

A metatomic ``AtomisticModel`` (``forward(systems, options, check_consistency)``) is wrapped
in a :class:`~symbreak.contract.ContractModel` whose :meth:`~MetatomicAveraged.accumulate`
evaluates the K rotated copies of the B structures of a call as lists of metatomic
``System`` (chunks of ``rotation_batch`` rotations × B structures per model call). The
policies, grid tables, merging and diagnostics are the contract's, so every engine averages
a metatomic model exactly as it averages symbreak's own PET.

How the contract's inputs become metatomic systems:

- the engine's one full neighbour list (at :attr:`cutoff`, the largest cutoff the model
  requests) is cut down to every list the model requests: edges within that list's cutoff,
  and for a half list one edge of each (i, j, S)/(j, i, -S) pair (the one with the smaller
  edge index, via ``reverse``). Pairs and integer cell shifts are rotation invariant: only
  positions, cells and edge vectors are rotated (r' = R r, cell rows h' = h Rᵀ);
- a cell row of zeros is a non-periodic direction (metatomic's convention);
- units: the model is asked for its energy in eV with lengths in Å (``AtomisticModel``
  converts from and to its own units);
- ``selected`` atoms: per-atom energies are requested and only selected atoms' count; if
  not every atom is selected, the model is also told through ``selected_atoms`` (metatomic's
  domain-decomposition convention). A model without per-atom energies is asked for system
  energies (``atomic_energies`` are then zeros: see :attr:`MetatomicAveraged.per_atom`).

Gradients are exact by autograd with three leaves per chunk of rotations, all rotated: the
positions [k, N, 3], the cells [k, B, 3, 3] and the edge vectors [k, E, 3] (the neighbour
lists' values are slices of the latter). The model's energy is a function of the three, and
the vectors are linear in positions and cell, so

    ∂E/∂x = ∂E/∂x|direct + Σ_edges ±∂E/∂r,     -∂E/∂ε = -(Σ_e r ⊗ ∂E/∂r + Σ_i x ⊗ ∂E/∂x|direct
                                                        + hᵀ ∂E/∂h)

after back-rotating each gradient with R_kᵀ. ``edge_gradients`` = Σ_k w_k R_kᵀ ∂E_k/∂(R_k r)
are exact for every model that reads the geometry through its neighbour lists only (the
usual case; forces and virial are exact in every case). A model that also reads positions
or the cell directly has the rest of its gradient in forces and virial but not in
``edge_gradients`` (a per-atom virial built from them would miss it).
"""

from typing import Dict, List  # noqa: UP035 (TorchScript interfaces need these)

import torch
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import (
    ModelCapabilities,
    ModelEvaluationOptions,
    ModelOutput,
    NeighborListOptions,
    System,
)
from torch import Tensor

from ..contract import ContractModel

#: Units symbreak speaks (the contract's): the model converts to and from its own.
LENGTH_UNIT = "angstrom"
ENERGY_UNIT = "eV"


@torch.jit.interface
class Atomistic(torch.nn.Module):
    """What the wrapper calls of a metatomic ``AtomisticModel``: the type of
    :attr:`MetatomicAveraged.model`. Any loaded ``AtomisticModel`` implements it, so a
    scripted wrapper can take a model set after scripting (the LAMMPS plugin does that with
    the template of :mod:`symbreak.metatomic.template`), followed by :meth:`configure`."""

    def forward(
        self,
        systems: List[System],  # noqa: UP006
        options: ModelEvaluationOptions,
        check_consistency: bool,
    ) -> Dict[str, TensorMap]:  # noqa: UP006
        pass

    def capabilities(self) -> ModelCapabilities:
        pass

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:  # noqa: UP006
        pass

    def requested_inputs(self, use_new_names: bool) -> Dict[str, ModelOutput]:  # noqa: UP006
        pass


class MetatomicAveraged(ContractModel):
    """A loaded metatomic ``AtomisticModel`` (TorchScript) behind the contract's entry points.

    ``model``: the scripted ``AtomisticModel`` (``torch.jit.load`` of a metatomic file);
    ``output``: the name of its energy output (``"energy"`` or a variant
    ``"energy/<name>"``). Everything below is read from the model by :meth:`configure`:
    ``species`` = its ``atomic_types``, ``cutoff`` (Å) = the largest cutoff of its neighbour
    lists, ``receptive_field`` (Å) = its ``interaction_range`` (at least the cutoff),
    ``per_atom``: whether it gives per-atom energies, ``model_dtype``: its precision
    ("float32" or "float64").
    """

    model: Atomistic
    nl_options: list[NeighborListOptions]
    nl_cutoffs: list[float]
    nl_full: list[bool]

    def __init__(self, model: torch.nn.Module, output: str = "energy"):
        from ase.data import atomic_masses

        super().__init__([1], 1.0, 1.0)  # placeholders until configure()
        self.model = model
        # Standard atomic masses (amu) by atomic number, for configure() to pick from.
        self.register_buffer("mass_table", torch.tensor(atomic_masses, dtype=torch.float64))
        self.output = output
        self.length_unit = LENGTH_UNIT
        self.energy_unit = ENERGY_UNIT
        self.nl_options = []
        self.nl_cutoffs = []
        self.nl_full = []
        self.per_atom = False
        self.model_dtype = "float64"
        # Follows .double()/.float() of the module: the precision the systems are built in.
        self.register_buffer("dtype_probe", torch.zeros(1, dtype=torch.float64))
        self.configure(output)

    @torch.jit.export
    def configure(self, output: str) -> None:
        """Read species, cutoffs, neighbour lists, precision and the energy output from
        :attr:`model`; ValueError if it has no such output, needs inputs the engines do not
        give, or has atomic types without a standard mass."""
        capabilities = self.model.capabilities()
        if output not in capabilities.outputs:
            names: list[str] = []
            for name in capabilities.outputs.keys():
                names.append(name)
            raise ValueError(
                "the model has no '" + output + "' output (it has " + str(sorted(names)) + ")"
            )
        inputs: list[str] = []
        for name in self.model.requested_inputs(True).keys():
            inputs.append(name)
        if len(inputs) > 0:
            raise ValueError(
                "the model needs inputs symbreak's engines do not give: " + ", ".join(inputs)
                + " (only types, positions, cell and neighbour lists)"
            )  # fmt: skip
        species = capabilities.atomic_types
        for z in species:
            if z < 1 or z >= self.mass_table.shape[0]:
                raise ValueError("the model has atomic type " + str(z) + ", not an element")
        requests = self.model.requested_neighbor_lists()
        cutoffs: list[float] = []
        for request in requests:
            cutoffs.append(float(request.engine_cutoff(self.length_unit)))
        cutoff = 0.0
        for c in cutoffs:
            cutoff = max(cutoff, c)
        interaction = float(capabilities.engine_interaction_range(self.length_unit))
        lookup = torch.full([max(species) + 1], -1, dtype=torch.int64)
        masses: list[float] = []
        for k, z in enumerate(species):
            lookup[z] = k
            masses.append(float(self.mass_table[z]))
        self.species = species
        self.masses = masses
        self.species_index = lookup.to(self.species_index.device)
        self.cutoff = cutoff
        self.receptive_field = max(interaction, cutoff)
        self.output = output
        self.nl_options = requests
        self.nl_cutoffs = cutoffs
        self.nl_full = [bool(r.full_list) for r in requests]
        self.per_atom = capabilities.outputs[output].sample_kind == "atom"
        self.model_dtype = capabilities.dtype
        dtype = torch.float64 if self.model_dtype == "float64" else torch.float32
        self.dtype_probe = torch.zeros(1, dtype=dtype, device=self.dtype_probe.device)

    def _labels(self, local: Tensor, centers: Tensor, neighbors: Tensor, shifts: Tensor) -> Labels:
        """Samples of a metatomic neighbour list: (first_atom, second_atom, cell shifts)."""
        values = torch.cat([local[centers][:, None], local[neighbors][:, None], shifts], dim=1).to(
            torch.int32
        )
        names = ["first_atom", "second_atom", "cell_shift_a", "cell_shift_b", "cell_shift_c"]
        return Labels(names, values, assume_unique=True)

    @torch.jit.export
    def accumulate(
        self,
        numbers: Tensor,
        positions: Tensor,
        cells: Tensor,
        structure: Tensor,
        centers: Tensor,
        neighbors: Tensor,
        shifts: Tensor,
        reverse: Tensor,
        selected: Tensor,
        rotations: Tensor,
        weights: Tensor,
        compute_gradients: bool,
        rotation_batch: int,
    ) -> dict[str, Tensor]:
        """See :meth:`ContractModel.accumulate` and the module doc."""
        self._species(numbers)  # a clear error for an atom of an unknown species
        n_atoms = numbers.shape[0]
        n_edges = centers.shape[0]
        n_structures = cells.shape[0]
        n_rot = rotations.shape[0]
        dtype = self.dtype_probe.dtype
        device = positions.device
        f64 = torch.float64
        base = self._vectors(positions, cells, structure, centers, neighbors, shifts).to(dtype)
        x = positions.to(dtype)
        h = cells.to(dtype)
        rotations_c = rotations.to(device=device, dtype=dtype)  # drawn on the CPU
        weights = weights.to(device=device)
        weights_c = weights.to(dtype)
        if rotation_batch <= 0:  # automatic: the rotated edges of a call within the budget
            rotation_batch = max(1, self.edge_budget // max(n_edges, 1))
        chunk = min(rotation_batch, n_rot)

        # -- per structure: atoms, local indices, neighbour-list samples (rotation free) --
        edge_structure = structure[centers]
        distance = torch.linalg.vector_norm(base, dim=1)
        canonical = torch.arange(n_edges, device=device) <= reverse  # one of each pair
        local = torch.zeros(n_atoms, dtype=torch.int64, device=device)
        atoms_of: list[Tensor] = []
        edges_of: list[list[Tensor]] = []
        samples_of: list[list[Labels]] = []
        for b in range(n_structures):
            atoms = torch.nonzero(structure == b).reshape(-1)
            local[atoms] = torch.arange(atoms.shape[0], device=device)
            atoms_of.append(atoms)
        for b in range(n_structures):
            edges_b: list[Tensor] = []
            samples_b: list[Labels] = []
            for q in range(len(self.nl_options)):
                keep = (edge_structure == b) & (distance < self.nl_cutoffs[q])
                if not self.nl_full[q]:
                    keep = keep & canonical
                e = torch.nonzero(keep).reshape(-1)
                edges_b.append(e)
                samples_b.append(self._labels(local, centers[e], neighbors[e], shifts[e]))
            edges_of.append(edges_b)
            samples_of.append(samples_b)
        order = torch.cat(atoms_of)  # atoms by structure, local order
        counts = torch.tensor([a.shape[0] for a in atoms_of], dtype=torch.int64, device=device)
        first = torch.cumsum(counts, 0) - counts
        xyz = Labels(["xyz"], torch.tensor([[0], [1], [2]], device=device))
        dist = Labels(["distance"], torch.tensor([[0]], device=device))
        periodic = torch.linalg.vector_norm(h, dim=2) > 0  # [B, 3]
        all_selected = bool(selected.all())
        sample_kind = "atom" if self.per_atom else "system"
        requested = {self.output: ModelOutput(unit=self.energy_unit, sample_kind=sample_kind)}

        energy_rot = torch.zeros(n_structures, n_rot, dtype=f64, device=device)
        atomic = torch.zeros(n_atoms, dtype=f64, device=device)
        forces = torch.zeros(n_atoms, 3, dtype=dtype, device=device)
        forces_sq = torch.zeros(n_atoms, dtype=f64, device=device)
        grad_edges = torch.zeros(n_edges, 3, dtype=dtype, device=device)
        grad_x = torch.zeros(n_atoms, 3, dtype=dtype, device=device)
        grad_h = torch.zeros(n_structures, 3, 3, dtype=dtype, device=device)
        counted = selected.to(dtype)
        for start in range(0, n_rot, chunk):
            stop = min(start + chunk, n_rot)
            rot = rotations_c[start:stop]
            w = weights_c[start:stop]
            k = stop - start
            x_rot = torch.einsum("kab,nb->kna", rot, x).detach().requires_grad_(compute_gradients)
            h_rot = torch.einsum("kab,sib->ksia", rot, h).detach()
            h_rot.requires_grad_(compute_gradients)
            r_rot = torch.einsum("kab,eb->kea", rot, base).detach()
            r_rot.requires_grad_(compute_gradients)
            systems: list[System] = []
            chosen: list[Tensor] = []
            for kk in range(k):
                for b in range(n_structures):
                    atoms = atoms_of[b]
                    system = System(
                        numbers[atoms].to(torch.int32),
                        x_rot[kk].index_select(0, atoms),
                        h_rot[kk, b],
                        periodic[b],
                    )
                    for q in range(len(self.nl_options)):
                        vectors = r_rot[kk].index_select(0, edges_of[b][q])
                        block = TensorBlock(
                            vectors.reshape(-1, 3, 1), samples_of[b][q], [xyz], dist
                        )
                        system.add_neighbor_list(self.nl_options[q], block)
                    systems.append(system)
                    if not all_selected:
                        mine = torch.nonzero(selected[atoms]).reshape(-1)
                        index = torch.full_like(mine, kk * n_structures + b)
                        chosen.append(torch.stack([index, mine], dim=1))
            selected_atoms: Labels | None = None
            if not all_selected:
                selected_atoms = Labels(
                    ["system", "atom"], torch.cat(chosen).to(torch.int32), assume_unique=True
                )
            options = ModelEvaluationOptions(
                length_unit=self.length_unit, outputs=requested, selected_atoms=selected_atoms
            )
            block = self.model(systems, options, False)[self.output].block()
            values = block.values.reshape(-1)
            ids = block.samples.values.to(torch.int64)
            rot_of = ids[:, 0] // n_structures
            if self.per_atom:  # (system, local atom) -> global atom
                global_atom = order[first[ids[:, 0] % n_structures] + ids[:, 1]]
                eps = torch.zeros(k * n_atoms, dtype=dtype, device=device)
                eps = eps.index_add(0, rot_of * n_atoms + global_atom, values).view(k, n_atoms)
                eps = eps * counted  # ghosts' (unselected atoms') energies never count
                e_k = torch.zeros(k, n_structures, dtype=dtype, device=device)
                e_k = e_k.index_add(1, structure, eps)
                atomic = atomic + (w[:, None] * eps).sum(0).detach().to(f64)
            else:
                e_k = torch.zeros(k * n_structures, dtype=dtype, device=device)
                e_k = e_k.index_add(0, ids[:, 0], values).view(k, n_structures)
            energy_rot[:, start:stop] = e_k.detach().t().to(f64)
            if compute_gradients:
                total = (w[:, None] * e_k).sum()
                grads = torch.autograd.grad([total], [x_rot, h_rot, r_rot], allow_unused=True)
                f_k = torch.zeros(k, n_atoms, 3, dtype=dtype, device=device)
                g_r = grads[2]
                if g_r is not None:
                    g_back = torch.einsum("kab,kea->keb", rot, g_r)  # R_kᵀ ∂(w_k E_k)/∂(R_k r)
                    grad_edges = grad_edges + g_back.sum(0)
                    f_k = f_k.index_add(1, centers, g_back).index_add(1, neighbors, -g_back)
                g_x = grads[0]
                if g_x is not None:
                    g_back = torch.einsum("kab,kna->knb", rot, g_x)
                    grad_x = grad_x + g_back.sum(0)
                    f_k = f_k - g_back
                g_h = grads[1]
                if g_h is not None:
                    grad_h = grad_h + torch.einsum("kab,ksia->ksib", rot, g_h).sum(0)
                forces = forces + f_k.sum(0)
                safe_w = torch.where(w > 0, w, torch.ones_like(w))
                forces_sq = forces_sq + ((f_k.to(f64) ** 2).sum(2) / safe_w.to(f64)[:, None]).sum(0)
        out: dict[str, Tensor] = {
            "energy_per_rotation": energy_rot,
            "weights": weights.to(f64),
            "atomic_energies": atomic,
        }
        if compute_gradients:
            # -dE/dε of r' = r(1+ε), x' = x(1+ε), h' = h(1+ε), per structure.
            virial = -torch.bmm(h.transpose(1, 2), grad_h)
            virial = virial.index_add(
                0, edge_structure, -(base[:, :, None] * grad_edges[:, None, :])
            )
            virial = virial.index_add(0, structure, -(x[:, :, None] * grad_x[:, None, :]))
            out["edge_gradients"] = grad_edges
            out["forces"] = forces
            out["forces_sq"] = forces_sq
            out["virial"] = virial
        return out
