"""The exported model contract (symbreak.contract): what every engine calls.

Checked against independent references: the grid tables a file carries against
symbreak.rotations.grid (itself checked against i-PI's grids in test_rotations), the
random rotations against symbreak.policy, energies of selected atoms against sums of
atomic energies and their forces against finite differences, grouped evaluation against
one call, and the file checks done at loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms

from helpers import contract_inputs, export_tiny, small_water, tiny_pet
from symbreak.contract import AveragedModel, carried_grids
from symbreak.evaluator import Evaluator, Structure
from symbreak.export import load_model
from symbreak.policy import random_rotations
from symbreak.rotations import AveragingPolicy, grid


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("contract") / "tiny.pt", seed=4)


@pytest.fixture(scope="module")
def module64(model_file):
    return Evaluator(model_file, dtype=torch.float64).module


def test_file_grids_are_bit_for_bit_the_reference_grids(module64) -> None:
    carried = carried_grids()
    assert ("legendre", 8) in carried and ("lebedev", 17) in carried
    assert ("legendre", 9) not in carried  # 2601 rotations: beyond the default bound
    for family, order in [*carried, ("none", 1), ("legendre", 1), ("lebedev", 1)]:
        spec = family if family == "none" else f"{family}:{order}"
        for inversion in (False, True):
            text = spec + ("+inv" if inversion else "") + "+max=4000"
            rot, w = module64.policy_rotations(text, 0)
            ref_r, ref_w = grid(spec, inversion)
            assert np.array_equal(rot.numpy(), ref_r), text
            assert np.array_equal(w.numpy(), ref_w), text


def test_file_random_rotations_are_the_policy_stream(module64) -> None:
    for counter in (0, 1, 7):
        for text, inversion in (("random+seed=3", False), ("random+inv+seed=3", True)):
            rot, w = module64.policy_rotations(text, counter)
            ref_r, ref_w = random_rotations(3, counter, inversion)
            assert torch.equal(rot, ref_r) and torch.equal(w, ref_w)
    with pytest.raises(torch.jit.Error, match="needs the seed"):
        module64.policy_rotations("random", 0)
    with pytest.raises(torch.jit.Error, match="carries the grids of at most 2000"):
        module64.policy_rotations("legendre:9+max=2601", 0)


def test_grids_beyond_the_file_come_from_python(model_file) -> None:
    """With the bound raised on purpose, the evaluator averages over numpy's grid."""
    ev = Evaluator(model_file, dtype=torch.float64)
    mol = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], pbc=False)
    big = ev.compute(Structure.from_atoms(mol), "lebedev:19+max=2774")[0]
    assert big.diagnostics["n_rotations"] == 2774
    # A rotated molecule: a converged average barely moves (the plain model moves more).
    rot = random_rotations(5, 0, False)[0][0].numpy()
    turned = mol.copy()
    turned.positions = mol.positions @ rot.T
    big_turned = ev.compute(Structure.from_atoms(turned), "lebedev:19+max=2774")[0]
    plain = [ev.compute(Structure.from_atoms(m), "none")[0].energy for m in (mol, turned)]
    assert abs(big_turned.energy - big.energy) < 1e-3 * abs(plain[1] - plain[0])


def test_selected_atoms_energy_and_its_forces(module64) -> None:
    """LAMMPS's case: only some atoms' energies count. The energy is the sum of their
    atomic energies, and the forces on all atoms are minus its gradient (finite
    differences, float64), for a plain and an averaged policy."""
    atoms = small_water(6, seed=3, triclinic=True)
    selected = torch.zeros(len(atoms), dtype=torch.bool)
    selected[::3] = True
    for policy in ("none", "lebedev:3+inv"):
        full = module64.compute(*contract_inputs(atoms, 3.5), policy, 0)
        out = module64.compute(*contract_inputs(atoms, 3.5, selected), policy, 0)
        assert float(out["energy"][0]) == pytest.approx(
            float(full["atomic_energies"][selected].sum()), rel=1e-12
        )
        h = 1e-5
        for atom, axis in ((0, 0), (4, 2), (7, 1)):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[atom, axis] += sign * h
                energies.append(
                    float(
                        module64.compute(*contract_inputs(moved, 3.5, selected), policy, 0)[
                            "energy"
                        ][0]
                    )
                )
            numeric = -(energies[0] - energies[1]) / (2 * h)
            assert float(out["forces"][atom, axis]) == pytest.approx(numeric, abs=1e-6)


def test_grouped_evaluation_equals_one_call(module64) -> None:
    """accumulate over groups of a grid's rotations, merged, finalises to one call."""
    atoms = small_water(4, seed=8, triclinic=True)
    args = contract_inputs(atoms, 3.5)
    one = module64.compute(*args, "lebedev:5", 0)
    rot, w = module64.policy_rotations("lebedev:5", 0)
    parts = [module64.accumulate(*args, rot[a:b], w[a:b], True, 0) for a, b in ((0, 31), (31, 70))]
    merged = module64.finalize(module64.merge(parts), args[3], args[8])
    assert merged.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(merged[key], one[key], rtol=1e-12, atol=1e-11, msg=key)


