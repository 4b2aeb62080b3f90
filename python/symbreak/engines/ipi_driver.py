"""The symbreak driver behind i-PI: evaluator + species + averaging policy + extras.

Shared by the socket client (`symbreak serve`, units Å/eV, cells with lattice vectors as
rows, see :mod:`symbreak.engines.ipi_client`) and the in-process potential
(:mod:`symbreak.engines.ipi_pes`, which converts from i-PI's atomic units).

i-PI does not send atomic species: they come from a ``template`` structure file (any
file ASE reads, atoms in i-PI's order — the launcher passes i-PI's own initial
structure) or an explicit list of symbols/atomic numbers.

The averaging policy can be set at start, per i-PI force field through the INIT
``<parameters>`` string (``average: lebedev:5, inversion: true, seed: 3``), and changed
while running (:meth:`SymbreakDriver.set_policy`, called by the control channel). Every
result carries the diagnostics as i-PI extras (JSON): ``average``, ``n_rotations``,
``energy_rot_std`` (eV), ``forces_rot_std`` (eV/Å), ``torque`` (eV), ``call`` (model
calls served so far, a batched call counts once) and ``policy_since_call`` (the call from
which the policy in force applies).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..evaluator import Evaluator, Structure
from ..rotations import AveragingPolicy
from .ipi_protocol import parse_parameters

_TRUE = {"1", "true", "yes", "on", "t", "y"}
_FALSE = {"0", "false", "no", "off", "f", "n", ""}


def parse_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"not a boolean: {value!r} (use true/false)")


def read_species(template: str | Path | None, species: Sequence | None) -> np.ndarray:
    """Atomic numbers [N] from a template file or a list of symbols / numbers."""
    from ase.data import atomic_numbers

    if species is not None:
        if isinstance(species, str):
            species = [s for s in species.replace(",", " ").split() if s]
        return np.array([int(s) if str(s).isdigit() else atomic_numbers[str(s)] for s in species])
    if template is None:
        raise ValueError(
            "i-PI does not send atomic species: give a template structure (--template FILE)"
        )
    import ase.io

    path = Path(template)
    if not path.is_file():
        raise FileNotFoundError(f"template structure file '{path}' does not exist")
    return ase.io.read(str(path), 0).numbers


class SymbreakDriver:
    """Evaluates i-PI requests (Å, eV) with a symbreak model and an averaging policy."""

    def __init__(
        self,
        model: str = "water-revpbe0d3",
        template: str | Path | None = None,
        species: Sequence | None = None,
        average: str = "none",
        inversion: bool | None = None,
        seed: int | None = None,
        rotation_batch: int | None = None,
        pbc: bool = True,
        evaluator: Evaluator | None = None,
        workers: int | None = None,
        extensions_directory: str | Path | None = None,
        device: str | None = None,
    ):
        self.numbers = read_species(template, species)
        self.evaluator = evaluator or Evaluator(
            model,
            rotation_batch=rotation_batch,
            workers=workers,
            extensions_directory=extensions_directory,
            device=device,
        )
        self.pbc = bool(pbc)
        self._lock = threading.Lock()
        self.calls = 0
        self.policy_since_call = 0
        self.last_call_seconds = 0.0
        self.set_policy(average=average, inversion=inversion, seed=seed)

    # -- policy ------------------------------------------------------------------------

    @property
    def policy(self) -> AveragingPolicy:
        return self.evaluator.policy

    def set_policy(self, average: str | None = None, inversion=None, seed=None, **unknown) -> dict:
        """Change the averaging from the next force request; returns the state."""
        if unknown:
            raise ValueError(f"unknown policy option(s): {', '.join(unknown)}")
        current = self.evaluator.policy
        policy = AveragingPolicy.parse(average) if average is not None else current
        if seed is not None and str(seed).strip() != "":
            try:
                seed = int(str(seed).strip())
            except ValueError:
                raise ValueError(f"seed must be an integer >= 0, not {seed!r}") from None
        else:
            seed = None
        inversion = None if inversion is None else parse_bool(inversion)
        policy = policy.with_options(inversion, seed)
        with self._lock:
            self.evaluator.set_policy(policy)
            self.policy_since_call = self.calls + 1  # applies from the next call
        return self.state()

    def state(self) -> dict:
        return {
            "average": str(self.policy),
            "n_rotations": self.policy.n_rotations,
            "call": self.calls,
            "policy_since_call": self.policy_since_call,
            "last_call_seconds": self.last_call_seconds,
        }

    get_policy = state  # what the control channel queries

    def init(self, bead_index: int, parameters: str) -> None:
        """i-PI's INIT: apply the policy options of this force field's ``<parameters>``."""
        params = parse_parameters(parameters)
        known = {k: params.pop(k) for k in ("average", "inversion", "seed") if k in params}
        if params:
            raise ValueError(
                f"unknown <parameters> key(s) for symbreak: {', '.join(params)} "
                "(known: average, inversion, seed)"
            )
        if known:
            self.set_policy(**known)

    # -- evaluation --------------------------------------------------------------------

    def compute(self, cells: np.ndarray, positions: np.ndarray) -> list[tuple]:
        """cells [B,3,3] (Å, rows), positions [B,N,3] (Å) → per structure
        (energy eV, forces [N,3] eV/Å, virial [3,3] eV, extras dict)."""
        cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)
        positions = np.asarray(positions, dtype=np.float64).reshape(len(cells), -1, 3)
        if positions.shape[1] != len(self.numbers):
            raise ValueError(
                f"i-PI sent {positions.shape[1]} atoms but the template has "
                f"{len(self.numbers)}: wrong template structure?"
            )
        pbc = (self.pbc,) * 3
        structures = [
            Structure(self.numbers, p, c, pbc) for c, p in zip(cells, positions, strict=True)
        ]
        start = time.perf_counter()
        with self._lock:
            results = self.evaluator.compute(structures)
            self.calls += 1
            call, since = self.calls, self.policy_since_call
        self.last_call_seconds = time.perf_counter() - start
        out = []
        for r in results:
            d = r.diagnostics
            extras = {
                "average": d["average"],
                "n_rotations": d["n_rotations"],
                "energy_rot_std": d["energy_rot_std"],
                "forces_rot_std": d["forces_rot_std"],
                "torque": np.asarray(d["torque"]).tolist(),
                "call": call,
                "policy_since_call": since,
                "call_seconds": self.last_call_seconds,
            }
            out.append((r.energy, r.forces, r.virial, extras))
        return out
