"""The PET model: invariances, gradients, export, and its (intended) symmetry breaking."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import contract_inputs, export_tiny, small_water, strain_derivative, tiny_pet
from symbreak.evaluator import Evaluator, Structure
from symbreak.export import load_model, reexport_model
from symbreak.graph import build_graph


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def ev64(model_file):
    return Evaluator(model_file, dtype=torch.float64)


def structure(atoms) -> Structure:
    return Structure.from_atoms(atoms)


def energy(ev, atoms) -> float:
    return ev.compute(structure(atoms), gradients=False)[0].energy


def test_translation_and_permutation_invariance(ev64):
    atoms = small_water(8)
    ref = ev64.compute(structure(atoms))[0]
    moved = atoms.copy()
    moved.positions += np.array([3.1, -7.7, 12.9])  # also moves atoms out of the cell
    res = ev64.compute(structure(moved))[0]
    assert abs(res.energy - ref.energy) < 1e-10 * abs(ref.energy)
    np.testing.assert_allclose(res.forces, ref.forces, atol=1e-10)
    perm = np.random.default_rng(1).permutation(len(atoms))
    res = ev64.compute(structure(atoms[perm]))[0]
    assert abs(res.energy - ref.energy) < 1e-10 * abs(ref.energy)
    np.testing.assert_allclose(res.forces, ref.forces[perm], atol=1e-10)
    np.testing.assert_allclose(res.energies, ref.energies[perm], atol=1e-10)


def test_forces_are_minus_gradient(ev64):
    atoms = small_water(6, seed=3)
    res = ev64.compute(structure(atoms))[0]
    h = 1e-5
    rng = np.random.default_rng(0)
    for atom in rng.choice(len(atoms), 5, replace=False):
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[atom, axis] += h
            minus.positions[atom, axis] -= h
            fd = -(energy(ev64, plus) - energy(ev64, minus)) / (2 * h)
            assert res.forces[atom, axis] == pytest.approx(fd, abs=1e-6, rel=1e-6)


def test_virial_is_strain_derivative_on_triclinic_cell(ev64):
    atoms = small_water(6, seed=4, triclinic=True)
    res = ev64.compute(structure(atoms))[0]
    h = 1e-5
    # symmetric strain: the stress is the derivative w.r.t. symmetric strain
    numeric = strain_derivative(lambda a: energy(ev64, a), atoms, h)
    np.testing.assert_allclose(res.virial, numeric, atol=1e-6)


def test_torque_diagnostic_is_net_torque_of_forces(ev64):
    atoms = small_water(1, triclinic=False)
    atoms.pbc = False
    res = ev64.compute(structure(atoms))[0]
    torque = np.cross(atoms.positions, res.forces).sum(0)
    np.testing.assert_allclose(res.diagnostics["torque"], torque, atol=1e-10)
    assert np.linalg.norm(torque) > 1e-6  # a non-equivariant model does exert a torque


def test_torchscript_matches_eager():
    from symbreak.contract import AveragedModel

    model, cfg = tiny_pet(seed=2)
    eager = AveragedModel(model.double())
    scripted = torch.jit.script(eager)
    args = contract_inputs(small_water(8, seed=5, triclinic=True), cfg.cutoff)
    for policy in ("none", "lebedev:3+inv", "random+seed=4"):
        a, b = eager.compute(*args, policy, 2), scripted.compute(*args, policy, 2)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-12, atol=1e-12, msg=key)


def test_model_is_not_rotation_invariant(ev64):
    from scipy.spatial.transform import Rotation

    atoms = small_water(8, seed=6)
    e0 = energy(ev64, atoms)
    rotated = atoms.copy()
    rot = Rotation.from_euler("zyx", [0.3, 1.1, -0.4]).as_matrix()
    rotated.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    rotated.positions = atoms.positions @ rot.T
    e1 = energy(ev64, rotated)
    assert abs(e1 - e0) > 1e-8  # an untrained model: different; the shipped one: also close


def test_smooth_cutoff_energy_is_continuous(ev64):
    """One pair of atoms crossing the cutoff: no jump in energy (a hard cutoff would jump
    by the pair's whole contribution)."""
    from ase import Atoms

    cutoff = ev64.cutoff
    mol = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    energies = []
    delta = 1e-6
    for d in cutoff + delta * np.array([-3.0, -1.0, 1.0, 3.0]):
        pos = np.vstack([mol, mol + [d + 0.96, 0.0, 0.0]])  # O-O distance d + 0.96: H1..O2 = d
        atoms = Atoms("OH2OH2", positions=pos, cell=[50, 50, 50], pbc=False)
        energies.append(energy(ev64, atoms))
    # The whole molecule moves, so E has a slope; what must not be there is a step in
    # the middle interval, where the pair crosses the cutoff.
    steps = np.diff(energies)
    assert abs(steps[1] - steps[0]) < 1e-8 and abs(steps[1] - steps[2]) < 1e-8


def test_export_metadata_and_errors(model_file, tmp_path):
    loaded = load_model(model_file)
    meta = loaded.metadata
    assert meta.species == [1, 8]
    assert meta.receptive_field == pytest.approx(meta.cutoff * meta.config["n_mp_layers"])
    assert meta.torch_version == torch.__version__.split("+")[0]
    assert meta.units == {"length": "angstrom", "energy": "eV"}
    assert meta.contract == 2 and loaded.module.contract_version == 2
    # What the engines call: the contract's entry points.
    for method in ("compute", "accumulate", "merge", "finalize", "policy_rotations"):
        assert loaded.module._c._has_method(method), method

    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_model("no-such-model")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_model(corrupt)
    # Same archive, metadata claiming another torch version.
    other = tmp_path / "other.pt"
    module = torch.jit.load(str(model_file))
    bad = json.loads(meta.to_json()) | {"torch_version": "1.13.1"}
    torch.jit.save(module, str(other), _extra_files={"metadata.json": json.dumps(bad)})
    with pytest.raises(RuntimeError, match="torch 1.13.1"):
        load_model(other)


def test_unknown_species_is_named(ev64):
    from ase import Atoms

    atoms = Atoms("OH2Na", positions=np.random.default_rng(0).uniform(0, 5, (4, 3)), pbc=False)
    with pytest.raises(ValueError, match=r"atom 3 is Na"):
        ev64.compute(structure(atoms))


@pytest.mark.parametrize(
    "share, chunk_edges",
    [(slice(None), None), (slice(3, 11), None), (slice(None), 50), (slice(3, 11), 1)],
)
def test_compute_evaluates_the_priors_once_as_if_per_rotation(share, chunk_edges):
    """``accumulate`` evaluates the invariant priors once; everything it returns must equal
    the K-copy evaluation of the whole model (``atomic_energies`` of each rotated copy,
    autograd per copy), also for a subset of a grid whose weights do not sum to 1 (the
    evaluator's parallel workers each take such a group), and when the gradient is taken
    in chunks of atoms with recomputed forward passes (``chunk_edges``: 50 edges, i.e.
    several atoms per chunk, and 1, one atom per chunk)."""
    from symbreak.contract import AveragedModel
    from symbreak.rotations import AveragingPolicy

    model, cfg = tiny_pet(seed=3)
    model = model.double()
    assert model.use_pair and model.use_three_body
    atoms = small_water(8, seed=7, triclinic=True)
    g = build_graph(atoms.numbers, atoms.positions, atoms.cell.array, True, cfg.cutoff, cfg.species)
    species, centers, neighbors, reverse = (
        torch.from_numpy(a) for a in (g.species, g.centers, g.neighbors, g.reverse)
    )
    base = torch.from_numpy(g.vectors)
    rotations, weights = AveragingPolicy.parse("lebedev:3+inv").rotations()
    rotations = torch.from_numpy(rotations[share])
    weights = torch.from_numpy(weights[share])
    averaged = AveragedModel(model)
    if chunk_edges is not None:
        averaged.chunk_above_edges = averaged.chunk_edges = chunk_edges
        assert len(centers) > 4 * chunk_edges  # the chunked path runs, over several chunks
    out = averaged.accumulate(*contract_inputs(atoms, cfg.cutoff), rotations, weights, True, 0)

    e_k, eps_sum, f_k = [], torch.zeros(len(atoms), dtype=torch.float64), []
    grad_sum = torch.zeros_like(base)
    for rot, w in zip(rotations, weights, strict=True):
        vectors = (base @ rot.T).requires_grad_(True)
        eps = model.atomic_energies(species, centers, neighbors, vectors, reverse)
        (grad,) = torch.autograd.grad(eps.sum(), vectors)
        grad = grad @ rot  # back-rotated: ∂E_k/∂r = R_kᵀ ∂E/∂(R_k r)
        forces = torch.zeros(len(atoms), 3, dtype=torch.float64)
        forces = forces.index_add(0, centers, grad).index_add(0, neighbors, -grad)
        e_k.append(float(eps.detach().sum()) + float(model.baseline_energies(species).sum()))
        eps_sum += w * eps.detach()
        grad_sum += w * grad
        f_k.append(forces)
    e_k, f_k = np.array(e_k), torch.stack(f_k).numpy()
    w = weights.numpy()
    np.testing.assert_allclose(out["energy_per_rotation"][0].numpy(), e_k, rtol=1e-13)
    np.testing.assert_array_equal(out["weights"].numpy(), w)
    # the baseline is carried with the group's share of the weights, as the priors
    atomic = eps_sum + weights.sum() * model.baseline_energies(species)
    np.testing.assert_allclose(out["atomic_energies"].numpy(), atomic.numpy(), atol=1e-11)
    np.testing.assert_allclose(out["forces"].numpy(), np.einsum("k,kia->ia", w, f_k), atol=1e-11)
    np.testing.assert_allclose(out["edge_gradients"].numpy(), grad_sum.numpy(), atol=1e-11)
    sq = np.einsum("k,ki->i", w, (f_k**2).sum(2))
    np.testing.assert_allclose(out["forces_sq"].numpy(), sq, rtol=1e-11)
    # The check has teeth: the learned part's forces differ between the rotations.
    assert np.abs(f_k - f_k.mean(0)).max() > 1e-3


@pytest.mark.parametrize("policy", ["none", "lebedev:3+inv", "random+seed=4"])
def test_chunked_gradients_equal_the_whole_graph_in_the_scripted_file(policy):
    """The scripted contract with the gradient taken in chunks of atoms (forward passes
    recomputed) gives every output of the whole-graph backward pass: LAMMPS-style
    unselected (ghost) atoms included, float64, whatever the rotation batch."""
    from symbreak.contract import AveragedModel

    model, cfg = tiny_pet(seed=4)
    scripted = torch.jit.script(AveragedModel(model.double()))
    atoms = small_water(8, seed=9, triclinic=True)
    selected = torch.ones(len(atoms), dtype=torch.bool)
    selected[::5] = False
    args = contract_inputs(atoms, cfg.cutoff, selected=selected)
    whole = scripted.compute(*args, policy, 3, True, 0)
    scripted.chunk_above_edges = scripted.chunk_edges = 60
    for rotation_batch in (1, 0, 100):
        chunked = scripted.compute(*args, policy, 3, True, rotation_batch)
        assert whole.keys() == chunked.keys()
        for key in whole:
            torch.testing.assert_close(chunked[key], whole[key], rtol=1e-11, atol=1e-11, msg=key)
    assert float(whole["forces"].abs().max()) > 0.1


def test_layers_in_chunks_of_atoms_equal_the_whole_graph():
    """``layer_chunk_edges`` runs each layer, and the pair and three-body priors, over
    chunks of atoms: energies, forces and the training's second derivatives (a parameter
    gradient of a force loss) equal the whole-graph evaluation, float64, eager and
    scripted."""
    model, cfg = tiny_pet(seed=6)
    model = model.double()
    assert model.use_pair and model.use_three_body
    atoms = small_water(8, seed=3, triclinic=True)
    g = build_graph(atoms.numbers, atoms.positions, atoms.cell.array, True, cfg.cutoff, cfg.species)
    args = [torch.from_numpy(a) for a in (g.species, g.centers, g.neighbors)]
    reverse = torch.from_numpy(g.reverse)

    def evaluate(pet, chunk_edges):
        pet.layer_chunk_edges = chunk_edges
        vectors = torch.from_numpy(g.vectors).requires_grad_(True)
        energy = pet.atomic_energies(*args, vectors, reverse)
        (grad,) = torch.autograd.grad(energy.sum(), vectors, create_graph=True)
        (second,) = torch.autograd.grad((grad**2).sum(), [pet.layers[0].geometry.fc1.weight])
        return energy.detach(), grad.detach(), second

    whole = evaluate(model, 0)
    for pet in (model, torch.jit.script(model)):
        for chunk_edges in (40, 1):
            for a, b in zip(evaluate(pet, chunk_edges), whole, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
    assert len(g.centers) > 4 * 40 and float(whole[1].abs().max()) > 0.1


@pytest.mark.parametrize("policy", ["none", "lebedev:3", "random+seed=2"])
def test_batched_structures_in_groups_equal_one_graph(policy):
    """Beyond ``edge_budget`` edges, the structures of a batched call are evaluated in
    groups of whole structures; every output equals the one-graph evaluation (float64),
    with unselected atoms and structures of different sizes."""
    from symbreak.contract import AveragedModel

    model, cfg = tiny_pet(seed=5)
    scripted = torch.jit.script(AveragedModel(model.double()))
    frames = [small_water(n, seed=n, triclinic=True) for n in (8, 5, 8, 6)]
    parts = [contract_inputs(atoms, cfg.cutoff) for atoms in frames]
    offsets = np.cumsum([0] + [len(a) for a in frames])
    edge_offsets = np.cumsum([0] + [len(p[4]) for p in parts])
    args = [
        torch.cat([p[0] for p in parts]),
        torch.cat([p[1] for p in parts]),
        torch.cat([p[2] for p in parts]),
        torch.cat([torch.full((len(a),), b) for b, a in enumerate(frames)]),
        torch.cat([p[4] + int(o) for p, o in zip(parts, offsets, strict=False)]),
        torch.cat([p[5] + int(o) for p, o in zip(parts, offsets, strict=False)]),
        torch.cat([p[6] for p in parts]),
        torch.cat([p[7] + int(o) for p, o in zip(parts, edge_offsets, strict=False)]),
        torch.arange(offsets[-1]) % 7 != 3,
    ]
    whole = scripted.compute(*args, policy, 1, True, 0)
    scripted.edge_budget = int(max(len(p[4]) for p in parts)) + 1  # 1 or 2 structures a group
    grouped = scripted.compute(*args, policy, 1, True, 0)
    assert whole.keys() == grouped.keys()
    for key in whole:
        torch.testing.assert_close(grouped[key], whole[key], rtol=1e-11, atol=1e-11, msg=key)
    assert float(whole["forces"].abs().max()) > 0.1


def test_reexport_keeps_weights_and_metadata_and_updates_torch_version(model_file, tmp_path):
    """``symbreak export`` on a file that claims another torch version (which load_model
    refuses): the new file loads, carries this torch version and the same config and
    training record, and gives the same numbers as the original module."""
    from symbreak.cli import main

    meta = load_model(model_file).metadata
    other = tmp_path / "other.pt"
    module = torch.jit.load(str(model_file))
    old = json.loads(meta.to_json()) | {"torch_version": "1.13.1"}
    torch.jit.save(module, str(other), _extra_files={"metadata.json": json.dumps(old)})
    out = tmp_path / "new.pt"
    assert main(["export", str(other), "--output", str(out)]) == 0
    new = load_model(out).metadata
    assert new.torch_version == torch.__version__.split("+")[0]
    assert (new.config, new.training, new.species) == (meta.config, meta.training, meta.species)
    atoms = small_water(8, seed=9, triclinic=True)
    for policy in ("none", "lebedev:3+inv"):
        a = Evaluator(model_file, dtype=torch.float64).compute(structure(atoms), policy)[0]
        b = Evaluator(out, dtype=torch.float64).compute(structure(atoms), policy)[0]
        assert b.energy == pytest.approx(a.energy, rel=1e-13)
        np.testing.assert_allclose(b.forces, a.forces, rtol=0, atol=1e-11)
        np.testing.assert_allclose(b.virial, a.virial, rtol=0, atol=1e-11)
        spread = a.diagnostics["forces_rot_std_atoms"]
        np.testing.assert_allclose(b.diagnostics["forces_rot_std_atoms"], spread, atol=1e-9)
    assert main(["export", str(out), "--output", str(out)]) == 0  # in place
    assert load_model(out).metadata.config == meta.config

    # A config that does not fit the weights, and a file that is not a model: named.
    bad = json.loads(meta.to_json()) | {"config": meta.config | {"d_model": 8}}
    torch.jit.save(module, str(other), _extra_files={"metadata.json": json.dumps(bad)})
    with pytest.raises(ValueError, match="other.pt.*does not match its own config"):
        reexport_model(other, tmp_path / "x.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a zip file at all")
    assert main(["export", str(corrupt), "--output", str(tmp_path / "y.pt")]) == 2
    assert not (tmp_path / "y.pt").exists()
