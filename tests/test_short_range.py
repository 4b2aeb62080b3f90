"""The short-range guards (symbreak.short_range): the floor, the pair prior's wall and
its shaped fit, each against finite differences or the unguarded model where the data are."""

from __future__ import annotations

import numpy as np
import torch

from helpers import export_tiny, small_water, symbreak_cli, tiny_pet, water_frame
from symbreak.evaluator import Evaluator
from symbreak.export import load_model, rebuild_pet
from symbreak.graph import build_graph
from symbreak.pair import PairPrior, fit_pair_prior
from symbreak.prior_fits import set_short_range
from symbreak.scans import dimer
from symbreak.short_range import ShortRangeFloor, short_range_bounds, soft_floor
from symbreak.training_data import Sample

FLOOR = 0.8


def test_soft_floor_is_exact_above_smooth_at_and_flat_below_the_floor():
    r = torch.linspace(0.0, 2.0, 2001, dtype=torch.float64, requires_grad=True)
    floor = torch.full_like(r, FLOOR)
    g = soft_floor(r, floor, 0.1)
    (dg,) = torch.autograd.grad(g.sum(), r, create_graph=True)
    (d2g,) = torch.autograd.grad(dg.sum(), r)
    above = r.detach() >= FLOOR
    assert torch.equal(g[above], r[above])  # bit for bit where there are data
    assert g.min() >= FLOOR - 0.1 and torch.all(dg >= 0)
    assert dg[0] < 1e-6  # flat deep below: a contact's length no longer matters
    # C²: slope 1 and curvature 0 on both sides of the floor
    x = torch.tensor([FLOOR - 1e-7], dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(
        soft_floor(x, torch.full_like(x, FLOOR), 0.1), x, create_graph=True
    )
    (curvature,) = torch.autograd.grad(slope, x)
    assert abs(slope - 1) < 1e-10 and abs(curvature) < 1e-4


def test_floor_vectors_keep_directions_and_leave_longer_edges_alone():
    floors = ShortRangeFloor(2).double()
    floors.floor.fill_(FLOOR)
    rng = np.random.default_rng(1)
    vectors = torch.from_numpy(rng.normal(size=(50, 3)))
    species = torch.tensor([0, 1])
    pairs = torch.from_numpy(rng.integers(2, size=(2, 50)))
    out = floors.vectors(species, pairs[0], pairs[1], vectors)
    r, r_out = vectors.norm(dim=1), out.norm(dim=1)
    assert torch.equal(out[r >= FLOOR], vectors[r >= FLOOR])
    torch.testing.assert_close(out / r_out[:, None], vectors / r[:, None])
    assert torch.all(r_out[r < FLOOR] > r[r < FLOOR])


def smooth_prior() -> PairPrior:
    """A one-species prior: a Morse-like well at 1 Å sampled from 0.5 Å (spline knots)."""
    prior = PairPrior(1, cutoff=3.5, r_min=0.5, spacing=0.1).double()
    centres = 0.5 + (np.arange(prior.n_basis) - 1) * 0.1
    morse = 2.0 * (1 - np.exp(-2.0 * (centres - 1.0))) ** 2 - 2.0
    taper = np.clip((3.3 - centres) / 0.8, 0, 1)
    with torch.no_grad():
        prior.coefficients.copy_(torch.from_numpy(morse * taper)[None])
    return prior


def test_pair_wall_joins_the_spline_smoothly_and_repels_down_to_zero():
    prior = smooth_prior()
    r_w = 0.85
    prior.wall_radius.fill_(r_w)
    zero = torch.zeros(1, dtype=torch.long)

    def phi(r: torch.Tensor) -> torch.Tensor:
        return prior.edge_energies(zero, zero.expand(len(r)), zero.expand(len(r)), r)

    r = torch.linspace(0.0, 1.0, 10001, dtype=torch.float64, requires_grad=True)
    energy = phi(r)
    (force,) = torch.autograd.grad(-energy.sum(), r)
    below = r.detach() < r_w
    assert torch.all(force[below] > 0)  # repulsive everywhere below the wall radius
    assert torch.isfinite(energy).all() and energy[0] < 1e4  # bounded at r = 0
    # value, slope and curvature of the spline continue across r_w (central differences)
    h = 1e-4
    left = torch.tensor([r_w - h, r_w - 2 * h], dtype=torch.float64)
    right = torch.tensor([r_w + h, r_w + 2 * h], dtype=torch.float64)
    with torch.no_grad():
        el, er, e0 = phi(left), phi(right), phi(torch.tensor([r_w], dtype=torch.float64))
    assert abs(el[0] - e0) < 1e-2 and abs(er[0] - e0) < 1e-2
    slope_left, slope_right = (e0 - el[0]) / h, (er[0] - e0) / h
    assert abs(slope_left - slope_right) < 0.05 * abs(slope_right)
    curvature_left = (e0 - 2 * el[0] + el[1]) / h**2
    curvature_right = (e0 - 2 * er[0] + er[1]) / h**2
    assert abs(curvature_left - curvature_right) < 0.05 * abs(curvature_right)
    # with no wall, the spline alone (which goes back to zero below r_min)
    prior.wall_radius.zero_()
    with torch.no_grad():
        assert phi(torch.tensor([0.3], dtype=torch.float64)) < phi(torch.tensor([0.5]).double())


def test_monotone_smoothed_fit_where_data_are_thin():
    """Samples of a repulsive curve, dense above 1.6 Å and three points between 1.0 and
    1.6 Å: the free fit may oscillate there, the shaped one is non-increasing and smooth."""
    truth = smooth_prior()
    rng = np.random.default_rng(3)
    samples = []
    for k in range(30):
        r = rng.uniform(1.6, 3.2) if k >= 3 else [1.05, 1.3, 1.55][k]
        atoms = dimer((1, 1), np.array([r]))[0]
        g = build_graph(atoms.numbers, atoms.positions, atoms.cell.array, [False] * 3, 3.5, [1])
        vectors = torch.from_numpy(g.vectors).requires_grad_(True)
        centers, neighbors = torch.from_numpy(g.centers), torch.from_numpy(g.neighbors)
        species = torch.from_numpy(g.species)
        e = 0.5 * truth.edge_energies(species, centers, neighbors, vectors.norm(dim=1)).sum()
        (grad,) = torch.autograd.grad(e, vectors)
        forces = torch.zeros(2, 3, dtype=torch.float64).index_add(0, centers, grad)
        forces = forces.index_add(0, neighbors, -grad)
        samples.append(Sample(g, float(e.detach()), forces.numpy()))
    shaped = PairPrior(1, cutoff=3.5, r_min=0.5, spacing=0.1).double()
    fit_pair_prior(shaped, samples, 1, monotone_below=np.array([[1.0]]), smoothing=1e-4)
    r = torch.linspace(0.55, 0.85, 200, dtype=torch.float64)
    zero = torch.zeros(len(r), dtype=torch.long)
    with torch.no_grad():
        curve = shaped.edge_energies(torch.zeros(1, dtype=torch.long), zero, zero, r)
    assert torch.all(curve.diff() <= 1e-9)
    # where the data are dense it still follows them
    r = torch.linspace(1.8, 3.0, 50, dtype=torch.float64)
    zero = torch.zeros(len(r), dtype=torch.long)
    with torch.no_grad():
        fitted = shaped.edge_energies(torch.zeros(1, dtype=torch.long), zero, zero, r)
        reference = truth.edge_energies(torch.zeros(1, dtype=torch.long), zero, zero, r)
    assert (fitted - fitted.mean() - reference + reference.mean()).abs().max() < 0.05


def model_energy(model, atoms) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces [N, 3] (eV/Å) of a PET on ASE atoms, float64."""
    g = build_graph(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, 3.5, [1, 8])
    vectors = torch.from_numpy(g.vectors).requires_grad_(True)
    centers, neighbors = torch.from_numpy(g.centers), torch.from_numpy(g.neighbors)
    eps = model.atomic_energies(
        torch.from_numpy(g.species), centers, neighbors, vectors, torch.from_numpy(g.reverse)
    )
    (grad,) = torch.autograd.grad(eps.sum(), vectors)
    forces = torch.zeros(len(atoms), 3, dtype=torch.float64).index_add(0, centers, grad)
    return float(eps.sum().detach()), forces.index_add(0, neighbors, -grad).numpy()


def test_guards_change_nothing_above_the_floors_and_give_exact_forces_below():
    model, _ = tiny_pet(seed=2)
    model = model.double()
    model.short_range.floor.zero_()  # the helper's floors off: the free model
    atoms = small_water(seed=4)
    free_energy, free_forces = model_energy(model, atoms)
    g = build_graph(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, 3.5, [1, 8])
    # floors just below the frame's shortest contacts: the tiny model's random prior is not
    # repulsive there, so a contact exactly at its floor would meet the wall's kink
    set_short_range(model, short_range_bounds([g], 2)[0] - 1e-3)
    energy, forces = model_energy(model, atoms)
    assert energy == free_energy  # and forces to rounding (autograd adds exact zeros)
    np.testing.assert_allclose(forces, free_forces, rtol=1e-13, atol=1e-13)
    # An H pushed onto a neighbour, well below every floor: forces are -∇E there too.
    squeezed = atoms.copy()
    h = int(np.flatnonzero(atoms.numbers == 1)[0])
    other = int(np.argsort(atoms.get_distances(h, range(len(atoms)), mic=True))[1])
    vector = atoms.get_distance(h, other, mic=True, vector=True)
    squeezed.positions[h] += vector * (1 - 0.45 / np.linalg.norm(vector))
    _, f = model_energy(model, squeezed)
    step = 1e-5
    for axis in range(3):
        plus, minus = squeezed.copy(), squeezed.copy()
        plus.positions[h, axis] += step
        minus.positions[h, axis] -= step
        numeric = -(model_energy(model, plus)[0] - model_energy(model, minus)[0]) / (2 * step)
        assert abs(numeric - f[h, axis]) < 1e-5 * max(1.0, abs(numeric))


def test_minima_counts_wells_not_ripples():
    from symbreak.scans import minima

    r = np.linspace(0.5, 3.0, 300)
    well = 1 - np.exp(-(((r - 1.0) / 0.3) ** 2))  # one well of 1 eV at 1 Å, flat beyond 2 Å
    ripple = well + 2e-4 * np.sin(40 * r)  # sub-meV ripples on the flat tail
    second = well - 0.01 * np.exp(-(((r - 2.5) / 0.1) ** 2))  # a 10 meV well at 2.5 Å
    assert minima(well) == 1 and minima(ripple) == 1 and minima(ripple, 0) > 1
    assert minima(second) == 2


def test_export_raises_a_floor_and_refuses_to_lower_one(tmp_path):
    """``symbreak export --floor H-H=1.0``: the file's H–H floor is raised; energies of a frame
    whose H–H contacts are all above 1.0 Å are unchanged, those of a frame with a shorter H–H
    contact change; lowering a floor below the data's or naming an unknown element is an
    error that names it (the CLI exits with 2)."""
    source = export_tiny(tmp_path / "tiny.pt")  # H–H floor 0.7 Å
    raised = tmp_path / "raised.pt"
    run = symbreak_cli("export", str(source), "--floor", "H-H=1.0", "--output", str(raised))
    assert run.returncode == 0, run.stderr
    loaded = load_model(raised)
    assert loaded.metadata.training["raised_floors"] == ["H-H=1.0"]
    pet = rebuild_pet(loaded.path, loaded.module, loaded.metadata)
    assert float(pet.short_range.floor[0, 0]) == 1.0
    assert float(pet.short_range.floor[0, 1]) == 0.95  # the others as they were
    before, after = Evaluator(source, dtype=torch.float64), Evaluator(raised, dtype=torch.float64)
    water = water_frame(0)  # liquid: its shortest H–H is the intramolecular 1.5 Å
    hh = water.get_all_distances(mic=True)[water.numbers == 1][:, water.numbers == 1]
    assert hh[hh > 0].min() > 1.1
    assert before(water).energy == after(water).energy
    contact = water.copy()
    h1, h2 = 1, 4  # hydrogens of two molecules, brought to 0.85 Å
    contact.positions[h2] = contact.positions[h1] + [0.85, 0.0, 0.0]
    assert abs(before(contact).energy - after(contact).energy) > 1e-6
    for bad, message in (("H-H=0.5", "can only be raised"), ("H-C=1.0", "elements of the model")):
        run = symbreak_cli(
            "export", str(source), "--floor", bad, "--output", str(tmp_path / "bad.pt")
        )
        assert run.returncode == 2 and message in run.stderr, run.stderr
        assert not (tmp_path / "bad.pt").exists()
