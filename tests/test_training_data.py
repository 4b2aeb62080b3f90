"""Errors on labelled frames: overall and per chemistry of water, against frame-by-frame
predictions."""

from __future__ import annotations

import dataclasses

import ase.io
import numpy as np
import pytest

from helpers import DATA, tiny_pet
from symbreak.analysis.molecules import near_defects
from symbreak.training_data import collate, evaluate, make_samples, predict


@pytest.fixture(scope="module")
def model_and_samples():
    model, cfg = tiny_pet(three_body=False)
    frames = ase.io.read(DATA / "water_revpbe0d3_160.xyz", ":24")
    samples = make_samples(frames, list(cfg.species), cfg.cutoff)
    return model, samples


def frame_by_frame(model, samples):
    """Energy errors [F] (meV/atom) and force errors [F][3N] (meV/Å), one frame per call."""
    e, f = [], []
    for s in samples:
        energy, forces = predict(model, collate([s], None), create_graph=False)
        e.append(1e3 * (float(energy.detach()[0]) - s.energy) / s.graph.n_atoms)
        f.append(1e3 * (forces.detach().double().numpy() - s.forces).ravel())
    return np.array(e), f


def test_per_chemistry_errors_match_frame_by_frame(model_and_samples):
    model, samples = model_and_samples
    kinds = [s.kind for s in samples]
    assert {"intact", "ions"} <= set(kinds), kinds  # the first 24 frames hold both
    metrics = evaluate(model, samples, batch_size=5)  # batches that straddle the kinds
    e, f = frame_by_frame(model, samples)
    assert metrics["force_mae_meV_A"] == pytest.approx(np.abs(np.concatenate(f)).mean(), rel=1e-5)
    assert metrics["energy_mae_meV_atom"] == pytest.approx(np.abs(e).mean(), rel=1e-5)
    for kind in set(kinds):
        mine = [k == kind for k in kinds]
        expect_f = np.abs(np.concatenate([x for x, m in zip(f, mine, strict=True) if m])).mean()
        assert metrics[f"{kind}_force_mae_meV_A"] == pytest.approx(expect_f, rel=1e-5)
        assert metrics[f"{kind}_energy_mae_meV_atom"] == pytest.approx(
            np.abs(e[mine]).mean(), rel=1e-5
        )
    suffix = "_force_mae_meV_A"
    assert {k.removesuffix(suffix) for k in metrics if k.endswith(suffix)} == set(kinds)


def test_frames_not_of_water_have_no_per_chemistry_errors(model_and_samples):
    model, samples = model_and_samples
    unknown = [dataclasses.replace(s, kind=None) for s in samples[:4]]
    metrics = evaluate(model, unknown)
    assert set(metrics) == {
        "energy_mae_meV_atom",
        "energy_rmse_meV_atom",
        "force_mae_meV_A",
        "force_rmse_meV_A",
        "energy_mean_error_meV_atom",
    }
    assert metrics["force_mae_meV_A"] == evaluate(model, samples[:4])["force_mae_meV_A"]


def test_defect_weights_follow_the_atoms_into_batches():
    """Per-atom force-loss weights: the defect weight on atoms near a defect O, 1 elsewhere
    (intact frames all 1), carried atom for atom into a rotated batch."""
    frames = ase.io.read(DATA / "water_revpbe0d3_160.xyz", ":6")
    samples = make_samples(frames, [1, 8], 4.0, defect_weight=3.0, defect_radius=2.5)
    for a, s in zip(frames, samples, strict=True):
        mask = near_defects(a.numbers, a.positions, a.cell.array, a.pbc, 2.5)
        np.testing.assert_array_equal(s.force_weight, np.where(mask, 3.0, 1.0))
        assert mask.any() == (s.kind == "ions")
    plain = make_samples(frames[:2], [1, 8], 4.0)
    assert all(s.force_weight is None for s in plain)
    rng = np.random.default_rng(0)
    rot = np.linalg.qr(rng.normal(size=(3, 3, 3)))[0]
    batch = collate([samples[1], plain[0], samples[0]], rot)
    expect = np.concatenate(
        [samples[1].force_weight, np.ones(len(frames[0])), samples[0].force_weight]
    )
    np.testing.assert_array_equal(batch.force_weight.numpy(), expect)