def test_bad_atoms_are_named_by_the_file(module64) -> None:
    atoms = small_water(2, seed=1, triclinic=True)
    numbers = torch.from_numpy(atoms.numbers.astype(np.int64)).clone()
    numbers[3] = 200
    args = contract_inputs(atoms, 3.5)
    args[0] = numbers
    with pytest.raises(torch.jit.Error, match="atom 3 has atomic number 200"):
        module64.compute(*args, "none", 0)
    args = contract_inputs(atoms, 3.5)  # edges of the real structure (atoms 0 and 1 are bonded)
    crowded = atoms.positions.copy()
    crowded[1] = crowded[0] + [5e-5, 0, 0]
    args[1] = torch.from_numpy(crowded)
    with pytest.raises(torch.jit.Error, match="atoms 0 and 1 .* apart: overlapping atoms"):
        module64.compute(*args, "none", 0)


def test_python_front_ends_name_bad_atoms(model_file) -> None:
    from symbreak.engines.ase import SymbreakCalculator

    atoms = small_water(2, seed=1, triclinic=True)
    atoms.numbers[2] = 200
    atoms.calc = SymbreakCalculator(model_file)
    with pytest.raises(ValueError, match="atom 2 has atomic number 200"):
        atoms.get_potential_energy()


def test_loading_checks_the_metadata_against_the_module(model_file, tmp_path) -> None:
    meta = json.loads(load_model(model_file).metadata.to_json())
    module = torch.jit.load(str(model_file))
    swapped = tmp_path / "swapped.pt"
    torch.jit.save(
        module, str(swapped), _extra_files={"metadata.json": json.dumps(meta | {"species": [8, 1]})}
    )
    with pytest.raises(ValueError, match=r"swapped.pt.*species = \[8, 1\].*\[1, 8\]"):
        load_model(swapped)
    shorter = tmp_path / "cutoff.pt"
    torch.jit.save(
        module, str(shorter), _extra_files={"metadata.json": json.dumps(meta | {"cutoff": 3.0})}
    )
    with pytest.raises(ValueError, match="cutoff"):
        load_model(shorter)

    class NoEntryPoints(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    empty = tmp_path / "empty.pt"
    torch.jit.save(
        torch.jit.script(NoEntryPoints()),
        str(empty),
        _extra_files={"metadata.json": json.dumps(meta)},
    )
    with pytest.raises(ValueError, match="empty.pt.*no method"):
        load_model(empty)


def test_files_from_before_the_contract_are_wrapped_on_loading(tmp_path) -> None:
    """A version-1 file (a bare scripted PET, metadata without 'contract') loads, wrapped
    in memory, and gives the numbers of the same weights exported now."""
    model, cfg = tiny_pet(seed=6)
    old = tmp_path / "old.pt"
    meta = {
        "species": [1, 8], "cutoff": cfg.cutoff, "receptive_field": cfg.cutoff * cfg.n_mp_layers,
        "torch_version": torch.__version__.split("+")[0], "config": cfg.to_dict(), "training": {},
    }  # fmt: skip
    torch.jit.save(
        torch.jit.script(model.eval()), str(old), _extra_files={"metadata.json": json.dumps(meta)}
    )
    loaded = load_model(old)
    assert loaded.upgraded and loaded.metadata.contract == 2
    new = export_tiny(tmp_path / "new.pt", seed=6)
    atoms = small_water(4, seed=2, triclinic=True)
    a = Evaluator(loaded, dtype=torch.float64).compute(Structure.from_atoms(atoms), "lebedev:3")[0]
    b = Evaluator(new, dtype=torch.float64).compute(Structure.from_atoms(atoms), "lebedev:3")[0]
    assert a.energy == b.energy
    np.testing.assert_array_equal(a.forces, b.forces)


def test_eager_wrapper_matches_file(model_file) -> None:
    """The scripted file and the eager wrapper of the same weights agree (float32)."""
    model, _ = tiny_pet(seed=4)
    eager = AveragedModel(model)
    scripted = load_model(model_file).module
    args = contract_inputs(small_water(4, seed=5, triclinic=True), 3.5)
    with torch.no_grad():
        a = eager.compute(*args, "legendre:2+inv", 0, False)
    b = scripted.compute(*args, "legendre:2+inv", 0, False)
    torch.testing.assert_close(a["energy"], b["energy"], rtol=1e-12, atol=0)
    assert AveragingPolicy.parse("legendre:2+inv").n_rotations == b["weights"].shape[0] == 36
