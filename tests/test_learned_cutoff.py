"""A transformer cutoff below the model's (``PETConfig.learned_cutoff``): the transformer
reads only the shorter edges, the invariant priors all of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import export_tiny, small_water, tiny_pet
from symbreak.evaluator import Evaluator, Structure
from symbreak.graph import build_graph
from symbreak.model import PET, PETConfig

LONG, SHORT = 4.0, 3.0  # the model's cutoff and the transformer's (Å)


def graph_args(atoms, cutoff):
    g = build_graph(atoms.numbers, atoms.positions, atoms.cell.array, True, cutoff, [1, 8])
    species, centers, neighbors, reverse = (
        torch.from_numpy(a) for a in (g.species, g.centers, g.neighbors, g.reverse)
    )
    return species, centers, neighbors, torch.from_numpy(g.vectors), reverse


@pytest.fixture(scope="module")
def models():
    """The same transformer weights in a model of cutoff LONG reading SHORT, and in a
    model whose cutoff is SHORT (float64)."""
    long, _ = tiny_pet(seed=5, cutoff=LONG, three_body_cutoff=LONG, learned_cutoff=SHORT)
    short = PET(PETConfig(**(long_config(long) | {"cutoff": SHORT, "three_body_cutoff": SHORT})))
    own = short.state_dict()
    weights = {k: v for k, v in long.state_dict().items() if own[k].shape == v.shape}
    assert {k for k in own if k not in weights} == {"pair.coefficients", "three_body.coefficients"}
    short.load_state_dict(weights, strict=False)
    return long.double(), short.double()


def long_config(model) -> dict:
    return {
        "d_model": 16, "n_heads": 2, "d_ff": 32, "n_mp_layers": 2, "n_transformer_layers": 1,
        "n_radial": 4, "three_body": True, "learned_cutoff": model.learned_cutoff,
    }  # fmt: skip


def test_transformer_equals_one_built_at_its_own_cutoff(models):
    """Learned energies and their gradient from the LONG graph equal those of a model of
    cutoff SHORT on its own (shorter) graph: the edges beyond SHORT have no effect and get
    no gradient; the priors do read them."""
    long, short = models
    atoms = small_water(8, seed=2)
    args_long, args_short = graph_args(atoms, LONG), graph_args(atoms, SHORT)
    results = []
    for model, (species, centers, neighbors, vectors, reverse) in (
        (long, args_long),
        (short, args_short),
    ):
        vectors = vectors.clone().requires_grad_(True)
        energy = model.learned_energies(species, centers, neighbors, vectors, reverse)
        (grad,) = torch.autograd.grad(energy.sum(), vectors)
        r = torch.linalg.vector_norm(vectors.detach(), dim=1)
        results.append((energy.detach(), grad[r < SHORT], grad[r >= SHORT]))
    (e_long, g_long, g_beyond), (e_short, g_short, _) = results
    torch.testing.assert_close(e_long, e_short, rtol=1e-12, atol=1e-12)
    # the two graphs list the short edges in the same order (one neighbour list, cut)
    torch.testing.assert_close(g_long, g_short, rtol=1e-12, atol=1e-12)
    assert len(g_beyond) > 100 and float(g_beyond.abs().max()) == 0.0
    assert float(e_long.abs().max()) > 0.01
    species, centers, neighbors, vectors, _ = args_long
    r = torch.linalg.vector_norm(vectors, dim=1)
    far = r >= SHORT
    with torch.no_grad():
        near = long.prior_energies(species, centers[~far], neighbors[~far], vectors[~far])
        full = long.prior_energies(species, centers, neighbors, vectors)
    assert float((full - near).abs().max()) > 1e-3


def test_chunked_gradients_and_messages_follow_the_full_edge_list(models):
    """The memory-bounded gradient path (chunks, recomputed forward) gives the autograd
    gradient on the full edge list, and the messages a direct force head reads come with
    the indices of their edges in the full list."""
    long, _ = models
    atoms = small_water(8, seed=4)
    species, centers, neighbors, vectors, reverse = graph_args(atoms, LONG)
    weights = torch.from_numpy(np.random.default_rng(0).uniform(0.5, 1.5, len(atoms)))
    leaf = vectors.clone().requires_grad_(True)
    energy = long.learned_energies(species, centers, neighbors, leaf, reverse)
    (reference,) = torch.autograd.grad((weights * energy).sum(), leaf)
    for chunk_edges in (50, 1_000_000):
        e, grad = long.learned_energies_and_gradients(
            species, centers, neighbors, vectors, reverse, weights, chunk_edges
        )
        torch.testing.assert_close(e, energy.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, reference, rtol=1e-11, atol=1e-12)
    _, message, order = long.learned_energies_and_messages(
        species, centers, neighbors, vectors, reverse
    )
    r = torch.linalg.vector_norm(vectors, dim=1)
    assert message.shape[0] == order.shape[0] == int((r < SHORT).sum()) < len(r)
    assert bool((r[order] < SHORT).all()) and len(set(order.tolist())) == len(order)


def test_exported_model_forces_are_minus_gradient(tmp_path):
    """Through the file and the Evaluator: forces are −∇E by central differences across
    edges entering both cutoffs."""
    path = export_tiny(
        tmp_path / "long.pt", seed=7, cutoff=LONG, three_body_cutoff=LONG, learned_cutoff=SHORT
    )
    ev = Evaluator(path, dtype=torch.float64)
    assert ev.cutoff == LONG
    atoms = small_water(6, seed=5)
    result = ev.compute(Structure.from_atoms(atoms))[0]
    h = 1e-5
    for atom in np.random.default_rng(1).choice(len(atoms), 4, replace=False):
        for axis in range(3):
            shifted = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[atom, axis] += sign * h
                shifted.append(ev.compute(Structure.from_atoms(moved), gradients=False)[0].energy)
            fd = -(shifted[0] - shifted[1]) / (2 * h)
            assert result.forces[atom, axis] == pytest.approx(fd, abs=1e-6, rel=1e-6)


@pytest.mark.parametrize("value", [4.5, 0.2])
def test_learned_cutoff_outside_its_range_is_refused(value):
    with pytest.raises(ValueError, match=f"learned_cutoff {value} Å must lie in"):
        PET(PETConfig(cutoff=3.5, learned_cutoff=value))
