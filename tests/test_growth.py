"""Function-preserving growth (symbreak.growth): a run resumed with more capacity starts
from exactly the energies and forces it stopped at, and the new capacity then learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_training import TINY, config, tiny_data  # noqa: F401 (tiny_data: a fixture)

from symbreak.training import Trainer
from symbreak.training_data import collate, predict

LARGER = {"d_ff": 64, "n_transformer_layers": 2, "n_mp_layers": 3}  # TINY: 32, 1, 2


def trained(data, workdir, model: dict = TINY) -> None:
    """One epoch of ``model``, checkpointed in ``workdir``."""
    Trainer(config(data, workdir, epochs=1, model=model), progress=False).fit()


def resumed(data, workdir, model: dict, epochs: int = 2) -> Trainer:
    trainer = Trainer(
        config(data, workdir, epochs=epochs, model=model), progress=False, resuming=True
    )
    trainer.load_checkpoint()
    return trainer


@pytest.mark.parametrize("change", [*({k: v} for k, v in LARGER.items()), LARGER])
def test_a_larger_model_resumes_with_the_same_energies_and_forces(tiny_data, tmp_path, change):  # noqa: F811
    trained(tiny_data, tmp_path)
    # The reference is the checkpoint loaded as it is: fit() ends with an energy offset
    # refitted after the last save.
    first = resumed(tiny_data, tmp_path, TINY)
    grown = resumed(tiny_data, tmp_path, TINY | change)
    assert sum(p.numel() for p in grown.model.parameters()) > sum(
        p.numel() for p in first.model.parameters()
    )
    assert not grown.optimizer.state  # fresh: the old moments have the old shapes
    batch = collate(first.train + first.val, rotations=None)
    for old, new in ((first.model, grown.model), (first.ema, grown.ema)):
        e_old, f_old = predict(old, batch, create_graph=False)
        e_new, f_new = predict(new, batch, create_graph=False)
        torch.testing.assert_close(e_new, e_old, rtol=0, atol=1e-9)
        torch.testing.assert_close(f_new, f_old, rtol=0, atol=1e-5)


def test_the_new_capacity_learns(tiny_data, tmp_path):  # noqa: F811
    """After an epoch the new blocks are no longer identities and the new layer's energy
    heads are no longer zero: the gradient reaches them through the zero initialisation."""
    trained(tiny_data, tmp_path)
    grown = resumed(tiny_data, tmp_path, TINY | LARGER)
    grown.fit()
    state = grown.model.state_dict()
    assert state["layers.0.blocks.1.out.weight"].abs().max() > 0
    assert state["layers.0.blocks.1.ff.fc2.weight"].abs().max() > 0
    assert state["layers.0.blocks.0.ff.fc2.weight"][:, 32:].abs().max() > 0
    assert state["layers.2.head_edge.fc2.weight"].abs().max() > 0
    assert np.isfinite(grown.history[-1]["val_force_mae_meV_A"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"d_ff": 16}, r"wider \(d_ff 32\) than this model's \(16\)"),
        ({"n_mp_layers": 1}, r"more message-passing layers \(n_mp_layers\).*layers\.1"),
    ],
)
def test_a_smaller_model_is_refused_by_name(tiny_data, tmp_path, change, message):  # noqa: F811
    trained(tiny_data, tmp_path)
    smaller = Trainer(config(tiny_data, tmp_path, epochs=2, model=TINY | change), progress=False)
    with pytest.raises(ValueError, match=message):
        smaller.load_checkpoint()


def test_fewer_transformer_blocks_are_refused_by_name(tiny_data, tmp_path):  # noqa: F811
    trained(tiny_data, tmp_path, TINY | LARGER)
    fewer_blocks = TINY | LARGER | {"n_transformer_layers": 1}
    fewer = Trainer(config(tiny_data, tmp_path, epochs=2, model=fewer_blocks), progress=False)
    with pytest.raises(ValueError, match=r"more transformer blocks.*blocks\.1"):
        fewer.load_checkpoint()
