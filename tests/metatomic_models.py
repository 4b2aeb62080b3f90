"""A small metatomic model that reads raw Cartesian neighbour vectors (not equivariant).

Built with metatomic's Python API for the tests of :mod:`symbreak.metatomic`: small, fast,
float32 or float64, deterministic (weights from a seeded generator). It requests two
neighbour lists, a full one (the non-equivariant many-body term) and a half one with a
smaller cutoff (an even pair term), so that both kinds of list are exercised. Units can be
chosen (e.g. nanometres and kJ/mol) to exercise the conversions of ``AtomisticModel``.

Energy of atom i (model units)::

    h_i = Σ_j fc(d_ij) tanh(W_{Zj} r_ij / s + b_{Zj})       (full list, raw vectors r_ij)
    ε_i = e0_{Zi} + v_{Zi} · tanh(h_i) + ½ Σ_{pairs ∋ i} fc2(d) (A e^{-d/s} + c (x² - z²)/s²)

where ``s`` is one ångström in model length units; the pair term is even in r, as a term of
a half list must be (a half list keeps either direction of each pair).
"""

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

#: Per-length-unit size of one ångström, for the units the tests use.
ANGSTROM = {"angstrom": 1.0, "nanometer": 0.1}


class RawVectorModel(torch.nn.Module):
    """The model above; ``cutoff``/``half_cutoff`` in ångström, ``species`` atomic numbers."""

    def __init__(
        self,
        species: list[int],
        cutoff: float = 3.0,
        half_cutoff: float = 2.5,
        features: int = 8,
        length_unit: str = "angstrom",
        dtype: torch.dtype = torch.float64,
        seed: int = 0,
        output: str = "energy",
    ):
        super().__init__()
        self.output = output
        scale = ANGSTROM[length_unit]
        self.scale = scale
        self.cutoff = cutoff * scale
        self.half_cutoff = half_cutoff * scale
        gen = torch.Generator().manual_seed(seed)
        n = len(species)
        lookup = torch.full((max(species) + 1,), -1, dtype=torch.int64)
        lookup[torch.tensor(species)] = torch.arange(n)
        self.register_buffer("lookup", lookup)
        self.weights = torch.nn.Parameter(torch.randn(n, features, 3, generator=gen).to(dtype))
        self.bias = torch.nn.Parameter(torch.randn(n, features, generator=gen).to(dtype))
        self.readout = torch.nn.Parameter(0.3 * torch.randn(n, features, generator=gen).to(dtype))
        self.e0 = torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype))
        self.pair = torch.nn.Parameter(torch.tensor([0.8, 0.05], dtype=dtype))
        self.full_options = NeighborListOptions(cutoff=self.cutoff, full_list=True, strict=True)
        self.half_options = NeighborListOptions(
            cutoff=self.half_cutoff, full_list=False, strict=False
        )

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:  # noqa: UP006
        return [self.full_options, self.half_options]

    def _fc(self, d: torch.Tensor, cutoff: float) -> torch.Tensor:
        return torch.where(d < cutoff, 0.5 * (torch.cos(torch.pi * d / cutoff) + 1.0), 0.0 * d)

    def forward(
        self,
        systems: List[System],  # noqa: UP006
        outputs: Dict[str, ModelOutput],  # noqa: UP006
        selected_atoms: Optional[Labels] = None,  # noqa: UP045
    ) -> Dict[str, TensorMap]:  # noqa: UP006
        if self.output not in outputs:
            return {}
        per_atom = outputs[self.output].sample_kind == "atom"
        values: List[torch.Tensor] = []  # noqa: UP006
        samples: List[torch.Tensor] = []  # noqa: UP006
        for s, system in enumerate(systems):
            kind = self.lookup[system.types.to(torch.int64)]
            n = kind.shape[0]
            full = system.get_neighbor_list(self.full_options)
            pairs = full.samples.values
            i = pairs[:, 0].to(torch.int64)
            j = pairs[:, 1].to(torch.int64)
            r = full.values.reshape(-1, 3)
            d = torch.linalg.vector_norm(r, dim=1)
            w = self.weights[kind[j]]  # [P, F, 3]
            phi = torch.tanh((w @ (r / self.scale).unsqueeze(-1)).squeeze(-1) + self.bias[kind[j]])
            h = torch.zeros(n, phi.shape[1], dtype=phi.dtype, device=phi.device)
            h = h.index_add(0, i, self._fc(d, self.cutoff)[:, None] * phi)
            eps = self.e0[kind] + (self.readout[kind] * torch.tanh(h)).sum(1)
            half = system.get_neighbor_list(self.half_options)
            hp = half.samples.values
            rh = half.values.reshape(-1, 3) / self.scale
            dh = torch.linalg.vector_norm(rh, dim=1)
            pair = self._fc(dh, self.half_cutoff / self.scale) * (
                self.pair[0] * torch.exp(-dh) + self.pair[1] * (rh[:, 0] ** 2 - rh[:, 2] ** 2)
            )
            eps = eps.index_add(0, hp[:, 0].to(torch.int64), 0.5 * pair)
            eps = eps.index_add(0, hp[:, 1].to(torch.int64), 0.5 * pair)
            atoms = torch.arange(n, device=eps.device)
            if selected_atoms is not None:
                chosen = selected_atoms.values
                atoms = chosen[chosen[:, 0] == s][:, 1].to(torch.int64)
                eps = eps[atoms]
            if per_atom:
                values.append(eps)
                samples.append(torch.stack([torch.full_like(atoms, s), atoms], dim=1))
            else:
                values.append(eps.sum().reshape(1))
                samples.append(torch.tensor([[s]], device=eps.device))
        names = ["system", "atom"] if per_atom else ["system"]
        block = TensorBlock(
            values=torch.cat(values).reshape(-1, 1),
            samples=Labels(names, torch.cat(samples).to(torch.int32)),
            components=[],
            properties=Labels(["energy"], torch.tensor([[0]], device=values[0].device)),
        )
        return {self.output: TensorMap(Labels(["_"], torch.tensor([[0]])), [block])}


