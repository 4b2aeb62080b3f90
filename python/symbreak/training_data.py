"""Labelled frames for training: reading them, the train/val/test split, batches of them
(one packed graph, optionally rotated), and a model's predictions and errors on them.

Energies are in eV, forces in eV/Å, positions in Å, as in the extended XYZ files.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .analysis.molecules import near_defects, water_frame_class
from .direct_forces import DirectForceHead
from .graph import Graph, build_graph
from .model import PET, atom_forces


@dataclass
class Sample:
    graph: Graph
    energy: float  # eV
    forces: np.ndarray  # [N, 3] eV/Å
    kind: str | None = None  # water_frame_class: "intact", "ions", "H2"; None if not water
    force_weight: np.ndarray | None = None  # [N] per-atom weight in the force loss; None: 1


def file_fingerprint(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_labelled(path: str | Path) -> list:
    """Frames with energies and forces; ValueError naming the file and frame otherwise."""
    import ase.io

    frames = ase.io.read(str(path), ":")
    for k, atoms in enumerate(frames):
        try:
            atoms.get_potential_energy()
            atoms.get_forces()
        except Exception as err:
            raise ValueError(f"{path}: frame {k} has no energy and forces: {err}") from err
    return frames


def make_samples(
    frames: list,
    species: list[int],
    cutoff: float,
    defect_weight: float = 1.0,
    defect_radius: float = 3.0,
) -> list[Sample]:
    """Samples of labelled frames; with ``defect_weight`` != 1, the atoms within
    ``defect_radius`` Å of a defect O of water (:func:`near_defects`) get that weight in
    the force loss, the others 1."""
    samples = []
    for a in frames:
        weight = None
        if defect_weight != 1.0:
            mask = near_defects(a.numbers, a.positions, a.cell.array, a.pbc, defect_radius)
            weight = np.where(mask, defect_weight, 1.0)
        samples.append(
            Sample(
                build_graph(a.numbers, a.positions, a.cell.array, a.pbc, cutoff, species),
                float(a.get_potential_energy()),
                np.asarray(a.get_forces(), dtype=np.float64),
                water_frame_class(a.numbers, a.positions, a.cell.array, a.pbc),
                weight,
            )
        )
    return samples


def split_indices(n: int, n_test: int, n_val: int, seed: int) -> dict[str, list[int]]:
    perm = np.random.default_rng(seed).permutation(n)
    return {
        "test": sorted(perm[:n_test].tolist()),
        "val": sorted(perm[n_test : n_test + n_val].tolist()),
        "train": sorted(perm[n_test + n_val :].tolist()),
    }


def composition_baseline(samples: list[Sample], n_species: int) -> np.ndarray:
    """Per-species energies (eV/atom) from a least-squares fit of E to the counts."""
    counts = np.stack([np.bincount(s.graph.species, minlength=n_species) for s in samples])
    energies = np.array([s.energy for s in samples])
    return np.linalg.lstsq(counts.astype(float), energies, rcond=None)[0]


@dataclass
class Batch:
    species: torch.Tensor
    centers: torch.Tensor
    neighbors: torch.Tensor
    vectors: torch.Tensor
    reverse: torch.Tensor
    structure: torch.Tensor
    n_atoms: torch.Tensor  # [B]
    energy: torch.Tensor  # [B] eV
    forces: torch.Tensor  # [N, 3] eV/Å
    force_weight: torch.Tensor  # [N] per-atom weight in the force loss

    def to(self, device: torch.device) -> Batch:
        """The same batch with every tensor on ``device``."""
        return Batch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def collate(samples: list[Sample], rotations: np.ndarray | None, dtype=torch.float32) -> Batch:
    """Pack structures into one graph; ``rotations`` [B,3,3] rotate vectors and forces."""
    species, centers, neighbors, vectors, reverse, structure, forces = [], [], [], [], [], [], []
    weights = []
    atom_offset = edge_offset = 0
    for b, s in enumerate(samples):
        g = s.graph
        vec, frc = g.vectors, s.forces
        if rotations is not None:
            vec, frc = vec @ rotations[b].T, frc @ rotations[b].T
        species.append(g.species)
        centers.append(g.centers + atom_offset)
        neighbors.append(g.neighbors + atom_offset)
        reverse.append(g.reverse + edge_offset)
        vectors.append(vec)
        forces.append(frc)
        weights.append(np.ones(g.n_atoms) if s.force_weight is None else s.force_weight)
        structure.append(np.full(g.n_atoms, b))
        atom_offset += g.n_atoms
        edge_offset += len(g.centers)

    def cat(arrays, dt):
        return torch.from_numpy(np.concatenate(arrays)).to(dt)

    return Batch(
        cat(species, torch.long),
        cat(centers, torch.long),
        cat(neighbors, torch.long),
        cat(vectors, dtype),
        cat(reverse, torch.long),
        cat(structure, torch.long),
        torch.tensor([s.graph.n_atoms for s in samples]),
        torch.tensor([s.energy for s in samples], dtype=torch.float64),
        cat(forces, dtype),
        cat(weights, dtype),
    )


def predict(
    model: PET, batch: Batch, create_graph: bool, head: DirectForceHead | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies [B] (eV) and forces [N, 3] (eV/Å), differentiable if ``create_graph``;
    with a direct force ``head`` (training only), its forces instead of −∇E."""
    if head is None:
        vectors = batch.vectors.detach().requires_grad_(True)
        eps = model.atomic_energies(
            batch.species, batch.centers, batch.neighbors, vectors, batch.reverse
        )
    else:
        eps, forces = head(
            model, batch.species, batch.centers, batch.neighbors, batch.vectors, batch.reverse
        )
    n_struct = batch.n_atoms.shape[0]
    interaction = torch.zeros(n_struct, dtype=eps.dtype, device=eps.device).index_add(
        0, batch.structure, eps
    )
    if head is None:
        (grad,) = torch.autograd.grad(interaction.sum(), vectors, create_graph=create_graph)
        forces = atom_forces(grad, batch.centers, batch.neighbors, batch.species.shape[0])
    baseline = torch.zeros(n_struct, dtype=torch.float64, device=eps.device).index_add(
        0, batch.structure, model.baseline_energies(batch.species)
    )
    return interaction.double() + baseline, forces


