"""A point-edge transformer (PET-like) that reads raw Cartesian edge vectors.

The model is a function of edges only: species of the atoms, pairs (i, j) and edge
vectors r_ij = x_j - x_i + S·h (Å). It never sees absolute positions or the cell, so
translation and permutation invariance are exact, and forces and virial follow from one
gradient with respect to the edge vectors. It is *not* rotationally equivariant: each
token embeds r_ij linearly, so rotating the input changes the output slightly. That is
the object of study of symbreak.

Architecture (per message-passing layer l = 1..L, :mod:`symbreak.layers`):

* for each centre atom i, one token per neighbour j: an MLP of (r_ij / r_c, radial basis
  of |r_ij|), an embedding of the species of j and, for l > 1, the message that
  arrived from the reverse edge (j -> i) in layer l - 1, mixed by a linear layer;
* one central token per atom: an embedding of its species (+ its state from l - 1);
* T pre-norm transformer blocks over the tokens of each atom, the attention weight of
  neighbour j multiplied by a smooth cutoff f_c(r_ij) and renormalised (so energies are
  continuous as atoms cross the cutoff);
* readout: atomic energy += MLP(central token) + Σ_j e_ij, where the edge token gives
  the coefficients of a radial B-spline basis, e_ij = Σ_n c_n(token) B_n(|r_ij|)
  ("spline" readout); plus ½ φ(|r_ij|) of the pair prior and, optionally, the angular
  three-body prior of atom i (:mod:`symbreak.threebody`);
* short range (:mod:`symbreak.short_range`): below the training data's shortest distance
  of a species pair the pair prior is a repulsive wall, and the transformer and the
  three-body prior read the edge's length through a floor, so they cannot undo it;
  PET's own readout, e_ij = f_c(r_ij) MLP(token), remains as ``edge_readout="cutoff"``.

The radial pair prior φ (:mod:`symbreak.pair`) is a cubic spline per species pair fitted by
least squares before training: it carries the stiff radial part of the energy (the O–H
stretch), which a network of raw coordinates learns only after many steps. The B-spline
readout gives the transformer the same stiff radial functions, modulated by each edge's
environment (e.g. an O–H bond softened by a hydrogen bond). The prior is invariant; every
token still reads raw Cartesian vectors, so the model is not equivariant.

Rotational averaging, gradients and diagnostics are not here: the exported file wraps the
PET in :class:`symbreak.contract.AveragedModel`, which evaluates K rotated copies of the
edges through :meth:`PET.learned_energies` in batched calls and the invariant
:meth:`PET.prior_energies` once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .layers import MessagePassingLayer, log_switch
from .pair import PairPrior, local_cubic_basis, locate, n_basis
from .short_range import ShortRangeFloor
from .threebody import ThreeBodyPrior

#: Edges per chunk of atoms in each layer of PET.learned_energies and in the priors.
#: Small tensors are served from the allocator's free lists and stay near the cache; a
#: tensor over the whole graph is mapped afresh by glibc at every call once it exceeds
#: 32 MiB. Water, 1 thread, energy + forces: 12288 atoms took 1980 µs per atom over the
#: whole graph and 420–520 in chunks, as 192 atoms take (benchmarks/model.py).
LAYER_CHUNK_EDGES = 4_096
#: The same on a CUDA device, where 0 (the whole graph at once) is the choice: chunks sized
#: for a CPU cache multiply the kernel launches (on an H200 a 12,288-atom call launched
#: 103,000 kernels, busy 13 % of the call: docs/gpu_h200.md). Memory on very large graphs
#: is bounded by the contract's recomputing chunks (CHUNK_ABOVE_EDGES_CUDA).
LAYER_CHUNK_EDGES_CUDA = 0

# Buffers whose zeros mean "off", absent from files made before them: a file without them
# loads with them off (no wall, no floor) and gives the numbers it always gave.
OPTIONAL_BUFFERS = ("pair.wall_radius", "short_range.floor")


@dataclass
class PETConfig:
    """Hyperparameters. Lengths in Å, energies in eV."""

    species: list[int] = field(default_factory=lambda: [1, 8])  # atomic numbers
    cutoff: float = 3.5  # 4.0 in the study; 3.5 halves the cost of training here
    cutoff_width: float = 0.3  # smooth switching over [cutoff - width, cutoff]
    # The transformer's own cutoff (Å, at most `cutoff`; 0: `cutoff`). It reads only the
    # edges shorter than this, the invariant priors read all of them: the priors get the
    # study's 4.0 Å with a transformer trained at 3.5 Å (its weights unchanged).
    learned_cutoff: float = 0.0
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 128
    n_mp_layers: int = 3
    n_transformer_layers: int = 2
    n_radial: int = 8
    # Radial pair prior (symbreak.pair): species-pair cubic splines on [pair_r_min, cutoff]
    # with knots every pair_spacing Å, fitted by least squares before training.
    pair_prior: bool = True
    pair_r_min: float = 0.5
    pair_spacing: float = 0.1
    # Edge readout: "spline" (each edge token gives coefficients of the pair spline's
    # basis, e_ij = Σ_n c_n(token) B_n(r_ij)) or "cutoff"
    # (e_ij = MLP(token) f_c(r_ij), PET's).
    edge_readout: str = "spline"
    # Invariant three-body prior (symbreak.threebody): angular splines over the pairs of
    # neighbours of each atom within three_body_cutoff (≤ cutoff), radial knots every
    # three_body_spacing Å, Legendre polynomials up to three_body_lmax; fitted by least
    # squares to a trained model's residual (`symbreak train --resume --fit-three-body`;
    # water: test force MAE 148 -> 108 meV/Å), or with it on from the start, to the pair
    # prior's (284 -> 118 meV/Å before any step). Off by default: on top of both priors
    # from scratch the PET did not learn in 20 epochs (train force RMSE flat).
    three_body: bool = False
    three_body_cutoff: float = 3.5
    three_body_spacing: float = 0.5
    three_body_lmax: int = 4

    def to_dict(self) -> dict:
        return asdict(self)

    def transformer_cutoff(self) -> float:
        """The cutoff (Å) the transformer reads: ``learned_cutoff``, or ``cutoff`` if 0;
        ValueError if it is outside (cutoff_width, cutoff]."""
        value = float(self.learned_cutoff) if self.learned_cutoff > 0 else float(self.cutoff)
        if not self.cutoff_width < value <= self.cutoff:
            raise ValueError(
                f"learned_cutoff {value} Å must lie in (cutoff_width, cutoff] = "
                f"({self.cutoff_width}, {self.cutoff}] Å"
            )
        return value


def atom_forces(edge_grad: Tensor, centers: Tensor, neighbors: Tensor, n_atoms: int) -> Tensor:
    """Forces [N, 3] on atoms from dE/dr_ij [E, 3] of edge vectors r_ij = x_j - x_i (+ shift):
    +dE/dr_ij on the centre i, -dE/dr_ij on the neighbour j."""
    forces = torch.zeros(n_atoms, 3, dtype=edge_grad.dtype, device=edge_grad.device)
    return forces.index_add(0, centers, edge_grad).index_add(0, neighbors, -edge_grad)


class PET(nn.Module):
    """Point-edge transformer. See the module docstring for the architecture.

    All tensors of one call may hold several structures (and several rotated copies of
    each): atoms are concatenated, ``structure`` [N] says which structure each atom
    energy is summed into.
    """

    def __init__(self, cfg: PETConfig):
        super().__init__()
        self.cutoff = float(cfg.cutoff)
        self.cutoff_width = float(cfg.cutoff_width)
        self.learned_cutoff = cfg.transformer_cutoff()
        # the edge readout's spline grid: the pair prior's, up to the learned cutoff
        self.learned_spline_n = n_basis(cfg.pair_r_min, self.learned_cutoff, cfg.pair_spacing)
        self.n_radial = int(cfg.n_radial)
        self.d_model = int(cfg.d_model)
        self.species = list(cfg.species)
        self.layers = nn.ModuleList(
            [MessagePassingLayer(cfg, first=(k == 0)) for k in range(cfg.n_mp_layers)]
        )
        # Per-species energy baseline (eV/atom) and output scale (eV); set from data.
        self.register_buffer("baseline", torch.zeros(len(cfg.species), dtype=torch.float64))
        self.register_buffer("energy_scale", torch.ones((), dtype=torch.float64))
        self.register_buffer("radial_freq", torch.arange(1, cfg.n_radial + 1) * math.pi)
        # learned_energies runs each layer in chunks of atoms of about this many edges
        # (0: the whole graph at once); the numbers do not depend on it.
        self.layer_chunk_edges = LAYER_CHUNK_EDGES
        self.layer_chunk_edges_cuda = LAYER_CHUNK_EDGES_CUDA
        self.use_pair = bool(cfg.pair_prior)
        self.pair = PairPrior(len(cfg.species), cfg.cutoff, cfg.pair_r_min, cfg.pair_spacing)
        # Below the data's shortest distance of each species pair the transformer and the
        # three-body prior read a floored length (symbreak.short_range); set from the data.
        self.short_range = ShortRangeFloor(len(cfg.species))
        self.use_three_body = bool(cfg.three_body)
        if cfg.three_body_cutoff > cfg.cutoff:
            raise ValueError(
                f"three_body_cutoff {cfg.three_body_cutoff} Å exceeds the model's cutoff "
                f"{cfg.cutoff} Å (the model sees no edges beyond it)"
            )
        # Without the term: no channels, no parameters (the attribute must exist for
        # TorchScript).
        self.three_body = ThreeBodyPrior(
            len(cfg.species) if cfg.three_body else 0,
            cfg.three_body_cutoff,
            cfg.pair_r_min,
            cfg.three_body_spacing,
            cfg.three_body_lmax,
        )

    # -- core: atomic energies from edges ----------------------------------------------

    def radial_basis(self, r: Tensor) -> Tensor:
        """Bessel-like radial functions sin(nπ r/r_c)/(r/r_c), [E, n_radial], r_c the
        learned cutoff."""
        x = (r / self.learned_cutoff)[:, None]
        return torch.sin(self.radial_freq.to(r.dtype) * x) / x

    @torch.jit.export
    def baseline_energies(self, species: Tensor) -> Tensor:
        """Per-species reference energies [N] (eV, float64: absolute energies of large
        systems do not fit in float32)."""
        return self.baseline[species].to(torch.float64)

    @torch.jit.export
    def atomic_energies(
        self, species: Tensor, centers: Tensor, neighbors: Tensor, vectors: Tensor, reverse: Tensor
    ) -> Tensor:
        """Atomic interaction energies [N] (eV, in the dtype of ``vectors``; the total
        atomic energy adds :meth:`baseline_energies`) from species indices [N], edges
        ``centers``/``neighbors`` [E] (full list: every (i, j) has its reverse) and edge
        vectors [E, 3] (Å). ``reverse`` [E] maps edge (i, j, S) to (j, i, -S).

        The sum of :meth:`learned_energies` (the transformer, not rotation invariant) and
        :meth:`prior_energies` (the invariant pair and three-body priors).
        """
        return self.learned_energies(
            species, centers, neighbors, vectors, reverse
        ) + self.prior_energies(species, centers, neighbors, vectors)

    @torch.jit.export
    def prior_energies(
        self, species: Tensor, centers: Tensor, neighbors: Tensor, vectors: Tensor
    ) -> Tensor:
        """Atomic energies [N] (eV, dtype of ``vectors``) of the invariant priors: ½ φ(r_ij)
        per edge (full edge list: each pair twice, half to each atom) and the three-body
        term; zeros if the model has neither."""
        n_edges = centers.shape[0]
        chunk = self._layer_chunk_edges(vectors)
        if chunk <= 0 or n_edges <= chunk:
            return self._prior_energies(species, centers, neighbors, vectors)
        # Both terms are sums over the edges of each centre: exact in chunks of centres,
        # and every tensor small (the three-body pairs grow as edges × neighbours).
        centers_sorted, order = torch.sort(centers, stable=True)
        counts = torch.bincount(centers, minlength=species.shape[0])
        sizes = [e1 - e0 for a0, a1, e0, e1 in self._chunks(counts, chunk)]
        vectors_c = torch.split(vectors[order], sizes)
        centers_c = torch.split(centers_sorted, sizes)
        neighbors_c = torch.split(neighbors[order], sizes)
        energy = torch.zeros(species.shape[0], dtype=vectors.dtype, device=vectors.device)
        for c in range(len(sizes)):
            energy = energy + self._prior_energies(
                species, centers_c[c], neighbors_c[c], vectors_c[c]
            )
        return energy

    def _prior_energies(
        self, species: Tensor, centers: Tensor, neighbors: Tensor, vectors: Tensor
    ) -> Tensor:
        """:meth:`prior_energies` of the centres of the edges given (all their edges)."""
        energy = torch.zeros(species.shape[0], dtype=vectors.dtype, device=vectors.device)
        if self.use_pair:
            r = torch.linalg.vector_norm(vectors, dim=1)
            pair_energy = self.pair.edge_energies(species, centers, neighbors, r)
            energy = energy.index_add(0, centers, 0.5 * pair_energy)
        if self.use_three_body:
            energy = energy + self.three_body.atomic_energies(
                species,
                centers,
                neighbors,
                vectors,
                self.short_range.floor,
                self.short_range.width,
            )
        return energy

    @torch.jit.export
    def learned_energies(
        self, species: Tensor, centers: Tensor, neighbors: Tensor, vectors: Tensor, reverse: Tensor
    ) -> Tensor:
        """The transformer's atomic energies [N] (eV, dtype of ``vectors``): the part of
        :meth:`atomic_energies` that reads raw Cartesian vectors (arguments as there)."""
        energy, _, _ = self.learned_energies_and_messages(
            species, centers, neighbors, vectors, reverse
        )
        return energy

    def learned_energies_and_messages(
        self, species: Tensor, centers: Tensor, neighbors: Tensor, vectors: Tensor, reverse: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`learned_energies` [N], the last layer's edge messages [E, d_model] and the
        order [E] they come in (message k belongs to edge ``order[k]``): what a direct force
        head (:mod:`symbreak.direct_forces`, training only) reads."""
        n_atoms = species.shape[0]
        kept, centers, neighbors, vectors, reverse = self._learned_edges(
            centers, neighbors, vectors, reverse
        )
        # No contact shorter than the data's: the wall of the pair prior is not undone here.
        vectors = self.short_range.vectors(species, centers, neighbors, vectors)
        order, centers_sorted, counts, slot, reverse_sorted = self._sorted_edges(
            centers, reverse, n_atoms
        )
        sorted_vectors = vectors[order]
        nbr_species = species[neighbors[order]]
        energy = torch.zeros(n_atoms, dtype=vectors.dtype, device=vectors.device)
        node = torch.zeros(n_atoms, self.d_model, dtype=vectors.dtype, device=vectors.device)
        message = torch.zeros(
            centers.shape[0], self.d_model, dtype=vectors.dtype, device=vectors.device
        )
        bounds = self._chunks(counts, self._layer_chunk_edges(vectors))
        if len(bounds) == 1:
            edges = self._edges(sorted_vectors, nbr_species, centers_sorted, slot)
            tokens = self._tokens(edges, counts)
            for layer in self.layers:
                # the first layer reads no messages: it gets the zeros ungathered
                reverse_message = message if layer.first else message[reverse_sorted]
                node, message, e = layer(species, edges, tokens, node, reverse_message)
                energy = energy + e
            return self.energy_scale.to(vectors.dtype) * energy, message, kept[order]
        # Each layer in chunks of atoms: every tensor stays small (served from the
        # allocator's free lists, cache-sized), the autograd graph is the same. Pieces
        # come from torch.split, whose backward is one concatenation (a slice's or a
        # gather's backward would write a zero-filled tensor of the whole graph per chunk).
        atom_sizes = [a1 - a0 for a0, a1, e0, e1 in bounds]
        edge_sizes = [e1 - e0 for a0, a1, e0, e1 in bounds]
        chunk_edges: list[dict[str, Tensor]] = []
        chunk_tokens: list[dict[str, Tensor]] = []
        species_c = torch.split(species, atom_sizes)
        vectors_c = torch.split(sorted_vectors, edge_sizes)
        nbr_species_c = torch.split(nbr_species, edge_sizes)
        slot_c = torch.split(slot, edge_sizes)
        centers_c = torch.split(centers_sorted, edge_sizes)
        counts_c = torch.split(counts, atom_sizes)
        for c in range(len(bounds)):
            edges = self._edges(
                vectors_c[c], nbr_species_c[c], centers_c[c] - bounds[c][0], slot_c[c]
            )
            chunk_edges.append(edges)
            chunk_tokens.append(self._tokens(edges, counts_c[c]))
        for layer in self.layers:
            node_c = torch.split(node, atom_sizes)
            # the first layer reads no messages: it gets the node pieces, unused
            reverse_c = node_c if layer.first else torch.split(message[reverse_sorted], edge_sizes)
            nodes: list[Tensor] = []
            messages: list[Tensor] = []
            energies: list[Tensor] = []
            for c in range(len(bounds)):
                n_c, m_c, e_c = layer(
                    species_c[c], chunk_edges[c], chunk_tokens[c], node_c[c], reverse_c[c]
                )
                nodes.append(n_c)
                messages.append(m_c)
                energies.append(e_c)
            node, message = torch.cat(nodes), torch.cat(messages)
            energy = energy + torch.cat(energies)
        return self.energy_scale.to(vectors.dtype) * energy, message, kept[order]

    def _layer_chunk_edges(self, vectors: Tensor) -> int:
        """Edges per chunk of the layers and priors on the device of ``vectors``."""
        return self.layer_chunk_edges_cuda if vectors.is_cuda else self.layer_chunk_edges

    def _chunks(self, counts: Tensor, chunk_edges: int) -> list[tuple[int, int, int, int]]:
        """Consecutive atoms (sorted edges) in chunks of about ``chunk_edges`` edges:
        (first atom, end atom, first edge, end edge) of each; one chunk if ``chunk_edges``
        is 0 or the graph is no larger."""
        n_atoms = counts.shape[0]
        n_edges = int(counts.sum())
        if chunk_edges <= 0 or n_edges <= chunk_edges:
            return [(0, n_atoms, 0, n_edges)]
        first_edge = torch.cumsum(counts, 0) - counts
        per_chunk = max(1, (chunk_edges * n_atoms) // n_edges)
        bounds: list[tuple[int, int, int, int]] = []
        for a0 in range(0, n_atoms, per_chunk):
            a1 = min(a0 + per_chunk, n_atoms)
            e1 = int(first_edge[a1]) if a1 < n_atoms else n_edges
            bounds.append((a0, a1, int(first_edge[a0]), e1))
        return bounds

    @torch.jit.export
    def learned_energies_and_gradients(
        self,
        species: Tensor,
        centers: Tensor,
        neighbors: Tensor,
        vectors: Tensor,
        reverse: Tensor,
        energy_weights: Tensor,
        chunk_edges: int,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`learned_energies` [N] and the gradient [E, 3] of Σ_i w_i ε_i with respect
        to ``vectors`` (``energy_weights`` w [N]), in memory that does not grow with the
        activations: atoms are taken in chunks of about ``chunk_edges`` edges; the forward
        pass keeps only each layer's node and edge states (L (N + E) d numbers) and the
        backward pass recomputes one chunk of one layer at a time. Each chunk's working set
        then stays in the cache, at the price of a second forward pass of all layers but
        the last."""
        n_atoms = species.shape[0]
        n_all_edges = centers.shape[0]
        kept, centers, neighbors, vectors, reverse = self._learned_edges(
            centers, neighbors, vectors, reverse
        )
        n_edges = centers.shape[0]
        dtype = vectors.dtype
        device = vectors.device
        leaf = vectors.detach().requires_grad_(True)
        floored = self.short_range.vectors(species, centers, neighbors, leaf)
        order, centers_sorted, counts, slot, reverse_sorted = self._sorted_edges(
            centers, reverse, n_atoms
        )
        sorted_vectors = floored[order].detach()
        nbr_species = species[neighbors[order]]
        bounds = self._chunks(counts, max(chunk_edges, 1))

        # forward: keep the inputs of every layer, no graph
        layer_nodes: list[Tensor] = []
        layer_messages: list[Tensor] = []
        energy = torch.zeros(n_atoms, dtype=dtype, device=device)
        node = torch.zeros(n_atoms, self.d_model, dtype=dtype, device=device)
        message = torch.zeros(n_edges, self.d_model, dtype=dtype, device=device)
        n_layers = len(self.layers)
        with torch.no_grad():
            for index, layer in enumerate(self.layers):
                layer_nodes.append(node)
                layer_messages.append(message)
                if index < n_layers - 1:  # the last layer runs once, with its gradient, below
                    next_node = torch.empty_like(node)
                    next_message = torch.empty_like(message)
                    for a0, a1, e0, e1 in bounds:
                        edges = self._edges(
                            sorted_vectors[e0:e1],
                            nbr_species[e0:e1],
                            centers_sorted[e0:e1] - a0,
                            slot[e0:e1],
                        )
                        n_c, m_c, e_c = layer(
                            species[a0:a1],
                            edges,
                            self._tokens(edges, counts[a0:a1]),
                            node[a0:a1],
                            node[a0:a1] if layer.first else message[reverse_sorted[e0:e1]],
                        )
                        next_node[a0:a1] = n_c
                        next_message[e0:e1] = m_c
                        energy[a0:a1] += e_c
                    node, message = next_node, next_message

        # backward, layer by layer from the last, each chunk's forward recomputed
        scale = self.energy_scale.to(dtype)
        seed = energy_weights.to(dtype) * scale
        grad_vectors = torch.zeros(n_edges, 3, dtype=dtype, device=device)
        grad_node = torch.zeros(n_atoms, self.d_model, dtype=dtype, device=device)
        grad_message = torch.zeros(n_edges, self.d_model, dtype=dtype, device=device)
        for index in range(n_layers - 1, -1, -1):
            node = layer_nodes[index]
            message = layer_messages[index]
            grad_node_in = torch.zeros_like(grad_node)
            grad_message_in = torch.zeros_like(grad_message)
            for k, mp_layer in enumerate(self.layers):  # TorchScript: no ModuleList[index]
                if k == index:
                    for a0, a1, e0, e1 in bounds:
                        v_c = sorted_vectors[e0:e1].clone().requires_grad_(True)
                        node_c = node[a0:a1].clone().requires_grad_(not mp_layer.first)
                        rev_c = node_c if mp_layer.first else message[reverse_sorted[e0:e1]]
                        rev_c.requires_grad_(not mp_layer.first)
                        edges = self._edges(
                            v_c, nbr_species[e0:e1], centers_sorted[e0:e1] - a0, slot[e0:e1]
                        )
                        n_out, m_out, e_out = mp_layer(
                            species[a0:a1], edges, self._tokens(edges, counts[a0:a1]),
                            node_c, rev_c,
                        )  # fmt: skip
                        inputs = [v_c] if mp_layer.first else [v_c, node_c, rev_c]
                        seeds: list[Tensor | None] = [
                            grad_node[a0:a1], grad_message[e0:e1], seed[a0:a1]
                        ]  # fmt: skip
                        grads = torch.autograd.grad([n_out, m_out, e_out], inputs, seeds)
                        if index == n_layers - 1:
                            energy[a0:a1] += e_out.detach()
                        g_v = grads[0]
                        assert g_v is not None
                        grad_vectors[e0:e1] += g_v
                        if not mp_layer.first:
                            g_node, g_rev = grads[1], grads[2]
                            assert g_node is not None and g_rev is not None
                            grad_node_in[a0:a1] = g_node
                            grad_message_in.index_add_(0, reverse_sorted[e0:e1], g_rev)
            grad_node, grad_message = grad_node_in, grad_message_in
        grad_floored = torch.zeros_like(grad_vectors).index_copy(0, order, grad_vectors)
        floor_seed: list[Tensor | None] = [grad_floored]
        grad = torch.autograd.grad([floored], [leaf], floor_seed)[0]
        assert grad is not None
        if n_edges < n_all_edges:  # edges beyond the learned cutoff: no gradient
            grad = torch.zeros(n_all_edges, 3, dtype=dtype, device=device).index_copy(0, kept, grad)
        return scale * energy, grad

    def _learned_edges(
        self, centers: Tensor, neighbors: Tensor, vectors: Tensor, reverse: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The edges the transformer reads (shorter than the learned cutoff): their indices
        ``kept`` [E'] into the full list, their centres, neighbours, vectors and reverse
        edges (numbered within the kept ones). All edges when the two cutoffs agree."""
        n_edges = centers.shape[0]
        if self.learned_cutoff >= self.cutoff:
            return (
                torch.arange(n_edges, device=centers.device),
                centers,
                neighbors,
                vectors,
                reverse,
            )
        r = torch.linalg.vector_norm(vectors.detach(), dim=1)
        kept = torch.nonzero(r < self.learned_cutoff).squeeze(1)
        # an edge and its reverse have the same length: both are kept or neither
        renumber = torch.full((n_edges,), -1, dtype=torch.long, device=centers.device)
        renumber[kept] = torch.arange(kept.shape[0], device=centers.device)
        return kept, centers[kept], neighbors[kept], vectors[kept], renumber[reverse[kept]]

    def _sorted_edges(
        self, centers: Tensor, reverse: Tensor, n_atoms: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Edges grouped by centre atom: ``order`` [E] (sorted position -> edge), sorted
        centres [E], neighbour counts [N], each edge's rank within its centre [E], and the
        reverse edge of each sorted edge in sorted numbering [E]."""
        n_edges = centers.shape[0]
        centers_sorted, order = torch.sort(centers, stable=True)
        counts = torch.bincount(centers, minlength=n_atoms)
        first_edge = torch.cumsum(counts, 0) - counts
        slot = torch.arange(n_edges, device=centers.device) - first_edge[centers_sorted]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n_edges, device=centers.device)
        return order, centers_sorted, counts, slot, rank[reverse[order]]

    def _edges(
        self, vectors: Tensor, nbr_species: Tensor, centers: Tensor, slot: Tensor
    ) -> dict[str, Tensor]:
        """What the layers read of each (sorted) edge, from its vector [E, 3] (Å): geometry
        input, log of the cutoff function, the edge readout's four B-splines, and the
        centre (0-based among the atoms evaluated) and rank of the edge."""
        r = torch.linalg.vector_norm(vectors, dim=1)
        log_fc = log_switch(r, self.learned_cutoff, self.cutoff_width)
        spline_interval, s = locate(r, self.pair.r_min, self.pair.spacing, self.learned_spline_n)
        spline_values = local_cubic_basis(s)[0]
        return {
            "geometry": torch.cat([vectors / self.learned_cutoff, self.radial_basis(r)], dim=1),
            "species": nbr_species,
            "log_fc": log_fc,
            "fc": torch.exp(log_fc),
            "spline_columns": spline_interval[:, None] + torch.arange(4, device=vectors.device),
            "spline_values": spline_values,
            "centers": centers,
            "slot": slot,
        }

    def _tokens(self, edges: dict[str, Tensor], counts: Tensor) -> dict[str, Tensor]:
        """The padded [A, T] attention layout of A atoms with ``counts`` [A] edges each:
        T = 1 + max count, the central token of atom a at a T, then its edges; the log
        attention weight of each slot (log f_c, 0 for the central token, -inf for
        padding) and the slot of each packed token (atoms, then edges)."""
        n_atoms = counts.shape[0]
        n_tokens = (int(counts.max()) if edges["slot"].shape[0] > 0 else 0) + 1
        log_fc = edges["log_fc"]
        flat = edges["centers"] * n_tokens + edges["slot"] + 1  # +1: slot 0 is central
        log_weight = torch.full(
            (n_atoms * n_tokens,), float("-inf"), dtype=log_fc.dtype, device=log_fc.device
        )
        log_weight[flat] = log_fc
        log_weight = log_weight.view(n_atoms, n_tokens)
        log_weight[:, 0] = 0.0
        slots = torch.cat([torch.arange(n_atoms, device=log_fc.device) * n_tokens, flat])
        return {"log_weight": log_weight, "slots": slots}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
