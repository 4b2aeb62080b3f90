"""Training: the loss goes down, resume continues exactly, the export round-trips."""

from __future__ import annotations

import dataclasses

import ase.io
import numpy as np
import pytest
import torch

from helpers import DATA
from symbreak.training import Trainer
from symbreak.training_config import TrainConfig
from symbreak.training_data import evaluate

# Without the three-body prior (as the default; its fit costs seconds per Trainer);
# tested on its own below.
TINY = {
    "d_model": 16,
    "n_heads": 2,
    "d_ff": 32,
    "n_mp_layers": 2,
    "n_transformer_layers": 1,
    "three_body": False,
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.xyz"
    ase.io.write(path, ase.io.read(DATA / "water_revpbe0d3_160.xyz", ":6"))
    return path


def config(data, workdir, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        workdir=str(workdir),
        output=str(workdir / "model.pt"),
        n_test=1,
        n_val=1,
        epochs=4,
        batch_size=2,
        lr=3e-3,
        warmup_steps=2,
        threads=1,
        model=dict(TINY),
    )
    return TrainConfig(**(base | kw))


def test_pair_prior_is_fitted_before_training(tiny_data, tmp_path):
    """The least-squares pair prior takes most of the force variance before any step, and
    the PET's output scale is the force error that remains."""
    trainer = Trainer(config(tiny_data, tmp_path), progress=False)
    forces = np.concatenate([s.forces for s in trainer.train])
    rms = 1e3 * np.sqrt((forces**2).mean())
    start = evaluate(trainer.model, trainer.train)
    assert start["force_rmse_meV_A"] < 0.3 * rms
    assert start["force_rmse_meV_A"] == pytest.approx(
        1e3 * trainer.pair_fit["force_rmse"], rel=1e-4
    )
    assert trainer.model.energy_scale.item() == pytest.approx(trainer.pair_fit["force_rmse"])
    no_prior = Trainer(config(tiny_data, tmp_path / "none", model=TINY | {"pair_prior": False}))
    assert evaluate(no_prior.model, no_prior.train)["force_rmse_meV_A"] == pytest.approx(
        rms, rel=0.01
    )


@pytest.mark.parametrize("autocast", ["none", "bf16"])
def test_a_few_steps_reduce_the_loss(tiny_data, tmp_path, autocast):
    # Without the prior, so that a few steps have the radial part to learn (with it, a
    # tiny model needs a few hundred steps before it improves on the least-squares fit).
    cfg = config(
        tiny_data, tmp_path, batch_size=1, autocast=autocast, model=TINY | {"pair_prior": False}
    )
    trainer = Trainer(cfg, progress=False)
    before = evaluate(trainer.model, trainer.train)["force_rmse_meV_A"]
    for _ in range(6):
        trainer.run_epoch()
    after = evaluate(trainer.model, trainer.train)["force_rmse_meV_A"]
    assert after < 0.9 * before


@pytest.mark.parametrize("gas_weight", [0.0, 1.0])
def test_resume_continues_exactly(tiny_data, tmp_path, gas_weight):
    """Also with the gas-phase term, whose molecules are drawn from the epoch's generator."""
    kw = dict(epochs=2, gas_weight=gas_weight)
    straight = Trainer(config(tiny_data, tmp_path / "a", **kw), progress=False)
    straight.fit()
    first = Trainer(config(tiny_data, tmp_path / "b", **kw, max_minutes=1e-9), progress=False)
    first.fit()  # stops after one epoch, with a checkpoint
    assert first.epoch == 1
    resumed = Trainer(config(tiny_data, tmp_path / "b", **kw), progress=False, resuming=True)
    resumed.load_checkpoint()
    resumed.fit()
    for a, b in zip(
        straight.ema.state_dict().values(), resumed.ema.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (tmp_path / "b" / "model.pt").is_file()
    assert (tmp_path / "b" / "model.metrics.json").is_file()


def test_export_reproduces_the_trained_model(tiny_data, tmp_path):
    from symbreak.evaluator import Evaluator, Structure

    trainer = Trainer(config(tiny_data, tmp_path, epochs=1), progress=False)
    trainer.fit()
    ev = Evaluator(tmp_path / "model.pt")
    atoms = ase.io.read(tiny_data, 0)
    res = ev.compute(Structure.from_atoms(atoms))[0]
    from symbreak.training_data import collate, predict

    sample = trainer.train[0] if trainer.split["train"][0] == 0 else None
    if sample is None:
        from symbreak.training_data import make_samples

        sample = make_samples([atoms], trainer.model_cfg.species, trainer.model_cfg.cutoff)[0]
    energy, forces = predict(trainer.ema, collate([sample], None), create_graph=False)
    assert res.energy == pytest.approx(energy[0].item(), abs=1e-3)
    np.testing.assert_allclose(res.forces, forces.detach().numpy(), atol=1e-4)
    assert ev.model.metadata.training["data_sha256"] == trainer.fingerprint


def test_new_schedule_restarts_warmup_and_cosine(tiny_data, tmp_path):
    first = Trainer(config(tiny_data, tmp_path, epochs=1), progress=False)
    first.fit()
    step, epoch = first.step, first.epoch
    cfg = config(tiny_data, tmp_path, epochs=epoch + 3, lr=1e-3, warmup_steps=2)
    again = Trainer(dataclasses.replace(cfg, new_schedule=True), progress=False)
    again.load_checkpoint()
    assert (again.step, again.epoch) == (step, epoch)  # the weights' history is kept
    assert again.learning_rate(step) == pytest.approx(0.5e-3)  # warmup starts over
    assert again.learning_rate(step + 2) == pytest.approx(1e-3)  # the new peak
    end = step + 3 * again.steps_per_epoch
    assert again.learning_rate(end) == pytest.approx(cfg.lr_min)
    plain = Trainer(cfg, progress=False)
    plain.load_checkpoint()  # without a new schedule: the old one, already decayed
    assert plain.learning_rate(step) != pytest.approx(again.learning_rate(step))


def test_pair_prior_is_frozen_unless_asked(tiny_data, tmp_path):
    frozen = Trainer(config(tiny_data, tmp_path / "a", epochs=1), progress=False)
    fitted = frozen.model.pair.coefficients.detach().clone()
    frozen.run_epoch()
    torch.testing.assert_close(frozen.model.pair.coefficients, fitted, rtol=0, atol=0)
    trained = Trainer(config(tiny_data, tmp_path / "b", epochs=1, train_pair=True), progress=False)
    trained.run_epoch()
    assert not torch.equal(trained.model.pair.coefficients, fitted)


def test_spike_guard_skips_steps(tiny_data, tmp_path):
    """A guard that calls every loss after the first a spike leaves the weights as the
    first step made them, and counts the skipped steps."""
    trainer = Trainer(config(tiny_data, tmp_path, batch_size=1, spike_factor=1e-9), progress=False)
    record = trainer.run_epoch()
    after_first = [p.detach().clone() for p in trainer.model.parameters()]
    record = trainer.run_epoch()
    assert record["skipped_steps"] == 2 * trainer.steps_per_epoch - 1
    for p, q in zip(trainer.model.parameters(), after_first, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_train_command_line(tiny_data, tmp_path):
    """`symbreak train` parses its options into the run (recorded in the checkpoint) and
    writes the model and its metrics."""
    import json

    from symbreak import exit_codes
    from symbreak.cli import main

    out = tmp_path / "cli.pt"
    argv = ["train", "--data", str(tiny_data), "--workdir", str(tmp_path), "--output", str(out)]
    argv += ["--epochs", "1", "--n-test", "1", "--n-val", "1", "--threads", "1", "--quiet"]
    argv += ["--train-pair", "--force-loss", "huber", "--huber-delta", "0.2"]
    argv += ["--gas-weight", "0.5", "--gas-molecules", "4", "--gas-noise", "0.03"]
    argv += ["--gas-dimers", "2", "--pair-smoothing", "1e-3", "--pair-monotone-quantile", "0.02"]
    argv += ["--defect-weight", "2.5", "--defect-radius", "2.8"]
    argv += ["--model-config", json.dumps(TINY)]
    assert main([*argv, "--guard-short-range"]) == exit_codes.USAGE  # refits: needs --resume
    assert main([*argv, "--device", "gpu"]) == exit_codes.USAGE  # refused before any work
    assert main([*argv, "--schedule-minutes", "-1"]) == exit_codes.USAGE
    assert main([*argv, "--defect-weight", "0"]) == exit_codes.USAGE
    assert not (tmp_path / "checkpoint.pt").exists()
    assert main(argv) == 0
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["train_config"]
    assert (saved["gas_dimers"], saved["pair_smoothing"]) == (2, 1e-3)
    assert saved["pair_monotone_quantile"] == 0.02
    assert saved["train_pair"] is True and saved["force_loss"] == "huber"
    assert saved["huber_delta"] == 0.2 and saved["model"] == TINY
    assert (saved["defect_weight"], saved["defect_radius"]) == (2.5, 2.8)
    assert (saved["gas_weight"], saved["gas_molecules"], saved["gas_noise"]) == (0.5, 4, 0.03)
    assert out.is_file() and out.with_suffix(".metrics.json").is_file()


def test_three_body_prior_is_fitted_after_the_pair_prior(tiny_data, tmp_path):
    """From scratch: the three-body fit lowers the force error left by the pair prior,
    the PET's output scale is what remains, and the term stays frozen."""
    plain = Trainer(config(tiny_data, tmp_path / "a"), progress=False)
    three = Trainer(config(tiny_data, tmp_path / "b", model=TINY | {"three_body": True}))
    before = evaluate(plain.model, plain.train)["force_rmse_meV_A"]
    after = evaluate(three.model, three.train)["force_rmse_meV_A"]
    assert after < 0.95 * before
    assert after == pytest.approx(1e3 * three.three_body_fit["force_rmse"], rel=1e-4)
    assert three.model.energy_scale.item() == pytest.approx(three.three_body_fit["force_rmse"])
    fitted = three.model.three_body.coefficients.detach().clone()
    three.run_epoch()
    torch.testing.assert_close(three.model.three_body.coefficients, fitted, rtol=0, atol=0)


def test_resume_fits_three_body_to_a_trained_model(tiny_data, tmp_path):
    """A checkpoint without the term, resumed with it and --fit-three-body: the EMA model's
    training error drops, the fit is checkpointed and exported."""
    from symbreak.evaluator import Evaluator, Structure

    Trainer(config(tiny_data, tmp_path, epochs=1), progress=False).fit()
    cfg = config(tiny_data, tmp_path, epochs=1, model=TINY | {"three_body": True})
    cfg = dataclasses.replace(cfg, fit_three_body=True)
    trainer = Trainer(cfg, progress=False)
    trainer.load_checkpoint()
    fit = trainer.three_body_fit
    assert fit["force_rmse"] < 0.95 * fit["force_rmse_before"]
    assert evaluate(trainer.ema, trainer.train)["force_rmse_meV_A"] == pytest.approx(
        1e3 * fit["force_rmse"], rel=1e-4
    )
    trainer.fit()  # no epochs left: checkpoint and export
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["ema"]
    torch.testing.assert_close(
        saved["three_body.coefficients"], trainer.ema.three_body.coefficients
    )
    ev = Evaluator(tmp_path / "model.pt", dtype=torch.float64)
    assert ev.model.metadata.config["three_body"] is True
    atoms = ase.io.read(tiny_data, 0)
    res = ev.compute(Structure.from_atoms(atoms))[0]
    from symbreak.training_data import collate, make_samples, predict

    sample = make_samples([atoms], trainer.model_cfg.species, trainer.model_cfg.cutoff)[0]
    energy, forces = predict(trainer.ema.double(), collate([sample], None, torch.float64), False)
    np.testing.assert_allclose(res.forces, forces.detach().numpy(), atol=1e-8)
    without = Trainer(config(tiny_data, tmp_path), progress=False)
    with pytest.raises(ValueError, match="has a three-body prior: resume with"):
        without.load_checkpoint()  # would silently drop the fitted term


class _Payload:
    """Unpickling this runs code (it touches a file): what a checkpoint must not do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoints_are_read_as_data_only(tiny_data, tmp_path):
    """`train --resume` reads a checkpoint with weights_only: the shipped checkpoint loads,
    one carrying a pickled object is refused by name, and its code never runs."""
    shipped = DATA.parent / "training" / "water-revpbe0d3" / "checkpoint.pt"
    state = torch.load(shipped, weights_only=True)
    assert {"model", "ema", "optimizer", "epoch", "step"} <= set(state)
    trainer = Trainer(config(tiny_data, tmp_path), progress=False)
    marker = tmp_path / "code-ran"
    trainer.save_checkpoint()
    evil = torch.load(trainer.checkpoint_path(), weights_only=True) | {"x": _Payload(str(marker))}
    torch.save(evil, trainer.checkpoint_path())
    with pytest.raises(ValueError, match="checkpoint.pt holds more than tensors"):
        trainer.load_checkpoint()
    assert not marker.exists()


def shortest_by_ase(path, indices) -> dict[tuple[int, int], float]:
    """Shortest distance of each species pair (atomic numbers) in the frames, by ASE."""
    from ase.neighborlist import neighbor_list

    shortest: dict[tuple[int, int], float] = {}
    for k in indices:
        atoms = ase.io.read(path, k)
        i, j, d = neighbor_list("ijd", atoms, 3.5)
        for a, b, r in zip(atoms.numbers[i], atoms.numbers[j], d, strict=True):
            key = (min(a, b), max(a, b))
            shortest[key] = min(shortest.get(key, np.inf), r)
    return shortest


def test_fresh_run_puts_floors_and_walls_at_the_datas_shortest_distances(tiny_data, tmp_path):
    trainer = Trainer(config(tiny_data, tmp_path, gas_weight=1.0, gas_dimers=3), progress=False)
    reference = shortest_by_ase(tiny_data, trainer.split["train"])
    floor = trainer.model.short_range.floor.numpy()
    walls = trainer.model.pair.wall_radius.numpy()
    species = trainer.model_cfg.species
    for (za, zb), r in reference.items():
        a, b = species.index(za), species.index(zb)
        assert floor[a, b] == pytest.approx(r, abs=1e-12)
        assert walls[int(trainer.model.pair.pair_index[a, b])] == pytest.approx(r, abs=1e-12)
    trainer.fit()  # the gas-phase term with dimers trains
    assert all(np.isfinite(h["gas_force_msq"]) for h in trainer.history)


def test_resume_with_guard_short_range_refits_a_model_made_without(tiny_data, tmp_path):
    """An older checkpoint (no floors or walls) resumed with --guard-short-range: floors,
    walls and a repulsive pair prior below the data, kept by the export."""
    from symbreak.export import load_model

    first = Trainer(config(tiny_data, tmp_path, epochs=1), progress=False)
    with torch.no_grad():  # as a checkpoint from before the guards
        for model in (first.model, first.ema):
            model.short_range.floor.zero_()
            model.pair.wall_radius.zero_()
    first.fit()
    cfg = dataclasses.replace(config(tiny_data, tmp_path, epochs=1), guard_short_range=True)
    trainer = Trainer(cfg, progress=False)
    trainer.load_checkpoint()
    report = trainer.short_range_fit
    assert np.all(np.array(report["shortest_A"]) > 0)
    trainer.fit()
    loaded = load_model(tmp_path / "model.pt")
    state = loaded.module.state_dict()
    torch.testing.assert_close(
        state["inner.short_range.floor"].double(), torch.tensor(report["shortest_A"]).double()
    )
    # the exported pair prior repels below every wall, down to 0.3 Å
    pet = trainer.ema.double()
    for p in range(3):
        r = torch.linspace(0.3, float(pet.pair.wall_radius[p]), 200, dtype=torch.float64)
        index = torch.nonzero(pet.pair.pair_index == p)[0]
        species = index.clone()
        centers, neighbors = torch.zeros(200, dtype=torch.long), torch.ones(200, dtype=torch.long)
        with torch.no_grad():
            phi = pet.pair.edge_energies(species, centers, neighbors, r)
        assert torch.all(phi.diff() < 0)


def test_resume_at_a_longer_cutoff_keeps_the_transformer_and_refits_the_priors(tiny_data, tmp_path):
    """A run resumed with the priors' cutoff raised (the transformer's kept by
    ``learned_cutoff``) needs --guard-short-range, which refits the priors; the transformer
    starts from the checkpoint's weights and gives the same learned energies."""
    first = Trainer(config(tiny_data, tmp_path, epochs=1), progress=False)
    first.fit()
    longer = TINY | {"cutoff": 4.0, "learned_cutoff": 3.5}
    refused = Trainer(config(tiny_data, tmp_path, epochs=2, model=longer), progress=False)
    with pytest.raises(ValueError, match="add --guard-short-range to refit the priors"):
        refused.load_checkpoint()
    cfg = config(tiny_data, tmp_path, epochs=2, model=longer, guard_short_range=True)
    resumed = Trainer(cfg, progress=False, resuming=True)
    resumed.load_checkpoint()
    assert resumed.model.pair.coefficients.shape[1] > first.model.pair.coefficients.shape[1]

    def inputs(graph):
        names = ("species", "centers", "neighbors", "vectors", "reverse")
        tensors = [torch.from_numpy(getattr(graph, name)) for name in names]
        tensors[3] = tensors[3].float()  # the vectors, in the model's dtype
        return tensors

    long, short = resumed.train[0].graph, first.train[0].graph  # 4.0 and 3.5 Å
    assert len(long.centers) > len(short.centers)
    with torch.no_grad():
        torch.testing.assert_close(
            resumed.ema.learned_energies(*inputs(long)), first.ema.learned_energies(*inputs(short))
        )
    resumed.fit()
    assert resumed.epoch == 2 and np.isfinite(resumed.history[-1]["val_force_mae_meV_A"])


def test_resume_with_a_longer_transformer_cutoff_grows_its_edge_readouts(tiny_data, tmp_path):
    """A transformer resumed at a longer cutoff (a longer learned_cutoff) keeps every
    weight (the priors and baseline are refitted); its spline edge readouts get the new
    basis functions beyond the old cutoff, starting at zero, and a fresh optimiser (the
    old moments have the old shapes). The other way round is refused by name."""
    first = Trainer(config(tiny_data, tmp_path, epochs=1), progress=False)
    first.fit()
    longer = TINY | {"cutoff": 4.0}  # the transformer's cutoff too
    cfg = config(tiny_data, tmp_path, epochs=2, model=longer, guard_short_range=True)
    resumed = Trainer(cfg, progress=False, resuming=True)
    resumed.load_checkpoint()
    assert not resumed.optimizer.state  # fresh
    for name, old in first.model.state_dict().items():
        new = resumed.model.state_dict()[name]
        if ".head_edge.fc2." in name:
            assert new.shape[0] == old.shape[0] + 5  # 3.5 -> 4.0 Å, knots every 0.1 Å
            assert torch.equal(new[: old.shape[0]], old)
            assert not new[old.shape[0] :].any()
        elif not name.startswith(("pair.", "three_body.", "short_range.", "baseline")):
            assert torch.equal(new, old), name
    resumed.fit()
    assert resumed.epoch == 2 and np.isfinite(resumed.history[-1]["val_force_mae_meV_A"])

    shorter = TINY | {"cutoff": 4.0, "learned_cutoff": 3.0}
    back = Trainer(config(tiny_data, tmp_path, epochs=3, model=shorter), progress=False)
    with pytest.raises(ValueError, match="reads a longer cutoff"):
        back.load_checkpoint()


def test_schedule_minutes_fits_the_cosine_into_the_time(tiny_data, tmp_path, monkeypatch):
    """With a time budget the last epoch is set from the measured epoch time and the time
    left (re-estimated over the first three epochs); the run then ends there with the cosine
    fully decayed, and exports the model. A fake clock that advances 1 s per reading makes
    the times exact: an epoch measures 1 s, and the estimate after epoch e (the clock at
    3e s) sets the last epoch to e + (12 - 3e); the third estimate, 12 - 6 = 6, stands."""
    import types

    import symbreak.training

    readings = iter(range(10_000))
    monkeypatch.setattr(
        symbreak.training, "time", types.SimpleNamespace(monotonic=lambda: float(next(readings)))
    )
    trainer = Trainer(config(tiny_data, tmp_path, epochs=1000, schedule_minutes=0.2), False)
    trainer.fit()
    assert trainer.epoch == trainer.cfg.epochs == 6
    assert [r["seconds"] for r in trainer.history] == [1.0] * 6
    assert trainer.history[-1]["lr"] == pytest.approx(trainer.cfg.lr_min)
    assert trainer.history[2]["lr"] > 10 * trainer.cfg.lr_min  # decaying, not ended early
    assert (tmp_path / "model.pt").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_steps_follow_the_cpu_steps(tiny_data, tmp_path):
    """Two epochs on the GPU give the CPU's losses and validation errors (float32
    rounding apart), leave a CPU checkpoint that resumes on the CPU, and export a CPU model."""
    runs = {}
    for device in ("cpu", "cuda"):
        cfg = config(tiny_data, tmp_path / device, epochs=2, device=device, gas_weight=0.5)
        (tmp_path / device).mkdir()
        trainer = Trainer(cfg, progress=False)
        trainer.fit()
        runs[device] = trainer.history
    for cpu, gpu in zip(runs["cpu"], runs["cuda"], strict=True):
        for key in ("loss", "force_mse", "val_force_mae_meV_A", "val_energy_mae_meV_atom"):
            assert gpu[key] == pytest.approx(cpu[key], rel=2e-3), key
    state = torch.load(tmp_path / "cuda" / "checkpoint.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in state["model"].values())
    resumed = Trainer(config(tiny_data, tmp_path / "cuda", epochs=3), progress=False)
    resumed.load_checkpoint()
    resumed.fit()
    assert resumed.epoch == 3
    model = torch.jit.load(str(tmp_path / "cuda" / "model.pt"))
    assert all(t.device.type == "cpu" for t in model.state_dict().values())


def test_epoch_line_names_validation_errors_per_chemistry():
    from symbreak.training import by_kind

    record = {"val_force_mae_meV_A": 79.8, "val_H2_force_mae_meV_A": 204.7}
    assert by_kind(record) == ""  # one chemistry: the overall number says it
    record |= {"val_intact_force_mae_meV_A": 62.94, "val_ions_force_mae_meV_A": 56.1}
    assert by_kind(record) == " (intact 62.9, ions 56.1, H2 204.7)"


def test_force_loss_is_the_weighted_mean_over_atoms():
    from symbreak.training import force_loss

    rng = np.random.default_rng(0)
    f, ref = rng.normal(size=(2, 7, 3))
    w = rng.uniform(0.5, 3.0, size=7)
    t = [torch.from_numpy(v) for v in (f, ref, w)]
    err = f - ref
    expect = (w[:, None] * err**2).sum() / (3 * w.sum())
    assert force_loss(*t).item() == pytest.approx(expect, rel=1e-12)
    delta = 0.3
    huber = np.where(np.abs(err) < delta, err**2, 2 * delta * np.abs(err) - delta**2)
    expect = (w[:, None] * huber).sum() / (3 * w.sum())
    assert force_loss(*t, "huber", delta).item() == pytest.approx(expect, rel=1e-12)
    ones = torch.ones(7, dtype=torch.float64)
    assert force_loss(t[0], t[1], ones).item() == pytest.approx((err**2).mean(), rel=1e-12)


def test_defect_weight_needs_defects_in_the_training_frames(tmp_path):
    intact = tmp_path / "intact.xyz"
    frames = ase.io.read(DATA / "water_revpbe0d3_160.xyz", ":6")
    ase.io.write(intact, [frames[k] for k in (0, 2, 3, 4, 5)])
    with pytest.raises(ValueError, match=r"intact\.xyz: --defect-weight 3.0: no training frame"):
        Trainer(config(intact, tmp_path / "w", defect_weight=3.0), progress=False)