def evaluate(
    model: PET, samples: list[Sample], batch_size: int = 4, head: DirectForceHead | None = None
) -> dict[str, float]:
    """Energy MAE/RMSE (meV/atom) and force MAE/RMSE (meV/Å) on unrotated samples; with a
    direct force ``head``, of its forces. Runs where the model's tensors are.

    For frames of water, also ``{kind}_energy_mae_meV_atom`` and ``{kind}_force_mae_meV_A``
    per chemistry present (:func:`~symbreak.analysis.molecules.water_frame_class`): one
    unusual frame (an H2 molecule) can dominate the overall numbers of a small split."""
    e_err, f_err = [], []
    device = model.baseline.device
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        batch = collate(chunk, None).to(device)
        energy, forces = predict(model, batch, create_graph=False, head=head)
        e_err.append(((energy.detach().double() - batch.energy) / batch.n_atoms).cpu().numpy())
        per_atom = (forces.detach() - batch.forces).double().cpu().numpy()
        f_err.extend(np.split(per_atom, np.cumsum(batch.n_atoms.cpu().numpy())[:-1]))
    e = np.concatenate(e_err) * 1e3
    f = [1e3 * x.ravel() for x in f_err]
    metrics = _errors(e, np.concatenate(f))
    kinds = [s.kind for s in samples]
    for kind in dict.fromkeys(k for k in kinds if k is not None):
        mine = [k == kind for k in kinds]
        part = _errors(e[mine], np.concatenate([x for x, m in zip(f, mine, strict=True) if m]))
        metrics[f"{kind}_energy_mae_meV_atom"] = part["energy_mae_meV_atom"]
        metrics[f"{kind}_force_mae_meV_A"] = part["force_mae_meV_A"]
    return metrics


def _errors(e: np.ndarray, f: np.ndarray) -> dict[str, float]:
    """Summary of energy errors e [F] (meV/atom) and force components f [3N] (meV/Å)."""
    return {
        "energy_mae_meV_atom": float(np.abs(e).mean()),
        "energy_rmse_meV_atom": float(np.sqrt((e**2).mean())),
        "force_mae_meV_A": float(np.abs(f).mean()),
        "force_rmse_meV_A": float(np.sqrt((f**2).mean())),
        "energy_mean_error_meV_atom": float(e.mean()),
    }
