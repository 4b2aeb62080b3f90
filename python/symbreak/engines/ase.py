"""ASE calculator: a symbreak model, plain or rotationally averaged, inside ASE.

``SymbreakCalculator`` wraps an :class:`~symbreak.evaluator.Evaluator`; several calculators
can share one (one loaded model) while each keeps its own averaging policy, which
:meth:`SymbreakCalculator.set_average` changes between calls without reloading anything.

Properties (ASE units): ``energy`` and ``free_energy`` (eV, the same number), ``forces``
[N, 3] (eV/Å), ``energies`` [N] (eV, atomic energies, averaged like the total), ``stress``
[6] (eV/Å³, ASE's Voigt order xx, yy, zz, yz, xz, xy; ``-virial / V``, for 3D-periodic
cells only). ``calc.results`` also holds the diagnostics of the averaging:
``average`` (policy text), ``n_rotations``, ``energy_rot_std`` (eV), ``forces_rot_std``
(eV/Å, RMS over atoms), ``forces_rot_std_atoms`` [N] (eV/Å) and ``torque`` [3] (eV, net
torque Σ x × F that the symmetry breaking exerts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from ..evaluator import Evaluator, Structure, resolve_device
from ..export import LoadedModel
from ..rotations import AveragingPolicy

__all__ = ["SymbreakCalculator", "make_policy"]

_DIAGNOSTICS = (
    "average",
    "n_rotations",
    "energy_rot_std",
    "forces_rot_std",
    "forces_rot_std_atoms",
    "torque",
)


def make_policy(
    average: str | AveragingPolicy = "none", inversion: bool | None = None, seed: int | None = None
) -> AveragingPolicy:
    """Averaging policy from a spec (``"none"``, ``"random"``, ``"legendre:2"``,
    ``"lebedev:5+inv"``, ... or an :class:`AveragingPolicy`). ``inversion`` and ``seed``
    replace what the spec says when given (None keeps it), as everywhere in symbreak
    (:meth:`AveragingPolicy.with_options`)."""
    policy = average if isinstance(average, AveragingPolicy) else AveragingPolicy.parse(average)
    return policy.with_options(inversion, seed)


class SymbreakCalculator(Calculator):
    """ASE calculator for a symbreak model (see the module docstring for the results).

    ``model``: a shipped model name, a model file, a loaded model, or an
    :class:`Evaluator` to share (its ``rotation_batch`` and ``dtype`` are then used; giving
    different ones here is an error). ``average``/``inversion``/``seed``: the averaging
    policy (see :func:`make_policy`); ``"random"`` draws a new rotation at every
    calculation, from a generator seeded with ``seed``. ``rotation_batch``: rotations per
    model call (None: automatic); ``workers``: rotation groups evaluated in parallel
    threads (None: automatic, see :class:`Evaluator`). ``dtype``: torch.float32 or
    torch.float64 (None: the precision of the model file, float32 for the shipped models).
    ``extensions_directory``: a metatomic model's TorchScript extensions, if not installed.
    ``device``: where the model runs ("cpu", "cuda", "cuda:N"; see :class:`Evaluator`).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        model: str | Path | LoadedModel | Evaluator = "water-revpbe0d3",
        average: str | AveragingPolicy = "none",
        inversion: bool | None = None,
        seed: int | None = None,
        rotation_batch: int | None = None,
        dtype: torch.dtype | None = None,
        workers: int | None = None,
        extensions_directory: str | Path | None = None,
        device: str | torch.device | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.policy = make_policy(average, inversion, seed)  # bad policies fail here, first
        if isinstance(model, Evaluator):
            if dtype is not None and dtype != model.dtype:
                raise ValueError(f"dtype {dtype} differs from the shared Evaluator's {model.dtype}")
            if rotation_batch is not None and rotation_batch != model.rotation_batch:
                raise ValueError(
                    f"rotation_batch {rotation_batch} differs from the shared Evaluator's "
                    f"{model.rotation_batch}"
                )
            if workers is not None and workers != model.workers:
                raise ValueError(
                    f"workers {workers} differs from the shared Evaluator's {model.workers}"
                )
            if device is not None and resolve_device(device) != model.device:
                raise ValueError(
                    f"device {device} differs from the shared Evaluator's {model.device}"
                )
            self.evaluator = model
        else:
            self.evaluator = Evaluator(
                model,
                rotation_batch=rotation_batch,
                dtype=dtype,
                workers=workers,
                extensions_directory=extensions_directory,
                device=device,
            )

    def set_average(
        self, average: str | AveragingPolicy, inversion: bool | None = None, seed: int | None = None
    ) -> AveragingPolicy:
        """Change the averaging policy (same model); clears the results so that the next
        ``get_*`` recomputes. Returns the new policy."""
        self.policy = make_policy(average, inversion, seed)
        self.reset()
        return self.policy

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        """Energy, forces, atomic energies, stress (3D-periodic cells) and diagnostics in
        one model call, whatever ``properties`` asks for (so that a random policy gives
        consistent energies and forces)."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(np.all(atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                f"stress needs a cell periodic along all three axes (pbc = {list(atoms.pbc)})"
            )
        res = self.evaluator.compute(Structure.from_atoms(atoms), policy=self.policy)[0]
        results = {
            "energy": res.energy,
            "free_energy": res.energy,
            "forces": np.array(res.forces, dtype=np.float64),
            "energies": np.array(res.energies, dtype=np.float64),
        }
        if periodic:
            stress = -np.asarray(res.virial) / atoms.get_volume()
            results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]].copy()
        results.update({key: res.diagnostics[key] for key in _DIAGNOSTICS})
        self.results = results
