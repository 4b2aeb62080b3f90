"""The exported model contract: rotational averaging, gradients and diagnostics, written once.

An exported symbreak model file is an :class:`AveragedModel`: a scripted wrapper around an
inner model (symbreak's PET) that does all the physics every engine needs. Engines (the
Python evaluator behind ASE and i-PI, the LAMMPS plugin) only build the graph, convert
units and conventions and speak their protocol; they call one entry point::

    out = module.compute(numbers, positions, cells, structure, centers, neighbors, shifts,
                         reverse, selected, policy, counter, compute_gradients, rotation_batch)

Inputs (Å, int64 indices): atomic numbers [N], positions [N, 3], cells [B, 3, 3] (rows are
lattice vectors), ``structure`` [N] (0..B-1), a full neighbour list ``centers``/``neighbors``
[E] with integer cell ``shifts`` [E, 3] (r_ij = x_j - x_i + S·h) and ``reverse`` [E] (index
of (j, i, -S)), ``selected`` [N] bool (atoms whose energies count: LAMMPS's owned atoms,
every atom elsewhere), the policy text (:mod:`symbreak.policy`; ``random`` needs a seed) and
``counter`` (which draw of a random policy).

Outputs (float64 energies, eV, Å): ``energy`` [B] = Σ_k w_k E(R_k x),
``energy_per_rotation`` [B, K], ``weights`` [K], ``energy_rot_std`` [B],
``atomic_energies`` [N]; with gradients: ``forces`` [N, 3] = -∂energy/∂x on every atom given
(ghosts included), ``edge_gradients`` [E, 3] = ∂energy/∂r_ij, ``virial`` [B, 3, 3] (the
symmetric part of -Σ r ⊗ ∂energy/∂r, eV, not divided by the volume), ``torque`` [B, 3] (its
antisymmetric part: the net torque of the broken symmetry), ``forces_rot_std_atoms`` [N] and
``forces_rot_std`` [B] (spread of the back-rotated per-rotation forces, eV/Å).

The same work in parts, for engines that spread rotations over threads:
``policy_rotations`` -> ``accumulate`` (a subset of the rotations) -> ``merge`` ->
``finalize``; ``energy_spread`` gives the spread after an MPI sum of per-rotation energies.
Rotation grids travel in the file as tables (bit-for-bit :func:`symbreak.rotations.grid`, i.e.
i-PI's grids); random rotations come from :func:`symbreak.policy.random_rotations`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .model import PET, atom_forces
from .policy import MAX_ROTATIONS, grid_size, lebedev_table, parse_policy, random_rotations

#: Version of the entry points above; engines refuse files of another version.
CONTRACT_VERSION = 2
#: Closer atoms are an input error (Å), in every engine.
MIN_DISTANCE = 1e-4
#: Rotated edges per model call when ``rotation_batch`` is 0 (automatic). On CPU larger
#: chunks are slower per rotation, not faster: the default-size PET keeps ≈ 45 kB of
#: activations per rotated edge for the backward pass, and once a chunk's working set
#: leaves the cache every layer streams it from memory (192 atoms, lebedev:3, 1 thread:
#: batched/separate = 0.89 with 2 rotations per call, 1.00 with 3, 1.15 with 6, 1.26 with
#: 11; benchmarks/averaging.py). 8192 edges ≈ 2 rotations of 64 H2O, ≈ 0.4 GB.
EDGE_BUDGET = 8_192
#: A model call with more edges than this takes its gradient in chunks of atoms of about
#: :data:`CHUNK_EDGES` edges, each chunk's forward recomputed in the backward pass
#: (:meth:`symbreak.model.PET.learned_energies_and_gradients`), so that memory grows with
#: the layer states (≈ 1 kB per edge), not with the activations (≈ 30 kB per edge): 98304
#: atoms of water (1.4M edges) in 6.8 GB. Recomputing costs ≈ 20 % more time.
CHUNK_ABOVE_EDGES = 400_000
#: On a GPU, memory alone decides: up to ≈ 30 GB of activations (not measured on a GPU).
CHUNK_ABOVE_EDGES_CUDA = 1_000_000
CHUNK_EDGES = 4_096


def carried_grids() -> list[tuple[str, int]]:
    """The grids an exported file carries: every Legendre and Lebedev grid within the default
    bound of :data:`~symbreak.policy.MAX_ROTATIONS` rotations (before inversion)."""
    grids = [("legendre", L) for L in range(2, 64) if grid_size("legendre", L) <= MAX_ROTATIONS]
    orders = lebedev_table()[0]
    grids += [("lebedev", L) for L in orders if 1 < L and grid_size("lebedev", L) <= MAX_ROTATIONS]
    return grids


class ContractModel(nn.Module):
    """What every exported model shares: policies, rotations, merging and diagnostics.

    A subclass wraps one kind of inner model and implements :meth:`accumulate` (the rotated
    evaluation and its gradients); everything else is written here once.
    """

    def __init__(self, species: list[int], cutoff: float, receptive_field: float):
        super().__init__()
        from ase.data import atomic_masses

        from .rotations import grid  # numpy reference grids (i-PI's), at export time only

        self.contract_version = CONTRACT_VERSION
        self.species = [int(z) for z in species]
        # Standard atomic masses (amu) of the species, for engines to check the masses of
        # their atom types against (a type mapped to the wrong element is silent garbage).
        self.masses = [float(atomic_masses[z]) for z in self.species]
        self.cutoff = float(cutoff)
        self.receptive_field = float(receptive_field)
        self.min_distance = MIN_DISTANCE
        self.edge_budget = EDGE_BUDGET
        lookup = torch.full((max(self.species) + 1,), -1, dtype=torch.int64)
        lookup[torch.tensor(self.species)] = torch.arange(len(self.species))
        self.register_buffer("species_index", lookup)
        rotations, weights, weights_inv = [], [], []
        index = {}  # "family:L" -> [first row, rotations] in the tables
        start = 0
        for family, order in carried_grids():
            r, w = grid(f"{family}:{order}")
            _, w_inv = grid(f"{family}:{order}", inversion=True)
            index[f"{family}:{order}"] = [start, len(w)]
            rotations.append(r)
            weights.append(w)
            weights_inv.append(w_inv)
            start += len(w)
        self.grid_index = index
        self.register_buffer("grid_rotations", torch.from_numpy(np.concatenate(rotations)))
        self.register_buffer("grid_weights", torch.from_numpy(np.concatenate(weights)))
        self.register_buffer("grid_weights_inv", torch.from_numpy(np.concatenate(weights_inv)))

    # -- policies and rotations ------------------------------------------------------------

    @torch.jit.export
    def parse_policy(self, text: str) -> tuple[str, int, bool, int, int]:
        """``(family, order, inversion, seed, max_rotations)``; ValueError on bad text."""
        return parse_policy(text)

    @torch.jit.export
    def policy_rotations(self, text: str, counter: int) -> tuple[Tensor, Tensor]:
        """Rotations [K, 3, 3] (r' = R r) and weights [K] (sum 1), float64, of a policy's
        call number ``counter`` (used by ``random`` only)."""
        family, order, inversion, seed, _ = parse_policy(text)
        if family == "random":
            if seed < 0:
                raise ValueError(
                    "averaging policy '" + text + "': the model file needs the seed of "
                    "'random' (+seed=N), so that every engine and rank draws the same rotations"
                )
            return random_rotations(seed, counter, inversion)
        if family == "none" or order == 1:
            rot = torch.eye(3, dtype=torch.float64).unsqueeze(0)
            w = torch.ones(1, dtype=torch.float64)
        else:
            key = family + ":" + str(order)
            if key not in self.grid_index:
                raise ValueError(
                    "averaging policy '" + text + "': this model file carries the grids of at "
                    "most 2000 rotations; larger ones are made by the Python engines only"
                )
            start, count = self.grid_index[key][0], self.grid_index[key][1]
            rot = self.grid_rotations[start : start + count]
            if inversion:  # i-PI's order: R_0, -R_0, R_1, -R_1, ...
                rot = torch.stack([rot, -rot], dim=1).reshape(-1, 3, 3)
                return rot, self.grid_weights_inv[2 * start : 2 * (start + count)]
            return rot, self.grid_weights[start : start + count]
        if inversion:
            return torch.cat([rot, -rot]), torch.full([2], 0.5, dtype=torch.float64)
        return rot, w

    # -- evaluation ---------------------------------------------------------------------------

    def _species(self, numbers: Tensor) -> Tensor:
        """Indices into ``self.species`` [N]; ValueError naming the first unknown atom."""
        safe = numbers.clamp(0, self.species_index.shape[0] - 1)
        index = torch.where(numbers == safe, self.species_index[safe], -1)
        bad = torch.nonzero(index < 0)
        if bad.shape[0] > 0:
            atom = int(bad[0, 0])
            raise ValueError(
                "atom " + str(atom) + " has atomic number " + str(int(numbers[atom]))
                + ", not a species of this model (it knows " + str(self.species) + ")"
            )  # fmt: skip
        return index

    def _vectors(
        self, positions: Tensor, cells: Tensor, structure: Tensor, centers: Tensor,
        neighbors: Tensor, shifts: Tensor,
    ) -> Tensor:  # fmt: skip
        """Edge vectors r_ij = x_j - x_i + S·h [E, 3] (float64, Å); refuses overlapping atoms."""
        positions = positions.to(torch.float64)
        cell_of_edge = cells.to(torch.float64)[structure[centers]]
        offset = torch.bmm(shifts.to(torch.float64).unsqueeze(1), cell_of_edge).squeeze(1)
        vectors = positions[neighbors] - positions[centers] + offset
        if vectors.shape[0] > 0:
            r2 = (vectors * vectors).sum(1)
            e = int(torch.argmin(r2))
            if float(r2[e]) < self.min_distance * self.min_distance:
                raise ValueError(
                    "atoms " + str(int(centers[e])) + " and " + str(int(neighbors[e]))
                    + " (cell shift " + str(int(shifts[e, 0])) + " " + str(int(shifts[e, 1]))
                    + " " + str(int(shifts[e, 2])) + ") are "
                    + str(float(r2[e]) ** 0.5) + " A apart: overlapping atoms"
                )  # fmt: skip
        return vectors

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
        """Weighted sums over the given rotations (a whole policy, or a group of its
        rotations whose weights are not renormalised): ``energy_per_rotation`` [B, K'],
        ``weights`` [K'], ``atomic_energies`` [N] (Σ_k w_k ε_ik); with gradients
        ``forces`` [N, 3], ``edge_gradients`` [E, 3], ``forces_sq`` [N] (Σ_k w_k |F_ik|²)
        and ``virial`` [B, 3, 3] (-Σ r ⊗ ∂E/∂r, not symmetrised). Only selected atoms'
        energies count. Implemented by each kind of model."""
        raise NotImplementedError("accumulate is implemented by the model's wrapper")

    @torch.jit.export
    def merge(self, parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """:meth:`accumulate` over disjoint groups of one policy's rotations, combined:
        per-rotation energies and weights concatenated in group order, sums added."""
        out: dict[str, Tensor] = {
            "energy_per_rotation": torch.cat([p["energy_per_rotation"] for p in parts], dim=1),
            "weights": torch.cat([p["weights"] for p in parts]),
        }
        for key in ["atomic_energies", "edge_gradients", "forces", "forces_sq", "virial"]:
            if key in parts[0]:
                total = parts[0][key]
                for p in parts[1:]:
                    total = total + p[key]
                out[key] = total
        return out

    @torch.jit.export
    def energy_spread(self, energy_per_rotation: Tensor, weights: Tensor) -> Tensor:
        """Weighted standard deviation over rotations of energies [B, K] (eV), [B]."""
        w = weights.to(torch.float64)
        mean = (energy_per_rotation * w[None, :]).sum(1)
        var = (w[None, :] * (energy_per_rotation - mean[:, None]) ** 2).sum(1)
        return var.clamp(min=0.0).sqrt()

    @torch.jit.export
    def finalize(
        self, raw: dict[str, Tensor], structure: Tensor, selected: Tensor
    ) -> dict[str, Tensor]:
        """The contract's outputs (module doc) from the sums of :meth:`accumulate`."""
        f64 = torch.float64
        energy_rot = raw["energy_per_rotation"]
        w = raw["weights"]
        out: dict[str, Tensor] = {
            "energy": (energy_rot * w[None, :]).sum(1),
            "energy_per_rotation": energy_rot,
            "weights": w,
            "energy_rot_std": self.energy_spread(energy_rot, w),
            "atomic_energies": raw["atomic_energies"],
        }
        if "forces" in raw:
            forces = raw["forces"]
            per_atom = (raw["forces_sq"] - (forces.to(f64) ** 2).sum(1)).clamp(min=0.0).sqrt()
            n_structures = energy_rot.shape[0]
            bucket = torch.where(selected, structure, torch.full_like(structure, n_structures))
            sq = torch.zeros(n_structures + 1, dtype=f64, device=forces.device)
            sq = sq.index_add(0, bucket, per_atom**2)[:n_structures]
            count = torch.zeros(n_structures + 1, dtype=f64, device=forces.device)
            count = count.index_add(0, bucket, torch.ones_like(per_atom))[:n_structures]
            virial = raw["virial"].to(f64)
            # A model that is not rotation invariant exerts a net torque on the system: the
            # antisymmetric part of -Σ r ⊗ ∂E/∂r. The stress is the derivative with respect
            # to *symmetric* strain: the symmetric part.
            torque = torch.stack(
                [
                    virial[:, 1, 2] - virial[:, 2, 1],
                    virial[:, 2, 0] - virial[:, 0, 2],
                    virial[:, 0, 1] - virial[:, 1, 0],
                ],
                dim=1,
            )
            out["forces"] = forces
            out["edge_gradients"] = raw["edge_gradients"]
            out["forces_rot_std_atoms"] = per_atom
            out["forces_rot_std"] = (sq / count.clamp(min=1.0)).sqrt()
            out["virial"] = 0.5 * (virial + virial.transpose(1, 2))
            out["torque"] = torque
        return out

    @torch.jit.export
    def compute(
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
        policy: str,
        counter: int,
        compute_gradients: bool = True,
        rotation_batch: int = 0,
    ) -> dict[str, Tensor]:
        """The one entry point of every engine (module doc)."""
        rotations, weights = self.policy_rotations(policy, counter)
        raw = self.accumulate(
            numbers, positions, cells, structure, centers, neighbors, shifts, reverse, selected,
            rotations, weights, compute_gradients, rotation_batch,
        )  # fmt: skip
        return self.finalize(raw, structure, selected)

    def forward(self, numbers: Tensor) -> Tensor:
        """Not an entry point (TorchScript needs a forward): the species indices [N]."""
        return self._species(numbers)


class AveragedModel(ContractModel):
    """The exported model: symbreak's PET behind the contract's entry points (module doc)."""

    def __init__(self, inner: PET):
        super().__init__(inner.species, inner.cutoff, inner.cutoff * len(inner.layers))
        self.inner = inner
        self.chunk_above_edges = CHUNK_ABOVE_EDGES
        self.chunk_above_edges_cuda = CHUNK_ABOVE_EDGES_CUDA
        self.chunk_edges = CHUNK_EDGES

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
        """See :meth:`ContractModel.accumulate`.

        Structures are independent: a call whose edges exceed ``edge_budget`` evaluates
        them in groups within it (whole structures), so that a batched request, such as
        the beads of a path-integral step, costs no more per edge than separate ones.
        """
        n_structures = cells.shape[0]
        n_atoms = numbers.shape[0]
        n_edges = centers.shape[0]
        groups: list[tuple[int, int]] = []
        if n_structures > 1 and n_edges > self.edge_budget:
            per_structure = torch.bincount(structure[centers], minlength=n_structures)
            first, count = 0, 0
            for s in range(n_structures):
                edges_s = int(per_structure[s])
                if s > first and count + edges_s > self.edge_budget:
                    groups.append((first, s))
                    first, count = s, 0
                count += edges_s
            groups.append((first, n_structures))
        if len(groups) <= 1:
            return self._accumulate_graph(
                numbers, positions, cells, structure, centers, neighbors, shifts, reverse,
                selected, rotations, weights, compute_gradients, rotation_batch,
            )  # fmt: skip

        out: dict[str, Tensor] = {}
        device = positions.device
        for first, stop in groups:
            in_group = (structure >= first) & (structure < stop)
            atoms = torch.nonzero(in_group).squeeze(1)
            edges = torch.nonzero(in_group[centers]).squeeze(1)
            new_atom = torch.full((n_atoms,), -1, dtype=torch.long, device=device)
            new_atom[atoms] = torch.arange(atoms.shape[0], device=device)
            new_edge = torch.full((n_edges,), -1, dtype=torch.long, device=device)
            new_edge[edges] = torch.arange(edges.shape[0], device=device)
            part = self._accumulate_graph(
                numbers[atoms], positions[atoms], cells[first:stop], structure[atoms] - first,
                new_atom[centers[edges]], new_atom[neighbors[edges]], shifts[edges],
                new_edge[reverse[edges]], selected[atoms], rotations, weights,
                compute_gradients, rotation_batch,
            )  # fmt: skip
            for key, value in part.items():
                if key == "weights":
                    out[key] = value
                    continue
                if key in ("energy_per_rotation", "virial"):
                    rows, size = torch.arange(first, stop, device=device), n_structures
                elif key == "edge_gradients":
                    rows, size = edges, n_edges
                else:  # per atom
                    rows, size = atoms, n_atoms
                if key not in out:
                    shape = [size] + list(value.shape[1:])
                    out[key] = torch.zeros(shape, dtype=value.dtype, device=device)
                out[key].index_copy_(0, rows, value)
        return out

    def _accumulate_graph(
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
        """:meth:`accumulate` of one graph, all its structures in each model call.

        Only the transformer is evaluated K times, on K rotated copies of the edges in
        batches of ``rotation_batch`` copies (0: as many as keep the rotated edges within
        ``edge_budget``): the invariant priors and
        the baseline give the same value for every copy and are evaluated once, weighted
        by Σ_k w_k. The rotated copies are the autograd leaf, so one backward pass gives
        every rotation's own gradient, back-rotated with R_kᵀ.
        """
        model = self.inner
        species = self._species(numbers)
        n_atoms = species.shape[0]
        n_edges = centers.shape[0]
        n_structures = cells.shape[0]
        n_rot = rotations.shape[0]
        dtype = model.radial_freq.dtype  # the parameters' precision
        device = positions.device
        f64 = torch.float64
        base = self._vectors(positions, cells, structure, centers, neighbors, shifts).to(dtype)
        rotations = rotations.to(device=device, dtype=dtype)  # drawn on the CPU
        weights = weights.to(device=device)
        weights_c = weights.to(dtype)
        chunk_above = self.chunk_above_edges_cuda if base.is_cuda else self.chunk_above_edges
        if rotation_batch <= 0:  # automatic: the rotated edges of a call within the budget
            rotation_batch = max(1, self.edge_budget // max(n_edges, 1))
        chunk = min(rotation_batch, n_rot)
        # Energies of unselected atoms (LAMMPS ghosts) land in an extra bucket and count
        # neither in the energies nor in their gradients.
        bucket = torch.where(selected, structure, torch.full_like(structure, n_structures))
        counted = selected.to(dtype)

        w_total = weights_c.sum()
        prior_leaf = base.clone().requires_grad_(compute_gradients)
        prior_eps = model.prior_energies(species, centers, neighbors, prior_leaf)
        prior_grad = torch.zeros(n_edges, 3, dtype=dtype, device=device)
        if compute_gradients and (model.use_pair or model.use_three_body):
            g_prior = torch.autograd.grad([(prior_eps * counted).sum()], [prior_leaf])[0]
            assert g_prior is not None
            prior_grad = g_prior
        prior_eps = prior_eps.detach()
        prior_forces = atom_forces(prior_grad, centers, neighbors, n_atoms)
        constant = model.baseline_energies(species) + prior_eps.to(f64)
        constant_b = torch.zeros(n_structures + 1, dtype=f64, device=device)
        constant_b = constant_b.index_add(0, bucket, constant)[:n_structures]

        energy_rot = torch.zeros(n_structures, n_rot, dtype=f64, device=device)
        atomic = w_total.to(f64) * constant
        grad = w_total * prior_grad
        forces = torch.zeros(n_atoms, 3, dtype=dtype, device=device)
        forces_sq = torch.zeros(n_atoms, dtype=f64, device=device)
        for start in range(0, n_rot, chunk):
            stop = min(start + chunk, n_rot)
            rot = rotations[start:stop]
            w = weights_c[start:stop]
            k = stop - start
            rotated = torch.einsum("kab,eb->kea", rot, base).contiguous()
            offsets_atoms = (torch.arange(k, device=device) * n_atoms)[:, None]
            offsets_edges = (torch.arange(k, device=device) * n_edges)[:, None]
            k_species = species.repeat(k)
            k_centers = (centers[None, :] + offsets_atoms).reshape(-1)
            k_neighbors = (neighbors[None, :] + offsets_atoms).reshape(-1)
            k_reverse = (reverse[None, :] + offsets_edges).reshape(-1)
            g = torch.empty(0, dtype=dtype, device=device)  # set when compute_gradients
            if compute_gradients and k * n_edges > chunk_above:
                # large graphs: in chunks of atoms, each chunk's forward recomputed in the
                # backward pass (PET.learned_energies_and_gradients)
                eps_flat, g_flat = model.learned_energies_and_gradients(
                    k_species, k_centers, k_neighbors, rotated.reshape(k * n_edges, 3),
                    k_reverse, (w[:, None] * counted[None, :]).reshape(-1), self.chunk_edges,
                )  # fmt: skip
                eps = eps_flat.view(k, n_atoms)
                g = g_flat.view(k, n_edges, 3)
            else:
                if compute_gradients:
                    rotated.requires_grad_(True)
                eps = model.learned_energies(
                    k_species, k_centers, k_neighbors, rotated.reshape(k * n_edges, 3), k_reverse
                ).view(k, n_atoms)
                if compute_gradients:
                    # the energies of the selected atoms only, each rotation weighted by w_k
                    total = (w[:, None] * counted[None, :] * eps).sum()
                    g_all = torch.autograd.grad([total], [rotated])[0]
                    assert g_all is not None
                    g = g_all
            e_k = torch.zeros(k, n_structures + 1, dtype=dtype, device=device)
            e_k = e_k.index_add(1, bucket, eps.detach())[:, :n_structures]
            energy_rot[:, start:stop] = e_k.t().to(f64)
            atomic = atomic + (w[:, None] * eps).sum(0).detach().to(f64)
            if compute_gradients:
                g_back = torch.einsum("kab,kea->keb", rot, g)  # R_kᵀ ∂E_k/∂(R_k r), × w_k
                grad = grad + g_back.sum(0)
                f_k = torch.zeros(k, n_atoms, 3, dtype=dtype, device=device)
                f_k = f_k.index_add(1, centers, g_back).index_add(1, neighbors, -g_back)
                f_k = f_k + w[:, None, None] * prior_forces  # the whole model's w_k F_k
                forces = forces + f_k.sum(0)
                safe_w = torch.where(w > 0, w, torch.ones_like(w))
                forces_sq = forces_sq + ((f_k.to(f64) ** 2).sum(2) / safe_w.to(f64)[:, None]).sum(0)
        out: dict[str, Tensor] = {
            "energy_per_rotation": energy_rot + constant_b[:, None],
            "weights": weights.to(f64),
            "atomic_energies": atomic,
        }
        if compute_gradients:
            virial = torch.zeros(n_structures, 3, 3, dtype=dtype, device=device)
            virial = virial.index_add(0, structure[centers], -(base[:, :, None] * grad[:, None, :]))
            out["edge_gradients"] = grad
            out["forces"] = forces
            out["forces_sq"] = forces_sq
            out["virial"] = virial
        return out
