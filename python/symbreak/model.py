"""A point-edge transformer (PET-like) that reads raw Cartesian edge vectors.

The model is a function of edges only: species of the atoms, pairs (i, j) and edge
vectors r_ij = x_j - x_i + S·h (Å). It never sees absolute positions or the cell, so
translation and permutation invariance are exact, and forces and virial follow from one
gradient with respect to the edge vectors. It is *not* rotationally equivariant: each
token embeds r_ij linearly, so rotating the input changes the output slightly. That is
the object of study of symbreak.

Architecture (per message-passing layer l = 1..L):

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

from .pair import PairPrior, n_basis
from .short_range import ShortRangeFloor
from .threebody import ThreeBodyPrior

# Buffers whose zeros mean "off", absent from files made before them: a file without them
# loads with them off (no wall, no floor) and gives the numbers it always gave.
OPTIONAL_BUFFERS = ("pair.wall_radius", "short_range.floor")


@dataclass
class PETConfig:
    """Hyperparameters. Lengths in Å, energies in eV."""

    species: list[int] = field(default_factory=lambda: [1, 8])  # atomic numbers
    cutoff: float = 3.5  # 4.0 in the study; 3.5 halves the cost of training here
    cutoff_width: float = 0.3  # smooth switching over [cutoff - width, cutoff]
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


def atom_forces(edge_grad: Tensor, centers: Tensor, neighbors: Tensor, n_atoms: int) -> Tensor:
    """Forces [N, 3] on atoms from dE/dr_ij [E, 3] of edge vectors r_ij = x_j - x_i (+ shift):
    +dE/dr_ij on the centre i, -dE/dr_ij on the neighbour j."""
    forces = torch.zeros(n_atoms, 3, dtype=edge_grad.dtype, device=edge_grad.device)
    return forces.index_add(0, centers, edge_grad).index_add(0, neighbors, -edge_grad)


def log_switch(r: Tensor, cutoff: float, width: float) -> Tensor:
    """Logarithm of a C-infinity switching function, [E].

    f(r) = 1 below cutoff - width and exp(1 - 1/(1 - x²)) with x = (r - cutoff + width)/width
    above: every derivative vanishes at both ends. Working with log f keeps the attention
    weights (softmax(score + log f)) free of f'/f factors. x is capped just below 1, where
    f is already 0 to machine precision, so nothing is infinite.
    """
    x = ((r - (cutoff - width)) / width).clamp(0.0, 0.9999)
    return 1.0 - 1.0 / (1.0 - x * x)


class MLP(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.nn.functional.silu(self.fc1(x)))


class CutoffAttentionBlock(nn.Module):
    """Pre-norm transformer block over the tokens of each atom.

    Tokens are packed, ``x`` [P, d] (P = atoms + edges, no padding), so the per-token
    layers (norms, projections, feed-forward: most of the work) never touch padding;
    only the attention itself runs on the padded [A, T] layout, where packed token p sits
    at ``slots[p]``. ``log_weight`` [A, T] is added to the attention scores of each key
    token: log f_c for neighbours, 0 for the central token, -inf for padding. The
    attention weight of a neighbour is thus multiplied by f_c and renormalised (PET's
    cutoff attention); the central token always has weight 1, so the normaliser is > 0.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = MLP(d_model, d_ff, d_model)

    def forward(self, x: Tensor, log_weight: Tensor, slots: Tensor) -> Tensor:
        a, t = log_weight.shape
        d = x.shape[1]
        qkv = self.qkv(self.norm1(x))
        padded = torch.zeros(a * t, 3 * d, dtype=x.dtype, device=x.device)
        padded = padded.index_copy(0, slots, qkv).view(a, t, 3, self.n_heads, self.d_head)
        padded = padded.permute(2, 0, 3, 1, 4)  # [3, A, H, T, dh]
        q, k, v = padded[0], padded[1], padded[2]
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.d_head))
        w = torch.softmax(scores + log_weight[:, None, None, :], dim=-1)
        h = torch.matmul(w, v).transpose(1, 2).reshape(a * t, d)[slots]
        x = x + self.out(h)
        return x + self.ff(self.norm2(x))