class NeedsMasses(RawVectorModel):
    """The test model, also requesting the atoms' masses as an input (which symbreak's
    engines do not give)."""

    def requested_inputs(self) -> Dict[str, ModelOutput]:  # noqa: UP006
        return {"masses": ModelOutput(quantity="mass", unit="u", sample_kind="atom")}


def build_model(
    species: tuple[int, ...] = (1, 8),
    dtype: torch.dtype = torch.float64,
    length_unit: str = "angstrom",
    energy_unit: str = "eV",
    per_atom: bool = True,
    seed: int = 0,
    output: str = "energy",
    needs_masses: bool = False,
) -> AtomisticModel:
    """The test model wrapped in metatomic's ``AtomisticModel`` (eval mode); ``output``: the
    name of its energy output (a variant "energy/NAME" computes the same energy)."""
    kind = NeedsMasses if needs_masses else RawVectorModel
    inner = kind(list(species), length_unit=length_unit, dtype=dtype, seed=seed, output=output)
    capabilities = ModelCapabilities(
        outputs={
            output: ModelOutput(
                quantity="energy", unit=energy_unit, sample_kind="atom" if per_atom else "system"
            )
        },
        atomic_types=list(species),
        interaction_range=inner.cutoff,
        length_unit=length_unit,
        supported_devices=["cpu"],
        dtype="float64" if dtype == torch.float64 else "float32",
    )
    metadata = ModelMetadata(name="raw-vector test model", authors=["symbreak tests"])
    return AtomisticModel(inner.eval(), metadata, capabilities)


def save_model(path: str | Path, **kwargs) -> Path:
    """Build and save the test model to ``path`` (a metatomic ``.pt`` file)."""
    model = build_model(**kwargs)
    model.save(str(path))
    return Path(path)
