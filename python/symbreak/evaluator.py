"""The one evaluator every Python front end calls (ASE, i-PI client and potential, analysis).

An adapter, not physics: per call it builds one neighbour list per structure, packs all
structures (e.g. path-integral beads) into one graph and calls the model file's contract
(:mod:`symbreak.contract`), which draws the policy's rotations, averages, differentiates and
computes the diagnostics. The only thing decided here is how the K rotations are spread
over worker threads (``accumulate`` per group, then ``merge`` and ``finalize``). The
averaging policy is an argument of each call (or a default changed with
:meth:`Evaluator.set_policy`): switching it never reloads the model.

Units: Å, eV, eV/Å; virial in eV (-∂E/∂ε, not divided by the volume).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .allocator import keep_freed_memory
from .contract import EDGE_BUDGET, carried_grids
from .export import LoadedModel, load_model
from .graph import Graph, build_graph
from .rotations import AveragingPolicy

# TorchScript's optimising (profiling) executor makes the default-size PET slower and
# hungrier on CPU (benchmarks/averaging.py --jit-optimize: CPU time of a plain call
# +55 % at 192 atoms, +35 % at 1536; peak RSS of 1536 atoms x 70 rotations 8.9 GB
# instead of 6.1 GB): run the scripted code without it.
JIT_OPTIMIZE = False

# Rotation groups are evaluated on parallel worker threads (each with its own share of
# torch's intra-op threads) rather than one after the other with all threads on each op:
# 192 atoms, 2 threads, lebedev:5 (70 rotations): 3.3 s with 2 workers, 4.7 s with one
# (benchmarks/averaging.py). Small systems only by default: the edge budget above is
# shared by the workers, so peak memory does not grow with their number (1536 atoms with
# 2 workers: 0.88-0.93 of the sequential time, at twice the memory; pass workers=2).


@dataclass
class Structure:
    """One configuration: atomic numbers [N], positions [N, 3] (Å), cell [3, 3] (Å, rows
    are lattice vectors) and periodicity (three booleans)."""

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: Sequence[bool] = (True, True, True)

    @classmethod
    def from_atoms(cls, atoms) -> Structure:
        return cls(atoms.numbers, atoms.positions, atoms.cell.array, tuple(atoms.pbc))


@dataclass
class Result:
    """Energy (eV), forces [N, 3] (eV/Å), virial [3, 3] (eV), atomic energies [N] (eV)
    and the diagnostics of the averaging."""

    energy: float
    forces: np.ndarray
    virial: np.ndarray
    energies: np.ndarray
    diagnostics: dict = field(default_factory=dict)


def _as_policy(
    policy: AveragingPolicy | str | None,
    default: AveragingPolicy,
    parsed: dict[str, AveragingPolicy] | None = None,
) -> AveragingPolicy:
    """``policy`` as an :class:`AveragingPolicy` (None: ``default``). Text specs are parsed
    once per ``parsed`` cache, so that a random policy given as text per call (e.g.
    ``"random+seed=3"``) keeps drawing from one generator instead of restarting it."""
    if policy is None:
        return default
    if isinstance(policy, str):
        if parsed is None:
            return AveragingPolicy.parse(policy)
        if policy not in parsed:
            parsed[policy] = AveragingPolicy.parse(policy)
        return parsed[policy]
    return policy


class Evaluator:
    """Energies, forces and virials of a model, plain or rotationally averaged.

    ``model``: a shipped model name or an exported file (or an already loaded model).
    ``policy``: default averaging policy, e.g. ``"none"``, ``"lebedev:5+inv"``,
    ``"random+seed=3"`` or an :class:`AveragingPolicy`. ``rotation_batch``: rotations per
    model call (None: chosen from the system size). ``dtype``: torch.float32 (production)
    or torch.float64 (tests, finite differences); None: the precision of the model file.
    ``workers``: rotation groups evaluated in parallel threads, each with
    ``torch.get_num_threads() // workers`` intra-op threads (None: as many as torch has
    threads, while the rotated edges in flight fit the edge budget; 1: sequential).
    ``extensions_directory``: where a metatomic model's TorchScript extensions are, when
    they are not installed (symbreak models and metatomic files are told apart by
    :func:`~symbreak.export.load_model`). ``device``: where the model runs, ``"cpu"``
    (default), ``"cuda"`` or ``"cuda:N"``; the neighbour list is built on the CPU, the
    graph goes to the device once per call and only the reply comes back.
    """

    def __init__(
        self,
        model: str | Path | LoadedModel = "water-revpbe0d3",
        policy: AveragingPolicy | str = "none",
        rotation_batch: int | None = None,
        dtype: torch.dtype | None = None,
        workers: int | None = None,
        extensions_directory: str | Path | None = None,
        device: str | torch.device | None = None,
    ):
        self.device = resolve_device(device)
        keep_freed_memory()  # fewer page faults per call (symbreak.allocator)
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(
                f"workers must be an integer >= 1 or None (automatic), not {workers!r}"
            )
        if rotation_batch is not None and (
            not isinstance(rotation_batch, int) or rotation_batch < 1
        ):
            raise ValueError(
                "rotation_batch must be an integer >= 1 or None (automatic), "
                f"not {rotation_batch!r}"
            )
        if not isinstance(model, LoadedModel):
            model = load_model(model, extensions_directory)
        self.model = model
        self.module = self.model.module
        if dtype is None:  # the model's own precision
            first = next(self.module.parameters(), None)
            dtype = first.dtype if first is not None else torch.float32
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, not {dtype}")
        if dtype == torch.float64 or self.device.type != "cpu":
            # .double() and .to() convert in place: convert a copy, as the loaded model may
            # be shared with other evaluators (which would then fail on its new weights).
            with torch.no_grad():
                self.module = copy.deepcopy(self.module)
                if dtype == torch.float64:
                    self.module = self.module.double()
                self.module = self.module.to(self.device)
        self.dtype = dtype
        self.species = list(self.model.metadata.species)
        self.cutoff = float(self.model.metadata.cutoff)
        self.rotation_batch = rotation_batch
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pool_workers = 0  # threads of the current pool
        self._lock = threading.Lock()  # policy changes may come from a control thread
        self._parsed: dict[str, AveragingPolicy] = {}  # text specs of per-call policies
        self._carried = {f"{family}:{order}" for family, order in carried_grids()}
        self.policy = _as_policy(policy, AveragingPolicy())
        self.calls = 0

    # -- policy ------------------------------------------------------------------------

    def set_policy(
        self, average: AveragingPolicy | str, inversion: bool | None = None, seed: int | None = None
    ) -> AveragingPolicy:
        """Change the default policy; returns the new one. ``inversion``/``seed`` replace
        what the spec says when given (None keeps it; see
        :meth:`AveragingPolicy.with_options`)."""
        policy = _as_policy(average, self.policy).with_options(inversion, seed)
        with self._lock:
            self.policy = policy
        return policy

    # -- evaluation --------------------------------------------------------------------

    def graph(self, s: Structure) -> Graph:
        return build_graph(s.numbers, s.positions, s.cell, s.pbc, self.cutoff, self.species)

    def rotations(self, policy: AveragingPolicy) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotations [K, 3, 3] and weights [K] of the policy's next evaluation, drawn
        by the model file (its grid tables, its random stream); grids beyond the file's
        tables (a bound raised with ``+max=N``) from :mod:`symbreak.rotations`."""
        text, counter = policy.draw()
        if policy.is_random or policy.spec in self._carried or policy.n_rotations <= 2:
            return self.module.policy_rotations(text, counter)
        rotations, weights = policy.rotations()
        return torch.from_numpy(rotations), torch.from_numpy(weights)

    def compute(
        self,
        structures: Structure | Sequence[Structure],
        policy: AveragingPolicy | str | None = None,
        gradients: bool = True,
    ) -> list[Result]:
        """Evaluate one or several structures in one batched model call per rotation chunk.

        Random policies draw one rotation per call, shared by all structures of the call.
        """
        if isinstance(structures, Structure):
            structures = [structures]
        with self._lock:
            policy = _as_policy(policy, self.policy, self._parsed)
            rotations, weights = self.rotations(policy)
        graphs = [self.graph(s) for s in structures]
        inputs = _pack(structures, graphs)
        n_edges = int(inputs["centers"].shape[0])
        k = len(weights)
        # On an accelerator one worker feeds the device; on the CPU one per torch thread.
        threads = torch.get_num_threads() if self.device.type == "cpu" else 1
        budget = int(self.module.edge_budget)
        workers, batch = rotation_plan(
            k, n_edges, threads, self.workers, self.rotation_batch, budget
        )
        graph = {name: inputs[name].to(self.device, non_blocking=True) for name in _INPUTS}
        args = list(graph.values())

        def run(start: int, stop: int) -> dict[str, torch.Tensor]:
            """Rotations start..stop-1 (grad mode and the JIT flag are per thread)."""
            if workers > 1:
                # OpenMP's thread count is per thread, but MKL's is global and the caller
                # restores it after each parallel call: set both at every task.
                torch.set_num_threads(max(1, threads // workers))
            with torch.set_grad_enabled(gradients), torch.jit.optimized_execution(JIT_OPTIMIZE):
                return self.module.accumulate(
                    *args, rotations[start:stop], weights[start:stop], gradients, batch
                )

        if workers == 1:
            raw = run(0, k)
        else:
            pool = self._worker_pool(workers)
            try:
                bounds = np.linspace(0, k, workers + 1).round().astype(int).tolist()
                futures = [pool.submit(run, bounds[i], bounds[i + 1]) for i in range(workers)]
                raw = self.module.merge([f.result() for f in futures])
            finally:
                # The workers' torch.set_num_threads also set torch's default for threads
                # started later: give it back the caller's value.
                torch.set_num_threads(threads)
        out = self.module.finalize(raw, graph["structure"], graph["selected"])
        if self.device.type != "cpu":
            out = {name: value.detach().cpu() for name, value in out.items()}
        self.calls += 1
        return _unpack(out, inputs, policy, gradients)

    def _worker_pool(self, workers: int) -> ThreadPoolExecutor:
        if self._pool_workers != workers:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="symbreak-rotations")
            self._pool_workers = workers
        return self._pool

    def close(self) -> None:
        """Stop the worker threads (they are also stopped at interpreter exit)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool, self._pool_workers = None, 0

    def __call__(self, atoms, policy=None) -> Result:
        """Convenience: one ASE Atoms object."""
        return self.compute(Structure.from_atoms(atoms), policy)[0]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` ("cpu", "cuda", "cuda:N", a torch.device; None: the CPU) as a
    torch.device; ValueError naming it if torch cannot use it here."""
    if device is None:
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device ({err})") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise ValueError(f"device {device!r}: symbreak runs on 'cpu' or 'cuda[:N]'")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} asked, but this torch ({torch.__version__}) sees no CUDA "
            "device (torch.cuda.is_available() is False)"
        )
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)")
    return resolved