class MessagePassingLayer(nn.Module):
    def __init__(self, cfg: PETConfig, first: bool):
        super().__init__()
        d = cfg.d_model
        n_species = len(cfg.species)
        self.first = first
        self.geometry = MLP(3 + cfg.n_radial, d, d)
        self.neighbor_species = nn.Embedding(n_species, d)
        self.central_species = nn.Embedding(n_species, d)
        self.mix = nn.Linear(2 * d if first else 3 * d, d)
        self.node_in = nn.Linear(d, d)
        self.blocks = nn.ModuleList(
            [
                CutoffAttentionBlock(d, cfg.n_heads, cfg.d_ff)
                for _ in range(cfg.n_transformer_layers)
            ]
        )
        self.norm_out = nn.LayerNorm(d)
        self.head_central = MLP(d, d, 1)
        self.spline_readout = cfg.edge_readout == "spline"
        if cfg.edge_readout not in ("spline", "cutoff"):
            raise ValueError(f"edge_readout must be 'spline' or 'cutoff', not {cfg.edge_readout!r}")
        n_out = n_basis(cfg.pair_r_min, cfg.cutoff, cfg.pair_spacing) if self.spline_readout else 1
        self.head_edge = MLP(d, d, n_out)
        # Zero-initialised readouts: training starts from the baseline energy, with no
        # huge random forces to unlearn first.
        for head in (self.head_central, self.head_edge):
            nn.init.zeros_(head.fc2.weight)
            nn.init.zeros_(head.fc2.bias)


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
        """Bessel-like radial functions sin(nπ r/r_c)/(r/r_c), [E, n_radial]."""
        x = (r / self.cutoff)[:, None]
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
        n_atoms = species.shape[0]
        n_edges = centers.shape[0]
        dtype = vectors.dtype
        # No contact shorter than the data's: the wall of the pair prior is not undone here.
        vectors = self.short_range.vectors(species, centers, neighbors, vectors)
        # Group edges by centre atom into a padded [N, M] layout (slot = rank within centre).
        centers_sorted, order = torch.sort(centers, stable=True)
        counts = torch.bincount(centers, minlength=n_atoms)
        max_neighbors = int(counts.max()) if n_edges > 0 else 0
        first_edge = torch.cumsum(counts, 0) - counts
        slot = torch.arange(n_edges, device=centers.device) - first_edge[centers_sorted]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n_edges, device=centers.device)
        flat = centers_sorted * (max_neighbors + 1) + slot + 1  # +1: slot 0 is central token
        n_tokens = max_neighbors + 1

        r = torch.linalg.vector_norm(vectors, dim=1)
        log_fc = log_switch(r, self.cutoff, self.cutoff_width)
        geom_in = torch.cat([vectors / self.cutoff, self.radial_basis(r)], dim=1)[order]
        log_fc_sorted = log_fc[order]
        fc_sorted = torch.exp(log_fc_sorted)
        token_log_weight = torch.full(
            (n_atoms * n_tokens,), float("-inf"), dtype=dtype, device=vectors.device
        )
        token_log_weight[flat] = log_fc_sorted
        token_log_weight = token_log_weight.view(n_atoms, n_tokens)
        token_log_weight[:, 0] = 0.0
        nbr_species = species[neighbors[order]]
        reverse_sorted = rank[reverse[order]]  # reverse edge, in sorted numbering
        # Token slots: central token of atom a at a * n_tokens, then its edges.
        slots = torch.cat([torch.arange(n_atoms, device=vectors.device) * n_tokens, flat])

        # Edge readout basis: the pair spline's four local B-splines of each (sorted) edge.
        r_sorted = r[order]
        spline_interval, spline_values = self.pair.local_basis(r_sorted)
        spline_columns = spline_interval[:, None] + torch.arange(4, device=vectors.device)

        energy = torch.zeros(n_atoms, dtype=dtype, device=vectors.device)
        node = torch.zeros(n_atoms, self.d_model, dtype=dtype, device=vectors.device)
        message = torch.zeros(n_edges, self.d_model, dtype=dtype, device=vectors.device)
        for layer in self.layers:
            parts = [layer.geometry(geom_in), layer.neighbor_species(nbr_species)]
            if not layer.first:
                parts.append(message[reverse_sorted])
            edge_tokens = layer.mix(torch.cat(parts, dim=1))
            central = layer.central_species(species)
            if not layer.first:
                central = central + layer.node_in(node)
            # Packed tokens: the central token of each atom, then its edges (sorted).
            tokens = torch.cat([central, edge_tokens], dim=0)
            for block in layer.blocks:
                tokens = block(tokens, token_log_weight, slots)
            tokens = layer.norm_out(tokens)
            node = tokens[:n_atoms]
            message = tokens[n_atoms:]
            head = layer.head_edge(message)
            if layer.spline_readout:
                # Coefficients padded by three zeros each side, as in PairPrior.
                coef = torch.nn.functional.pad(head, (3, 3))
                e_edge = (coef.gather(1, spline_columns) * spline_values).sum(1)
            else:
                e_edge = head.squeeze(1) * fc_sorted
            energy = energy + layer.head_central(node).squeeze(1)
            energy = energy.index_add(0, centers_sorted, e_edge)
        return self.energy_scale.to(dtype) * energy


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
