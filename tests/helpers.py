"""Shared test utilities: small random models and structures (imported by test files)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase import Atoms

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


def tiny_pet(seed: int = 0, **overrides):
    """A small randomly initialised PET whose readouts are not zero (unlike a fresh
    model), so that energies, forces and their symmetry breaking are all non-trivial."""
    from symbreak.model import PET, PETConfig

    torch.manual_seed(seed)
    cfg = PETConfig(
        **(
            dict(
                d_model=16,
                n_heads=2,
                d_ff=32,
                n_mp_layers=2,
                n_transformer_layers=1,
                n_radial=4,
                three_body=True,  # as the shipped model: every engine test exercises it
            )
            | overrides
        )
    )
    model = PET(cfg)
    with torch.no_grad():
        for layer in model.layers:
            for head in (layer.head_central, layer.head_edge):
                head.fc2.weight.normal_(0.0, 0.3)
                head.fc2.bias.normal_(0.0, 0.1)
            if cfg.edge_readout == "spline":  # coefficients of B-splines 0.1 Å apart: keep
                layer.head_edge.fc2.weight.normal_(0.0, 0.1)  # the radial functions smooth
                layer.head_edge.fc2.bias.normal_(0.0, 0.03)
        # The radial prior, also non-trivial but smooth (a few sines over the knots), as a
        # fitted one is: independent random coefficients make finite differences inexact.
        knots = torch.arange(model.pair.n_basis, dtype=torch.float32) / model.pair.n_basis
        amplitudes = torch.randn(model.pair.coefficients.shape[0], 3, 1) * 0.3
        waves = torch.sin(torch.pi * torch.arange(1, 4)[:, None] * knots)
        model.pair.coefficients.copy_((amplitudes * waves).sum(1))
        if cfg.three_body:  # smooth over the radial grid, a few meV per triplet
            tb = model.three_body.coefficients
            x = torch.arange(tb.shape[1], dtype=torch.float32) / tb.shape[1]
            radial = torch.sin(torch.pi * x)[:, None] * torch.cos(x)[None, :]
            tb.copy_(torch.randn(tb.shape[0], 1, 1, tb.shape[3]) * 0.02 * radial[:, :, None])
        # Short-range floors (symbreak.short_range) near the O–H bond length, so that every
        # engine test runs through the floored branch of the transformer and three-body term.
        model.short_range.floor.copy_(torch.tensor([[0.7, 0.95], [0.95, 1.4]], dtype=torch.float64))
        model.baseline.copy_(torch.tensor([-13.6, -430.0], dtype=torch.float64))
        model.energy_scale.fill_(1.0)
    return model, cfg


def export_tiny(path: Path, seed: int = 0, **overrides) -> Path:
    from symbreak.export import export_model

    model, cfg = tiny_pet(seed, **overrides)
    export_model(model, path, cfg.to_dict(), {"note": "random test model"})
    return path


def strain_derivative(energy, atoms: Atoms, h: float = 1e-5) -> np.ndarray:
    """-dE/dε [3, 3] (eV) by central differences over symmetric strains ε of cell and
    positions: the reference for a virial. ``energy(atoms) -> float`` (eV)."""
    numeric = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            out = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[a, b] += sign * h / 2
                strain[b, a] += sign * h / 2
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
                out.append(energy(strained))
            numeric[a, b] = numeric[b, a] = -(out[0] - out[1]) / (2 * h)
    return numeric


def water_frame(index: int = 0) -> Atoms:
    """A 192-atom liquid-water frame of the shipped training data (cubic cell)."""
    return ase.io.read(DATA / "water_revpbe0d3_160.xyz", index)


def small_water(n_molecules: int = 8, seed: int = 0, triclinic: bool = True) -> Atoms:
    """A few water molecules cut from a liquid frame into a (triclinic) periodic cell."""
    atoms = water_frame(0)
    atoms = atoms[: 3 * n_molecules]  # O, H, H order per molecule in this file
    rng = np.random.default_rng(seed)
    cell = np.diag([7.5, 7.8, 8.1])
    if triclinic:
        cell = cell + rng.uniform(-1.5, 1.5, (3, 3)) * np.tri(3, k=-1)
    atoms.set_cell(cell, scale_atoms=False)
    atoms.pbc = True
    atoms.positions = atoms.positions % 7.0 + rng.normal(0, 0.02, (len(atoms), 3))
    return atoms


# The project's shared data folder sits beside the checkout (CI clones it the same way).
SHARED_DATA = REPO.parent / "shared" / "data"


def contract_inputs(atoms: Atoms, cutoff: float, selected=None, species=(1, 8)) -> list:
    """The graph inputs of the contract's ``compute``/``accumulate`` for one structure
    (``selected``: bool tensor [N] of the atoms whose energies count; None: all)."""
    from symbreak.graph import build_graph

    g = build_graph(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, cutoff, species)
    n = len(atoms)
    return [
        torch.from_numpy(atoms.numbers.astype(np.int64)),
        torch.from_numpy(atoms.positions.copy()),
        torch.from_numpy(atoms.cell.array.copy())[None],
        torch.zeros(n, dtype=torch.long),
        torch.from_numpy(g.centers),
        torch.from_numpy(g.neighbors),
        torch.from_numpy(g.shifts),
        torch.from_numpy(g.reverse),
        torch.ones(n, dtype=torch.bool) if selected is None else selected,
    ]


def symbreak_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m symbreak ARGS...`` in a bounded subprocess, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "symbreak", *args], capture_output=True, text=True, timeout=timeout
    )
