"""What the study's experiments share: their settings (sizes and time limits, quick and
full), the :class:`Context` they run in, and small analysis helpers of their i-PI runs.

Units: Å, ps, eV (meV in tables), amu.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..analysis.components import force_difference
from ..analysis.drift import conserved_drift
from ..analysis.io import Trajectory, load_trajectory, read_properties
from ..analysis.molecules import find_waters
from .inputs import DEFAULT_INPUTS, Input, RunInfo, run_input
from .report import Outcome

TIMESTEP_FS = 0.5  #: the inputs' MD timestep (the inner one with MTS)


# ====================================================================================
# Settings
# ====================================================================================
@dataclass(frozen=True)
class Settings:
    """Sizes and time limits of one reproduction (steps are 0.5 fs MD steps; timeouts
    in seconds of wall time per i-PI run)."""

    quick: bool
    # 1. molecule NVE; the rotation grids of the torque scan (the last is the reference)
    nve_steps: int
    nve_average: str
    grid_policies: tuple[str, ...]
    grid_frames: int
    test_frames: int  #: frames of the model's test split scanned over the grids
    test_policies: tuple[str, ...]
    # 2. molecule NVT
    nvt_steps: int
    nvt_stride: int
    nvt_bins: tuple[int, int]  #: (cos θ, φ) bins of F(cos θ, φ)
    # 3. liquid (64 H2O) and 5. PIMD: plain, MTS averaged correction, random rotation
    liquid_steps: int
    liquid_stride: int
    mts_average: str
    mts_nmts: int
    pimd_beads: int
    pimd_steps: int
    pimd_stride: int
    pimd_random: bool
    # 4. ice: cells (None: all nine), averaging, L-BFGS bounds
    ice_cells: tuple[str, ...] | None
    ice_average: str
    ice_fmax: float  #: eV/Å
    ice_plain_steps: int
    ice_avg_steps: int
    ice_budget: float  #: s for all relaxations together
    equilibration: float  #: fraction of each trajectory discarded
    timeout: float  #: per i-PI run
    mts_timeout: float  #: per MTS / PIMD run
    nvt_timeout: float  #: per molecule NVT run (averaged: ~20 ms per step on one core)

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"


ALL_GRIDS = ("none", "none+inv", "legendre:2", "legendre:2+inv", "legendre:3", "legendre:3+inv")

QUICK = Settings(
    quick=True,
    nve_steps=200,
    nve_average="legendre:2+inv",
    grid_policies=ALL_GRIDS,
    grid_frames=10,
    test_frames=1,
    test_policies=ALL_GRIDS[:4],
    nvt_steps=400,
    nvt_stride=5,
    nvt_bins=(4, 6),
    liquid_steps=60,
    liquid_stride=5,
    mts_average="none+inv",
    mts_nmts=5,
    pimd_beads=4,
    pimd_steps=20,
    pimd_stride=2,
    pimd_random=True,
    ice_cells=("ice_ih_02", "ice_ih_03", "ice_ih_04"),
    ice_average="none+inv",
    ice_fmax=0.1,
    ice_plain_steps=3,
    ice_avg_steps=2,
    ice_budget=60.0,
    equilibration=0.0,
    timeout=90.0,
    mts_timeout=120.0,
    nvt_timeout=90.0,
)

# Full run: ≈ 85 min on 2 busy cores with one torch thread and the interim model (≈ 0.11 s
# per 192-atom evaluation and rotation; molecule steps 10–40 ms with i-PI); the time
# limits (runs, ice budget) cap it at ≈ 135 min whatever the model costs.
FULL = Settings(
    quick=False,
    nve_steps=10000,  # 5 ps
    nve_average="legendre:2+inv",
    grid_policies=ALL_GRIDS,
    grid_frames=50,
    test_frames=4,
    test_policies=ALL_GRIDS,
    nvt_steps=30000,  # 15 ps
    nvt_stride=20,
    nvt_bins=(6, 8),
    liquid_steps=2000,  # 1 ps
    liquid_stride=20,
    mts_average="lebedev:3",
    mts_nmts=10,
    pimd_beads=8,
    pimd_steps=300,  # 0.15 ps
    pimd_stride=10,
    pimd_random=False,
    ice_cells=None,
    ice_average="lebedev:3",
    ice_fmax=0.05,
    ice_plain_steps=200,
    ice_avg_steps=10,
    ice_budget=600.0,
    equilibration=0.1,
    timeout=600.0,
    # 1000 s left the 8-bead PIMD MTS run 7 s of margin in sitting 8 (993 s for its 30 steps
    # with another job on the second core)
    mts_timeout=1300.0,
    # 600 s stopped the averaged run 53 steps short in two full reproductions (sitting 6, 7)
    nvt_timeout=900.0,
)


@dataclass
class Context:
    """Where and how the experiments run; ``log`` writes progress to stderr."""

    out: Path
    settings: Settings
    model: str = "water-revpbe0d3"
    threads: int = 1
    inputs: Path = DEFAULT_INPUTS
    t0: float = field(default_factory=time.monotonic)
    stage: str = ""
    _evaluator: object | None = None

    @property
    def folder(self) -> Path:
        """Where the experiment folders go (beside ``reproduction.md``)."""
        return self.out / "reproduction"

    def log(self, text: str) -> None:
        print(
            f"[reproduce {time.monotonic() - self.t0:7.1f} s] {self.stage}{text}",
            file=sys.stderr,
            flush=True,
        )

    def evaluator(self):
        """One in-process model shared by the grid scans and the ice relaxations."""
        if self._evaluator is None:
            import torch

            from ..evaluator import Evaluator

            torch.set_num_threads(self.threads)
            self._evaluator = Evaluator(self.model)
        return self._evaluator

    def run(self, outcome: Outcome, inp: Input, name: str, steps: int, timeout: float) -> RunInfo:
        """One i-PI run in ``<experiment>/runs/<name>``, recorded in ``outcome.runs``."""
        folder = self.folder / outcome.key / "runs" / name
        self.log(f"i-PI run '{name}', {steps} steps (limit {timeout:.0f} s)")
        info = run_input(
            inp, folder, steps=steps, timeout=timeout, model=self.model, threads=self.threads
        )
        outcome.runs[name] = {**info.to_dict(), "rel_dir": str(folder.relative_to(self.out))}
        if info.status == "partial":
            outcome.status = "partial"
            outcome.notes.append(
                f"run `{name}` reached its time limit at step {info.steps_done} of {steps}; "
                "its numbers use the steps it made"
            )
        return info

    def rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.out))


# ====================================================================================
# Helpers
# ====================================================================================
def n_blocks(n: int, want: int = 5, per_block: int = 2, least: int = 2) -> int:
    """Blocks for error bars: ``want``, fewer (down to ``least``) when ``n`` samples are
    too few for ``per_block`` each (the analyses then give NaN errors)."""
    return int(max(least, min(want, n // per_block)))


def equilibration_frames(n: int, fraction: float) -> int:
    """Frames to discard as equilibration (keeps at least half)."""
    return min(int(n * fraction), n // 2)


def load_equilibrated(path: Path, fraction: float, **kw) -> Trajectory:
    traj = load_trajectory(path, **kw)
    return traj.select(equilibration_frames(traj.n_frames, fraction))


def molecule_ids(traj: Trajectory) -> np.ndarray:
    """Molecule index (N,) of every atom (waters from frame 0; others alone), to leave
    intramolecular pairs out of g(r)."""
    waters = find_waters(traj.symbols, traj.positions[0], traj.cells[0], traj.pbc)
    mol = np.arange(traj.n_atoms) + len(waters)
    for k, idx in enumerate(waters):
        mol[idx] = k
    return mol


def run_drift(run_dir: Path, n_molecules: int) -> dict:
    """Drift of i-PI's conserved quantity (``sim.out``), in meV/molecule/ps."""
    p = read_properties(run_dir / "sim.out")
    t, e = p.time_ps(), p.get("conserved", "energy")
    res = conserved_drift(t, e, n_molecules, n_blocks(len(t)))
    return {"t": t, "e": (e - e[0]) / n_molecules * 1e3, "res": res.to_dict()}


