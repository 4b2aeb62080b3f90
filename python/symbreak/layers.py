"""The layers of symbreak's PET (:mod:`symbreak.model`): the cutoff function, the
transformer block over the tokens of each atom, and one message-passing layer.

Shapes: A atoms, E edges (sorted by centre), d = ``d_model``; lengths in Å, energies in eV
(before the model's ``energy_scale``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .pair import n_basis

if TYPE_CHECKING:
    from .model import PETConfig


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
        # the spline grid of the pair prior, up to the transformer's cutoff
        learned = cfg.transformer_cutoff()
        n_out = n_basis(cfg.pair_r_min, learned, cfg.pair_spacing) if self.spline_readout else 1
        self.head_edge = MLP(d, d, n_out)
        # Zero-initialised readouts: training starts from the baseline energy, with no
        # huge random forces to unlearn first.
        for head in (self.head_central, self.head_edge):
            nn.init.zeros_(head.fc2.weight)
            nn.init.zeros_(head.fc2.bias)

    def forward(
        self,
        species: Tensor,
        edges: dict[str, Tensor],
        tokens: dict[str, Tensor],
        node: Tensor,
        reverse_message: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """This layer over A atoms and their (sorted) edges: new node
        states [A, d], edge messages [E, d] and the layer's atomic energies [A] (before
        ``energy_scale``), from the previous layer's node states [A, d] and the messages
        of the reverse edges [E, d] (both unused by the first layer)."""
        parts = [self.geometry(edges["geometry"]), self.neighbor_species(edges["species"])]
        if not self.first:
            parts.append(reverse_message)
        edge_tokens = self.mix(torch.cat(parts, dim=1))
        central = self.central_species(species)
        if not self.first:
            central = central + self.node_in(node)
        n_atoms = species.shape[0]
        # Packed tokens: the central token of each atom, then its edges (sorted).
        x = torch.cat([central, edge_tokens], dim=0)
        for block in self.blocks:
            x = block(x, tokens["log_weight"], tokens["slots"])
        x = self.norm_out(x)
        node = x[:n_atoms]
        message = x[n_atoms:]
        head = self.head_edge(message)
        if self.spline_readout:
            # Coefficients padded by three zeros each side, as in PairPrior.
            coef = torch.nn.functional.pad(head, (3, 3))
            e_edge = (coef.gather(1, edges["spline_columns"]) * edges["spline_values"]).sum(1)
        else:
            e_edge = head.squeeze(1) * edges["fc"]
        # in the dtype of the edge vectors, also where autocast ran the heads in bfloat16
        dtype = edges["geometry"].dtype
        energy = self.head_central(node).squeeze(1).to(dtype)
        return node, message, energy.index_add(0, edges["centers"], e_edge.to(dtype))