def rotation_plan(
    k: int,
    n_edges: int,
    threads: int,
    workers: int | None = None,
    rotation_batch: int | None = None,
    edge_budget: int = EDGE_BUDGET,
) -> tuple[int, int]:
    """How K rotations of a graph with ``n_edges`` edges are evaluated with ``threads``
    torch threads: (parallel worker threads, rotations per model call of each worker).
    None picks automatically: one worker per thread while one rotation per worker fits
    the model file's edge budget (large systems keep intra-op threads and the memory of
    one call), and chunks that keep the rotated edges in flight within the budget."""
    n_edges = max(n_edges, 1)
    if workers is None:
        workers = min(threads, edge_budget // n_edges)
    workers = max(1, min(workers, k))
    if rotation_batch is None:
        rotation_batch = min(-(-k // workers), edge_budget // (workers * n_edges))
    return workers, max(1, rotation_batch)


#: The graph inputs of the contract's ``accumulate``, in order.
_INPUTS = (
    "numbers", "positions", "cells", "structure", "centers", "neighbors", "shifts", "reverse",
    "selected",
)  # fmt: skip


def _pack(structures: Sequence[Structure], graphs: list[Graph]) -> dict[str, torch.Tensor]:
    """The contract's inputs for several structures: atoms and edges concatenated, atom
    and edge indices offset; every atom's energy counts."""
    atom_offsets = np.cumsum([0] + [g.n_atoms for g in graphs])
    edge_offsets = np.cumsum([0] + [len(g.centers) for g in graphs])

    def cat(parts: list[np.ndarray], dtype, shape=(-1,)) -> torch.Tensor:
        array = np.concatenate(parts) if parts else np.zeros(0)
        return torch.from_numpy(np.ascontiguousarray(array.astype(dtype).reshape(shape)))

    def offset(name: str, offsets: np.ndarray) -> list[np.ndarray]:
        return [getattr(g, name) + o for g, o in zip(graphs, offsets[:-1], strict=True)]

    n = int(atom_offsets[-1])
    return {
        "numbers": cat([np.asarray(s.numbers) for s in structures], np.int64),
        "positions": cat([np.asarray(s.positions) for s in structures], np.float64, (-1, 3)),
        "cells": cat([_cell(s) for s in structures], np.float64, (-1, 3, 3)),
        "structure": cat([np.full(g.n_atoms, b) for b, g in enumerate(graphs)], np.int64),
        "centers": cat(offset("centers", atom_offsets), np.int64),
        "neighbors": cat(offset("neighbors", atom_offsets), np.int64),
        "shifts": cat([g.shifts for g in graphs], np.int64, (-1, 3)),
        "reverse": cat(offset("reverse", edge_offsets), np.int64),
        "selected": torch.ones(n, dtype=torch.bool),
        "atom_offsets": torch.from_numpy(atom_offsets),
    }


def _cell(s: Structure) -> np.ndarray:
    """The cell [1, 3, 3], with zero rows along non-periodic directions (where every shift
    is zero): what metatomic models read as "not periodic" (see symbreak.metatomic)."""
    cell = np.zeros((3, 3)) if s.cell is None else np.array(s.cell, dtype=np.float64)
    cell = cell.reshape(3, 3)
    cell[~np.broadcast_to(np.asarray(s.pbc, dtype=bool), (3,))] = 0.0
    return cell.reshape(1, 3, 3)


def _unpack(out: dict, inputs: dict, policy: AveragingPolicy, gradients: bool) -> list[Result]:
    """Per-structure results (numpy) from the contract's outputs."""
    offsets = inputs["atom_offsets"].tolist()
    n_rotations = int(out["weights"].shape[0])
    results = []
    for b in range(len(offsets) - 1):
        a0, a1 = offsets[b], offsets[b + 1]
        diag = {
            "average": str(policy),
            "n_rotations": n_rotations,
            "energy_rot_std": float(out["energy_rot_std"][b]),
        }
        if gradients:
            forces = out["forces"][a0:a1].double().numpy()
            virial = out["virial"][b].numpy()
            diag["forces_rot_std"] = float(out["forces_rot_std"][b])
            diag["forces_rot_std_atoms"] = out["forces_rot_std_atoms"][a0:a1].numpy()
            diag["torque"] = out["torque"][b].numpy()
        else:
            forces = np.full((a1 - a0, 3), np.nan)
            virial = np.full((3, 3), np.nan)
        energy = float(out["energy"][b])
        atomic = out["atomic_energies"][a0:a1].numpy()
        results.append(Result(energy, forces, virial, atomic, diag))
    return results