def scan_grids(ev, structures, policies: tuple[str, ...], n_atoms: int) -> list[dict]:
    """Each structure with each averaging policy: mean |τ| of the (averaged) model (the
    evaluator's ``torque`` diagnostic, eV) and the energy (meV/structure and meV/atom)
    and force (meV/Å, MAE over components) errors against the last policy."""
    from ..rotations import AveragingPolicy

    res = {p: [ev.compute(s, p)[0] for s in structures] for p in policies}
    ref = res[policies[-1]]
    out = []
    for p in policies:
        tau = np.array([np.linalg.norm(r.diagnostics["torque"]) for r in res[p]])
        de = np.array([abs(r.energy - q.energy) for r, q in zip(res[p], ref, strict=True)])
        fd = force_difference(
            np.array([q.forces for q in ref]), np.array([r.forces for r in res[p]]), 2
        )
        out.append(
            {
                "policy": p,
                "n_rotations": AveragingPolicy.parse(p).n_rotations,
                "torque_mean": float(tau.mean()),
                "torque_max": float(tau.max()),
                "dE_meV": 1e3 * float(de.mean()),
                "dE_meV_per_atom": 1e3 * float(de.mean()) / n_atoms,
                "dF_mae_meV_A": fd.to_dict()["mae"],
            }
        )
    return out


def structures_from(traj: Trajectory, n: int, pbc: bool):
    from ase.data import atomic_numbers

    from ..evaluator import Structure

    numbers = np.array([atomic_numbers[s] for s in traj.symbols])
    idx = np.unique(np.linspace(0, traj.n_frames - 1, min(n, traj.n_frames)).astype(int))
    return [Structure(numbers, traj.positions[i], traj.cells[i], (pbc,) * 3) for i in idx]
