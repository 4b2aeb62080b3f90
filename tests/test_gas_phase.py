"""The gas-phase term: molecules cut from periodic frames, their distortion, the learned
part's forces, and what the term does to training."""

from __future__ import annotations

from collections import Counter

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from test_training import TINY, config, tiny_data  # noqa: F401  (fixture)

from helpers import DATA
from symbreak.gas_phase import cut_molecules, distorted_graphs, learned_force_msq
from symbreak.model import PET, PETConfig
from symbreak.training import Trainer
from symbreak.training_data import Sample, collate, make_samples, predict


@pytest.fixture(scope="module")
def frames():
    return ase.io.read(DATA / "water_revpbe0d3_160.xyz", ":2")


def test_molecules_are_whole_across_the_boundary(frames):
    """Every cut molecule is an H2O whose internal vectors are the minimum-image vectors of
    its atoms in the frame (ASE's), including molecules the periodic wrap splits."""
    molecules = cut_molecules(frames)
    assert len(molecules) >= 120  # 2 x 64 molecules, less the odd transient fragment
    split = 0
    for m in molecules:
        f, idx = m.source
        assert sorted(m.numbers.tolist()) == [1, 1, 8]
        mic = frames[f].get_distances(idx[0], idx, mic=True, vector=True)
        np.testing.assert_allclose(m.positions - m.positions[0], mic, atol=1e-10)
        raw = frames[f].positions[idx] - frames[f].positions[idx[0]]
        split += not np.allclose(raw, mic)
        oxygen = m.positions[m.numbers == 8][0]
        assert np.linalg.norm(m.positions - oxygen, axis=1).max() < 1.3  # O–H bonds
    assert split > 0  # the unwrap was exercised


def test_transient_fragments_are_dropped(frames):
    """20 waters, a hydroxide and a lone proton: only the waters are molecules, unless
    every composition is kept."""
    whole = cut_molecules(frames[:1])
    atoms = frames[0]
    keep = np.concatenate([m.source[1] for m in whole[:21]])
    box = atoms[keep[:-1]]  # the 21st water loses an H: a hydroxide
    candidates = np.random.default_rng(0).uniform(0, 1, (200, 3)) @ box.cell.array
    far = max(candidates, key=lambda p: _mic_distances(box, p).min())
    box.append("H")
    box.positions[-1] = far
    assert _mic_distances(box[:-1], far).min() > 1.5  # really alone
    assert [len(m.numbers) for m in cut_molecules([box])] == [3] * 20
    every = Counter(tuple(sorted(m.numbers.tolist())) for m in cut_molecules([box], min_share=0))
    assert every == {(1,): 1, (1, 8): 1, (1, 1, 8): 20}


def _mic_distances(atoms, point) -> np.ndarray:
    probe = atoms.copy()
    probe.append("X")
    probe.positions[-1] = point
    return probe.get_distances(len(probe) - 1, range(len(atoms)), mic=True)


def test_distorted_graphs_are_isolated_rotated_copies(frames):
    molecules = cut_molecules(frames)
    rng = np.random.default_rng(3)
    graphs = distorted_graphs(molecules, rng, 6, 0.0, 3.5, [1, 8])
    rng = np.random.default_rng(3)
    picks = rng.integers(len(molecules), size=6)
    for g, k in zip(graphs, picks, strict=True):
        pos = molecules[k].positions
        n = len(pos)
        assert g.n_atoms == n and len(g.centers) == n * (n - 1)  # every pair, nothing else
        d_graph = np.linalg.norm(g.vectors, axis=1)
        d_mol = np.linalg.norm(pos[g.neighbors] - pos[g.centers], axis=1)
        np.testing.assert_allclose(d_graph, d_mol, atol=1e-12)  # a rotation: same distances
    noisy = distorted_graphs(molecules, np.random.default_rng(3), 6, 0.05, 3.5, [1, 8])
    change = [np.abs(np.linalg.norm(a.vectors, axis=1) - np.linalg.norm(b.vectors, axis=1))
              for a, b in zip(graphs, noisy, strict=True)]  # fmt: skip
    assert 0.005 < np.concatenate(change).mean() < 0.2


def test_learned_force_msq_is_the_mean_square_of_the_learned_forces(frames):
    """With the invariant priors off, the learned part is the whole model: the term equals
    the mean square of the model's forces (from ``predict``)."""
    torch.manual_seed(0)
    cfg = PETConfig(species=[1, 8], **(TINY | {"pair_prior": False}))
    model = PET(cfg).double()
    for p in model.parameters():  # zero-initialised readouts would give zero forces
        p.data.add_(0.05 * torch.randn_like(p))
    samples = make_samples(frames[:1], [1, 8], cfg.cutoff)
    batch = collate(samples, None, dtype=torch.float64)
    _, forces = predict(model, batch, create_graph=False)
    msq = learned_force_msq(
        model, batch.species, batch.centers, batch.neighbors, batch.vectors, batch.reverse
    )
    assert forces.abs().max() > 1e-3
    assert msq.item() == pytest.approx((forces.float() ** 2).mean().item(), rel=1e-5)


def test_gas_weight_pushes_the_learned_gas_forces_down(tiny_data, tmp_path):  # noqa: F811
    """Same start (readouts perturbed so that the learned part has gas-phase forces), same
    seed, same 12 steps: with the gas term those forces on fresh isolated molecules end
    well below those of the run without it (measured: 0.43x; the force loss alone also
    shrinks the perturbation's forces, by 7x, hence the modest ratio)."""
    probe = cut_molecules(ase.io.read(tiny_data, ":"))
    graphs = distorted_graphs(probe, np.random.default_rng(9), 16, 0.05, 3.5, [1, 8])
    b = collate([Sample(g, 0.0, np.zeros((g.n_atoms, 3))) for g in graphs], None)
    args = (b.species, b.centers, b.neighbors, b.vectors, b.reverse)
    result = {}
    for weight in (0.0, 100.0):
        cfg = config(tiny_data, tmp_path / str(weight), epochs=6, gas_weight=weight)
        trainer = Trainer(cfg, progress=False)
        torch.manual_seed(1)
        with torch.no_grad():
            for p in trainer.model.parameters():
                if p.requires_grad:
                    p.add_(0.01 * torch.randn_like(p))
        start = learned_force_msq(trainer.model, *args).item()
        for _ in range(cfg.epochs):
            record = trainer.run_epoch()
        result[weight] = learned_force_msq(trainer.model, *args).item() / start
        assert (record["gas_force_msq"] > 0) == (weight > 0)
    assert result[100.0] < 0.6 * result[0.0]


def test_gas_weight_needs_molecules(tmp_path):
    """A metal is one bonded network, not molecules: a clear error naming the file."""
    frames = []
    for k in range(4):
        atoms = bulk("Cu", cubic=True).repeat(2)
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        frames.append(atoms)
    path = tmp_path / "copper.xyz"
    ase.io.write(path, frames)
    cfg = config(path, tmp_path, gas_weight=1.0, model=TINY | {"cutoff": 3.0})
    with pytest.raises(ValueError, match=r"copper\.xyz.*gas-weight needs molecules"):
        Trainer(cfg, progress=False)
