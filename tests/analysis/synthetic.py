"""Synthetic data with known answers for the analysis tests, and writers of files in
i-PI's exact formats (through i-PI's own writer, :func:`ipi.utils.io.print_file`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

R_OH = 0.9572  # Å
ANGLE_HOH = np.deg2rad(104.52)
DATA = Path(__file__).resolve().parent / "data"
IPI_RUN = DATA / "ipi_run"


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """n uniformly random proper rotations (n, 3, 3) (QR of Gaussian matrices)."""
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    det = np.linalg.det(q)
    q[det < 0, :, 0] *= -1
    return q


def water_local() -> np.ndarray:
    """O, H, H (3, 3) Å in a local frame: O at the origin, bisector along +z, plane xz."""
    s, c = np.sin(ANGLE_HOH / 2), np.cos(ANGLE_HOH / 2)
    return np.array([[0.0, 0.0, 0.0], [R_OH * s, 0.0, R_OH * c], [-R_OH * s, 0.0, R_OH * c]])


def waters(centres: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """Atoms (M*3, 3), molecule k = atoms 3k..3k+2 (O, H, H), O at centres[k], local
    frame rotated by rotations[k] (so the bisector is rotations[k][:, 2])."""
    loc = water_local()
    x = centres[:, None, :] + np.einsum("mij,aj->mai", rotations, loc)
    return x.reshape(-1, 3)


def cubic_lattice(n: int, a: float) -> np.ndarray:
    """Simple cubic lattice points (n³, 3) with spacing a."""
    g = np.arange(n) * a
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)


def write_ipi_xyz(
    path: Path,
    symbols,
    frames: np.ndarray,
    cell_rows: np.ndarray,
    steps=None,
    key: str = "positions",
    dimension: str = "length",
    units: str = "angstrom",
    cell_units: str = "angstrom",
    mode: str = "w",
) -> Path:
    """Write frames (F, N, 3) given in ``units`` with i-PI's own xyz writer. The cell
    (3, 3) rows Å (or (F, 3, 3)) must be in i-PI's orientation (upper-triangular h)."""
    from ipi.engine.atoms import Atoms
    from ipi.engine.cell import Cell
    from ipi.utils.io import print_file
    from ipi.utils.units import unit_to_internal

    frames = np.asarray(frames, dtype=float)
    cells = np.broadcast_to(np.asarray(cell_rows, dtype=float), (len(frames), 3, 3))
    steps = range(len(frames)) if steps is None else steps
    with open(path, mode) as fh:
        for x, c, step in zip(frames, cells, steps, strict=True):
            at = Atoms(len(symbols))
            at.names[:] = list(symbols)
            at.q[:] = unit_to_internal(dimension, units, 1.0) * x.ravel()
            cell = Cell(unit_to_internal("length", "angstrom", 1.0) * c.T)
            print_file(
                "xyz",
                at,
                cell,
                fh,
                title=f"Step:  {step:10d}  Bead:   {0:5d} ",  # as i-PI's TrajectoryOutput
                key=key,
                dimension=dimension,
                units=units,
                cell_units=cell_units,
            )
    return path


def liquid_like(
    n_side: int = 3,
    spacing: float = 3.1,
    n_frames: int = 40,
    seed: int = 0,
    step_sigma: float = 0.05,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small 'liquid' of n_side³ waters: lattice centres with random-walk
    displacements (σ = step_sigma Å per frame per axis) and independent random
    orientations per frame. Returns (symbols (N,), positions (F, N, 3) wrapped into the
    cubic cell, cell rows (3, 3))."""
    rng = np.random.default_rng(seed)
    c0 = cubic_lattice(n_side, spacing) + 0.5
    L = n_side * spacing
    M = len(c0)
    steps = rng.normal(0.0, step_sigma, size=(n_frames, M, 3))
    steps[0] = 0
    centres = c0 + np.cumsum(steps, axis=0)
    rots = random_rotations(n_frames * M, rng).reshape(n_frames, M, 3, 3)
    pos = np.stack([waters(centres[f], rots[f]) for f in range(n_frames)])
    pos = np.mod(pos, L)
    symbols = np.array(["O", "H", "H"] * M)
    return symbols, pos, np.eye(3) * L
