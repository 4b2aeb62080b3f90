"""The one evaluator every front end calls (ASE, i-PI client and potential, analysis).

Per call: one neighbour list per structure, all structures (e.g. path-integral beads)
packed into one graph, then the exported model's ``compute`` runs the K rotated copies
in batches of ``rotation_batch`` and returns the weighted mean energy, its exact
gradient (forces, virial) and the spread over rotations. The averaging policy is an
argument of each call (or a default changed with :meth:`Evaluator.set_policy`): switching
it never reloads the model.

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

from .export import LoadedModel, load_model
from .graph import Graph, build_graph
from .rotations import AveragingPolicy

# Token budget of one model call when rotation_batch is automatic: rotations are
# chunked so that K_chunk × edges stays below this (bounds the memory of the batch).
# Rotated edges per model call when rotation_batch is not given. On CPU, larger chunks are
# slower per rotation, not faster: the default-size PET keeps ≈ 45 kB of activations per
# rotated edge for the backward pass, and once a chunk's working set leaves the cache
# every layer streams it from memory (192 atoms, lebedev:3, 1 thread: batched/separate =
# 0.89 with 2 rotations per call, 1.00 with 3, 1.15 with 6, 1.26 with 11;
# benchmarks/averaging.py). 8192 edges ≈ 2 rotations of 64 H2O, ≈ 0.4 GB.
AUTO_EDGE_BUDGET = 8_192

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
    """

    def __init__(
        self,
        model: str | Path | LoadedModel = "water-revpbe0d3",
        policy: AveragingPolicy | str = "none",
        rotation_batch: int | None = None,
        dtype: torch.dtype | None = None,
        workers: int | None = None,
    ):
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1 or None (automatic), not {workers}")
        self.model = model if isinstance(model, LoadedModel) else load_model(model)
        self.module = self.model.module
        if dtype is None:  # the model's own precision
            first = next(self.module.parameters(), None)
            dtype = first.dtype if first is not None else torch.float32
        if dtype == torch.float64:
            # .double() converts in place: convert a copy, as the loaded model may be
            # shared with float32 evaluators (which would then fail on float64 weights).
            with torch.no_grad():
                self.module = copy.deepcopy(self.module).double()
        elif dtype != torch.float32:
            raise ValueError(f"dtype must be torch.float32 or torch.float64, not {dtype}")
        self.dtype = dtype
        self.species = list(self.model.metadata.species)
        self.cutoff = float(self.model.metadata.cutoff)
        self.rotation_batch = rotation_batch
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pool_workers = 0  # threads of the current pool
        self._lock = threading.Lock()  # policy changes may come from a control thread
        self._parsed: dict[str, AveragingPolicy] = {}  # text specs of per-call policies
        self.policy = _as_policy(policy, AveragingPolicy())
        self.calls = 0

    # -- policy ------------------------------------------------------------------------

    def set_policy(
        self, average: AveragingPolicy | str, inversion: bool | None = None, seed: int | None = None
    ) -> AveragingPolicy:
        """Change the default policy; returns the new one. ``inversion``/``seed``
        override what the spec string says when given."""
        policy = _as_policy(average, self.policy)
        if inversion is not None or seed is not None:
            policy = AveragingPolicy(
                policy.spec,
                policy.inversion if inversion is None else bool(inversion),
                policy.seed if seed is None else int(seed),
            )
        with self._lock:
            self.policy = policy
        return policy

    # -- evaluation --------------------------------------------------------------------

    def graph(self, s: Structure) -> Graph:
        return build_graph(s.numbers, s.positions, s.cell, s.pbc, self.cutoff, self.species)

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
            rotations, weights = policy.rotations()
        graphs = [self.graph(s) for s in structures]
        packed = _pack(graphs, self.dtype)
        n_edges = int(packed["centers"].shape[0])
        k = len(weights)
        threads = torch.get_num_threads()
        workers, batch = rotation_plan(k, n_edges, threads, self.workers, self.rotation_batch)
        rotations = torch.from_numpy(np.ascontiguousarray(rotations))
        weights_t = torch.from_numpy(np.ascontiguousarray(weights))

        def run(start: int, stop: int) -> dict[str, torch.Tensor]:
            """Rotations start..stop-1 (grad mode and the JIT flag are per thread)."""
            if workers > 1:
                # OpenMP's thread count is per thread, but MKL's is global and the caller
                # restores it after each parallel call: set both at every task.
                torch.set_num_threads(max(1, threads // workers))
            with torch.set_grad_enabled(gradients), torch.jit.optimized_execution(JIT_OPTIMIZE):
                return self.module.compute(
                    packed["species"],
                    packed["centers"],
                    packed["neighbors"],
                    packed["vectors"],
                    packed["reverse"],
                    packed["structure"],
                    len(graphs),
                    rotations[start:stop],
                    weights_t[start:stop],
                    gradients,
                    batch,
                )

        if workers == 1:
            out = run(0, k)
        else:
            pool = self._worker_pool(workers)
            try:
                bounds = np.linspace(0, k, workers + 1).round().astype(int).tolist()
                futures = [pool.submit(run, bounds[i], bounds[i + 1]) for i in range(workers)]
                outs = [f.result() for f in futures]
            finally:
                # The workers' torch.set_num_threads also set torch's default for threads
                # started later: give it back the caller's value.
                torch.set_num_threads(threads)
            out = _merge(outs, self.module.baseline_energies(packed["species"]))
        self.calls += 1
        return _unpack(out, graphs, packed, policy, weights, gradients)

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


def rotation_plan(
    k: int,
    n_edges: int,
    threads: int,
    workers: int | None = None,
    rotation_batch: int | None = None,
) -> tuple[int, int]:
    """How K rotations of a graph with ``n_edges`` edges are evaluated with ``threads``
    torch threads: (parallel worker threads, rotations per model call of each worker).
    None picks automatically: one worker per thread while one rotation per worker fits
    the edge budget (large systems keep intra-op threads and the memory of one call), and
    chunks that keep the rotated edges in flight within the budget."""
    n_edges = max(n_edges, 1)
    if workers is None:
        workers = min(threads, AUTO_EDGE_BUDGET // n_edges)
    workers = max(1, min(workers, k))
    if rotation_batch is None:
        rotation_batch = min(-(-k // workers), AUTO_EDGE_BUDGET // (workers * n_edges))
    return workers, max(1, rotation_batch)


def _pack(graphs: list[Graph], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Concatenate graphs (atom and edge indices offset) into the model's inputs."""
    atom_offsets = np.cumsum([0] + [g.n_atoms for g in graphs])
    edge_offsets = np.cumsum([0] + [len(g.centers) for g in graphs])

    def cat(name: str, offsets=None) -> np.ndarray:
        parts = [getattr(g, name) for g in graphs]
        if offsets is not None:
            parts = [p + o for p, o in zip(parts, offsets, strict=False)]
        return np.concatenate(parts) if parts else np.zeros(0)

    structure = np.repeat(np.arange(len(graphs)), [g.n_atoms for g in graphs])
    return {
        "species": torch.from_numpy(cat("species").astype(np.int64)),
        "centers": torch.from_numpy(cat("centers", atom_offsets).astype(np.int64)),
        "neighbors": torch.from_numpy(cat("neighbors", atom_offsets).astype(np.int64)),
        "reverse": torch.from_numpy(cat("reverse", edge_offsets).astype(np.int64)),
        "vectors": torch.from_numpy(cat("vectors").reshape(-1, 3)).to(dtype),
        "structure": torch.from_numpy(structure.astype(np.int64)),
        "atom_offsets": torch.from_numpy(atom_offsets),
    }


def _merge(outs: list[dict[str, torch.Tensor]], baseline: torch.Tensor) -> dict:
    """Combine ``compute`` outputs over disjoint groups of one grid's rotations (weights
    not renormalised per group): weighted sums add up, per-rotation energies are
    concatenated in group order. Every group's ``atomic_energies`` carries the full
    per-species ``baseline`` [N], so all but one copy is taken off."""
    merged = {
        "energy_per_rotation": torch.cat([o["energy_per_rotation"] for o in outs], dim=1),
        "atomic_energies": sum(o["atomic_energies"] for o in outs) - (len(outs) - 1) * baseline,
    }
    for key in ("energy", "edge_gradients", "forces", "forces_rot_sq", "virial"):
        if key in outs[0]:
            merged[key] = sum(o[key] for o in outs)
    return merged


def _unpack(out, graphs, packed, policy, weights, gradients) -> list[Result]:
    offsets = packed["atom_offsets"].tolist()
    w = np.asarray(weights, dtype=np.float64)
    e_rot = out["energy_per_rotation"].numpy()
    results = []
    for b in range(len(graphs)):
        a0, a1 = offsets[b], offsets[b + 1]
        energy = float(out["energy"][b])
        e_std = float(np.sqrt(max(np.sum(w * (e_rot[b] - energy) ** 2), 0.0)))
        diag = {
            "average": str(policy),
            "n_rotations": int(len(w)),
            "energy_rot_std": e_std,
        }
        if gradients:
            forces = out["forces"][a0:a1].double().numpy()
            sq = out["forces_rot_sq"][a0:a1].double().numpy()
            per_atom = np.sqrt(np.clip(sq - (forces**2).sum(1), 0.0, None))
            diag["forces_rot_std"] = float(np.sqrt(np.mean(per_atom**2))) if len(per_atom) else 0.0
            diag["forces_rot_std_atoms"] = per_atom
            virial = out["virial"][b].double().numpy()
            # A model that is not rotation invariant exerts a net torque on the system:
            # it is the antisymmetric part of -Σ r ⊗ ∂E/∂r (τ_a = ε_abc W_bc). The stress
            # is the derivative with respect to *symmetric* strain: the symmetric part.
            diag["torque"] = np.array(
                [
                    virial[1, 2] - virial[2, 1],
                    virial[2, 0] - virial[0, 2],
                    virial[0, 1] - virial[1, 0],
                ]
            )
            virial = 0.5 * (virial + virial.T)
        else:
            forces = np.full((a1 - a0, 3), np.nan)
            virial = np.full((3, 3), np.nan)
        results.append(Result(energy, forces, virial, out["atomic_energies"][a0:a1].numpy(), diag))
    return results
