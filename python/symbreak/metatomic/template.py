"""The scripted wrapper without a model: how C++ engines serve a raw metatomic file.

The LAMMPS plugin cannot script :class:`~symbreak.metatomic.averaged.MetatomicAveraged`
(scripting is Python). It loads instead this template, written once when symbreak is built
(``symbreak/lib/metatomic_template.pt``, by the same torch and metatomic as the plugin): the
wrapper scripted around :class:`Placeholder`. Its ``model`` attribute has the interface type
:class:`~symbreak.metatomic.averaged.Atomistic`, so the plugin can set it to the loaded
``AtomisticModel`` and call ``configure("energy")``, which reads species, cutoffs,
neighbour lists, precision and units from the model, as the Python wrapper does at
construction. One wrapper, one set of physics, for every engine.

Usage (the build runs it): ``python -m symbreak.metatomic.template OUTPUT.pt``.
"""

import json
import sys
from pathlib import Path
from typing import Dict, List  # noqa: UP035 (TorchScript interfaces need these)

import torch
from metatensor.torch import TensorMap
from metatomic.torch import (
    ModelCapabilities,
    ModelEvaluationOptions,
    ModelOutput,
    NeighborListOptions,
    System,
)

from ..contract import CONTRACT_VERSION
from .averaged import MetatomicAveraged

#: Extra file of the template (and of no model file): what it is, for which contract.
TEMPLATE_MARKER = "symbreak-metatomic-template"


class Placeholder(torch.nn.Module):
    """Stands in for the model in the template: one species (H), no neighbour list, and a
    forward that refuses to run (the template is never evaluated before its model is set)."""

    def forward(
        self,
        systems: List[System],  # noqa: UP006
        options: ModelEvaluationOptions,
        check_consistency: bool,
    ) -> Dict[str, TensorMap]:  # noqa: UP006
        raise RuntimeError("the metatomic template has no model: set .model, then configure()")

    @torch.jit.export
    def capabilities(self) -> ModelCapabilities:
        return ModelCapabilities(
            outputs={"energy": ModelOutput(unit="eV", sample_kind="atom")},
            atomic_types=[1],
            interaction_range=1.0,
            length_unit="angstrom",
            supported_devices=["cpu"],
            dtype="float64",
        )

    @torch.jit.export
    def requested_neighbor_lists(self) -> List[NeighborListOptions]:  # noqa: UP006
        return [NeighborListOptions(cutoff=1.0, full_list=True, strict=True)]

    @torch.jit.export
    def requested_inputs(self, use_new_names: bool = False) -> Dict[str, ModelOutput]:  # noqa: UP006
        return {}


def write_template(path: str | Path) -> Path:
    """Script the wrapper around :class:`Placeholder` and save it to ``path``."""
    path = Path(path)
    module = torch.jit.script(MetatomicAveraged(Placeholder()).eval())
    marker = {"contract": CONTRACT_VERSION, "torch_version": torch.__version__.split("+")[0]}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(module, str(path), _extra_files={TEMPLATE_MARKER: json.dumps(marker)})
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m symbreak.metatomic.template OUTPUT.pt")
    print(f"wrote {write_template(sys.argv[1])}")
