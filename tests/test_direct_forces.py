"""The direct force head (training only): what it reads, what it starts from, and a run
that trains with it and then fine-tunes conservatively."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_training import TINY, config, tiny_data  # noqa: F401 (the fixture)

from helpers import water_frame
from symbreak.direct_forces import DirectForceHead
from symbreak.graph import build_graph
from symbreak.model import PET, PETConfig
from symbreak.training import Trainer
from symbreak.training_data import collate, evaluate, predict


def graph_tensors(model: PET, atoms):
    g = build_graph(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, model.cutoff,
                    model.species)  # fmt: skip
    long = [torch.from_numpy(getattr(g, k)).long() for k in ("species", "centers", "neighbors")]
    return (*long, torch.from_numpy(g.vectors), torch.from_numpy(g.reverse).long())


@pytest.mark.parametrize("chunk_edges", [0, 300])
def test_messages_come_with_their_edges(chunk_edges):
    """learned_energies_and_messages gives learned_energies' energies bit for bit, one
    message per edge, and the same message for each edge whether the layers run whole or
    in chunks of atoms."""
    torch.manual_seed(0)
    model = PET(PETConfig(species=[1, 8], **TINY)).double()
    for p in model.parameters():  # non-zero readouts
        torch.nn.init.normal_(p, std=0.2)
    args = graph_tensors(model, water_frame())
    model.layer_chunk_edges = 0
    energy_whole, message_whole, order_whole = model.learned_energies_and_messages(*args)
    model.layer_chunk_edges = chunk_edges
    energy, message, order = model.learned_energies_and_messages(*args)
    assert torch.equal(energy, model.learned_energies(*args))
    n_edges = args[1].shape[0]
    assert message.shape == (n_edges, model.d_model)
    assert torch.equal(torch.sort(order).values, torch.arange(n_edges))  # a permutation
    by_edge = torch.empty_like(message).index_copy_(0, order, message)
    by_edge_whole = torch.empty_like(message).index_copy_(0, order_whole, message_whole)
    torch.testing.assert_close(by_edge, by_edge_whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(energy, energy_whole, rtol=0, atol=1e-12)


def test_a_fresh_head_gives_the_conservative_forces_of_a_fresh_model(tiny_data, tmp_path):  # noqa: F811
    """Zero-initialised head and readouts: the direct forces are the priors' −∇E, equal to
    the conservative forces (autograd through the whole model) of the same batch; a
    trained head moves them."""
    trainer = Trainer(config(tiny_data, tmp_path), progress=False)
    batch = collate(trainer.train[:2], None)
    head = DirectForceHead(trainer.model_cfg.d_model)
    energy, forces = predict(trainer.model, batch, create_graph=False, head=head)
    energy_ref, forces_ref = predict(trainer.model, batch, create_graph=False)
    torch.testing.assert_close(energy, energy_ref, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(forces, forces_ref, rtol=1e-5, atol=1e-5)
    assert forces.abs().max() > 0.1  # the prior's forces are not trivially zero
    torch.nn.init.normal_(head.mlp.fc2.weight, std=0.1)
    _, moved = predict(trainer.model, batch, create_graph=False, head=head)
    assert (moved - forces).abs().max() > 1e-3


def test_direct_training_then_conservative_fine_tuning(tiny_data, tmp_path):  # noqa: F811
    """A run with --direct-forces learns the head's forces (its validation-free train error
    falls) and checkpoints the head; resumed with the flag the head comes back exactly;
    resumed without it, training continues conservatively from the same backbone."""
    model = TINY | {"pair_prior": False}  # something left for a few steps to learn
    cfg = config(tiny_data, tmp_path, epochs=12, batch_size=1, direct_forces=True, model=model)
    trainer = Trainer(cfg, progress=False)
    before = evaluate(trainer.model, trainer.train, head=trainer.direct_head)
    trainer.fit()
    after = evaluate(trainer.model, trainer.train, head=trainer.direct_head)
    assert after["force_rmse_meV_A"] < 0.95 * before["force_rmse_meV_A"]  # 0.885 here
    assert "val_direct_force_mae_meV_A" in trainer.history[-1]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert "direct_head" in state

    again = Trainer(config(tiny_data, tmp_path, epochs=12, batch_size=1, direct_forces=True,
                           model=model), progress=False)  # fmt: skip
    again.load_checkpoint()
    for a, b in zip(again.direct_head.state_dict().values(),
                    trainer.direct_head.state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(a, b)

    fine = Trainer(config(tiny_data, tmp_path, epochs=13, batch_size=1, model=model),
                   progress=False)  # fmt: skip
    fine.load_checkpoint()
    assert fine.direct_head is None
    for a, b in zip(fine.model.state_dict().values(), trainer.model.state_dict().values(),
                    strict=True):  # fmt: skip
        assert torch.equal(a, b)
    fine.fit()  # one conservative epoch
    assert fine.epoch == 13 and "val_direct_force_mae_meV_A" not in fine.history[-1]
    assert np.isfinite(fine.history[-1]["val_force_mae_meV_A"])


def test_train_command_line_takes_direct_forces(tiny_data, tmp_path):  # noqa: F811
    """`symbreak train --direct-forces` records the option and checkpoints the head; the
    exported model is the conservative PET (forces −∇E), as every engine needs."""
    import json

    from symbreak.cli import main
    from symbreak.evaluator import Evaluator, Structure

    out = tmp_path / "cli.pt"
    argv = ["train", "--data", str(tiny_data), "--workdir", str(tmp_path), "--output", str(out)]
    argv += ["--epochs", "1", "--n-test", "1", "--n-val", "1", "--threads", "1", "--quiet"]
    argv += ["--direct-forces", "--model-config", json.dumps(TINY)]
    assert main(argv) == 0
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["train_config"]["direct_forces"] is True and "direct_head" in state
    atoms = water_frame()
    result = Evaluator(str(out), dtype=torch.float64).compute(Structure.from_atoms(atoms))[0]
    step = 1e-4
    moved = atoms.copy()
    moved.positions[5, 2] += step
    back = atoms.copy()
    back.positions[5, 2] -= step
    ev = Evaluator(str(out), dtype=torch.float64)
    e_plus = ev.compute(Structure.from_atoms(moved))[0].energy
    e_minus = ev.compute(Structure.from_atoms(back))[0].energy
    assert result.forces[5, 2] == pytest.approx(-(e_plus - e_minus) / (2 * step), abs=1e-5)
