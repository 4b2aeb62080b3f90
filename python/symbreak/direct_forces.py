"""A direct (non-conservative) force head, for training only.

Training on forces −∇E puts a gradient inside the loss, so every step pays a second-order
backward pass. With a direct head the step is one forward and one first-order backward
pass: the learned part's forces are read from the PET's last edge messages,

    F_i = −∇_i E_prior + s Σ_{e: centre i} MLP(m_e)          (eV/Å, s = PET.energy_scale),

while the invariant priors keep their exact −∇E (cheap, and physical where there are no
data). A run trains the backbone with the head first (``symbreak train --direct-forces``)
and then continues without it (``--resume`` without the flag): conservative fine-tuning,
after which ∇E takes over what the head learned. The head is never exported: every engine
takes forces as −∇E of the exported model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import MLP
from .model import PET, atom_forces


class DirectForceHead(nn.Module):
    """Forces [N, 3] read from a PET's last-layer edge messages (module doc)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.mlp = MLP(d_model, d_model, 4)
        # Zero-initialised, as the PET's energy readouts: it starts at the priors' forces.
        nn.init.zeros_(self.mlp.fc2.weight)
        nn.init.zeros_(self.mlp.fc2.bias)

    def forward(
        self,
        model: PET,
        species: Tensor,
        centers: Tensor,
        neighbors: Tensor,
        vectors: Tensor,
        reverse: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Atomic energies [N] (learned + priors, eV, without the baseline) and forces
        [N, 3] (eV/Å) of the graph (arguments as :meth:`PET.atomic_energies`)."""
        learned, message, order = model.learned_energies_and_messages(
            species, centers, neighbors, vectors, reverse
        )
        leaf = vectors.detach().requires_grad_(True)
        prior = model.prior_energies(species, centers, neighbors, leaf)
        n_atoms = species.shape[0]
        forces = torch.zeros(n_atoms, 3, dtype=vectors.dtype, device=vectors.device)
        if prior.requires_grad:  # the priors' exact forces (differentiable: they may train)
            (grad,) = torch.autograd.grad(prior.sum(), leaf, create_graph=True)
            forces = atom_forces(grad, centers, neighbors, n_atoms)
        # a central part along each edge and a free vector (the PET is not equivariant)
        out = self.mlp(message).to(vectors.dtype)
        r = vectors[order]
        unit = r / torch.linalg.vector_norm(r, dim=1, keepdim=True).clamp_min(1e-6)
        edge_forces = model.energy_scale.to(vectors.dtype) * (out[:, :1] * unit + out[:, 1:])
        forces = forces.index_add(0, centers[order], edge_forces)
        return learned + prior, forces
