"""Water molecules from atoms: identification by distance, centres of mass, bisector
(dipole) directions, and unwrapping of molecular trajectories across periodic cells.

Molecules are found by distance, never by atom order: every H is assigned to its
nearest O (minimum image), and each O must then hold exactly two H — which is the same
as "each O with its two nearest H" for intact water, and fails loudly otherwise
(dissociation, proton transfer, wrong species).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

MASS_O = 15.999  # amu (ASE / IUPAC standard atomic weights)
MASS_H = 1.008


def _full_rank_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Replace rows of non-periodic (or zero) lattice vectors by unit vectors that
    complete a basis, so fractional coordinates are defined along every direction."""
    cell = np.array(cell, dtype=np.float64)
    bad = ~np.asarray(pbc, dtype=bool) | (np.linalg.norm(cell, axis=1) == 0)
    if not bad.any():
        return cell
    good = cell[~bad]
    for k in np.nonzero(bad)[0]:
        if len(good) == 2:
            v = np.cross(good[0], good[1])
        else:
            # a Cartesian axis as orthogonal as possible to the periodic ones
            cands = np.eye(3)
            if len(good):
                overlap = np.abs(cands @ (good / np.linalg.norm(good, axis=1)[:, None]).T).sum(1)
                cands = cands[np.argsort(overlap)]
            v = next(c for c in cands if np.linalg.matrix_rank(np.vstack([good, c])) > len(good))
        cell[k] = v / np.linalg.norm(v)
        good = np.vstack([good, cell[k]])
    return cell


def minimum_image(d: np.ndarray, cell: np.ndarray, pbc) -> np.ndarray:
    """Minimum-image version of displacement vectors d (..., 3) in a cell (3, 3) (rows,
    Å) periodic along ``pbc`` (3,). Exact for |d| below half the smallest perpendicular
    width of the cell (rounding of fractional coordinates)."""
    pbc = np.asarray(pbc, dtype=bool) & (np.linalg.norm(cell, axis=1) > 0)
    if not pbc.any():
        return np.asarray(d, dtype=np.float64)
    full = _full_rank_cell(cell, pbc)
    s = np.asarray(d, dtype=np.float64) @ np.linalg.inv(full)
    s[..., pbc] -= np.round(s[..., pbc])
    return s @ full


def perpendicular_widths(cell: np.ndarray) -> np.ndarray:
    """Distances (3,) between opposite faces of the cell (rows, Å): V / |a_j × a_k|."""
    vol = abs(np.linalg.det(cell))
    return np.array(
        [vol / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)]
    )


def _nearest_oxygens(
    x: np.ndarray, io: np.ndarray, ih: np.ndarray, cell: np.ndarray, pbc
) -> tuple[np.ndarray, np.ndarray]:
    """For each H (indices ``ih`` into positions x (N, 3) Å), the position in ``io`` of
    its nearest O and the distance to it (Å), by minimum image."""
    nearest = np.empty(len(ih), dtype=np.int64)
    dist = np.empty(len(ih))
    chunk = max(1, 2_000_000 // max(len(io), 1))
    for a in range(0, len(ih), chunk):
        d = minimum_image(x[io][None, :, :] - x[ih[a : a + chunk], None, :], cell, pbc)
        r = np.linalg.norm(d, axis=-1)
        nearest[a : a + chunk] = np.argmin(r, axis=1)
        dist[a : a + chunk] = r[np.arange(r.shape[0]), nearest[a : a + chunk]]
    return nearest, dist


def find_waters(
    symbols,
    positions: np.ndarray,
    cell: np.ndarray | None = None,
    pbc=(False, False, False),
    max_oh: float = 1.35,
) -> np.ndarray:
    """Water molecules as atom indices (M, 3): [O, H, H] (the two H in increasing index
    order, molecules in increasing O index), from one frame.

    positions (N, 3) Å; cell (3, 3) rows Å (None: no periodicity). Each H goes to its
    nearest O (minimum image); raises ValueError if an O does not get exactly two H or
    an O–H distance exceeds ``max_oh`` Å. Atoms other than O and H are ignored.
    """
    symbols = np.asarray(symbols).astype(str)
    x = np.asarray(positions, dtype=np.float64)
    io = np.nonzero(symbols == "O")[0]
    ih = np.nonzero(symbols == "H")[0]
    if len(io) == 0:
        raise ValueError(
            "no O atoms: for LAMMPS dumps pass a type map (e.g. --types 1=O,2=H); "
            f"species found: {sorted(set(symbols))}"
        )
    if len(ih) != 2 * len(io):
        raise ValueError(f"{len(ih)} H for {len(io)} O: not neutral water")
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    nearest, dist = _nearest_oxygens(x, io, ih, cell, pbc)
    if dist.max() > max_oh:
        k = int(np.argmax(dist))
        raise ValueError(f"H atom {ih[k]} is {dist[k]:.2f} Å from its nearest O (> {max_oh} Å)")
    counts = np.bincount(nearest, minlength=len(io))
    if np.any(counts != 2):
        badO = io[np.nonzero(counts != 2)[0]]
        raise ValueError(
            f"{len(badO)} O atom(s) do not have exactly two nearest H (e.g. O {badO[0]} "
            f"has {counts[np.nonzero(counts != 2)[0][0]]}): not intact water"
        )
    order = np.argsort(nearest, kind="stable")
    hs = ih[order].reshape(len(io), 2)
    return np.column_stack([io, np.sort(hs, axis=1)])


WATER_FRAME_CLASSES = ("intact", "ions", "H2")


def near_defects(
    numbers, positions: np.ndarray, cell: np.ndarray, pbc, radius: float = 3.0
) -> np.ndarray:
    """Atoms (N,) bool within ``radius`` Å (minimum image) of a defect O, the defect O
    included: an O that is the nearest O of other than two H (OH⁻, H₃O⁺, a bare O, the O
    a proton is shared with). All False for intact water and for frames without O or H.

    positions (N, 3) Å, cell (3, 3) rows Å, pbc (3,)."""
    numbers = np.asarray(numbers)
    x = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    io, ih = np.nonzero(numbers == 8)[0], np.nonzero(numbers == 1)[0]
    mask = np.zeros(len(numbers), dtype=bool)
    if len(io) == 0 or len(ih) == 0:
        return mask
    nearest, _ = _nearest_oxygens(x, io, ih, cell, pbc)
    defects = io[np.bincount(nearest, minlength=len(io)) != 2]
    for o in defects:
        r = np.linalg.norm(minimum_image(x - x[o], cell, pbc), axis=1)
        mask |= r <= radius
    return mask


def water_frame_class(numbers, positions: np.ndarray, cell: np.ndarray, pbc) -> str | None:
    """Chemistry of one frame of water: ``"intact"`` (:func:`find_waters` succeeds: every H
    within 1.35 Å of its nearest O, every O with two H), ``"H2"`` (some H–H pair closer
    than 1.0 Å: molecular hydrogen) or ``"ions"`` (otherwise: OH⁻/H₃O⁺, shared or
    stretched protons). None for a frame with atoms other than O and H, or no O.

    positions (N, 3) Å, cell (3, 3) rows Å, pbc (3,)."""
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    numbers = np.asarray(numbers)
    if not np.isin(numbers, (1, 8)).all() or not (numbers == 8).any():
        return None
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    i, j = neighbor_list("ij", atoms, 1.0)
    if np.any((numbers[i] == 1) & (numbers[j] == 1)):
        return "H2"
    try:
        find_waters(atoms.get_chemical_symbols(), atoms.positions, atoms.cell.array, atoms.pbc)
    except ValueError:
        return "ions"
    return "intact"


@dataclass
class WaterGeometry:
    """Per-frame molecular quantities.

    com (F, M, 3) Å: centres of mass of whole molecules (the molecule is made whole
    around its O by minimum image, the COM itself is not wrapped into the cell);
    oh (F, M, 2, 3) Å: O→H vectors; bisector (F, M, 3): unit vectors along OH1 + OH2,
    from O towards the H side, i.e. the direction of the molecular dipole of a
    point-charge water model.
    """

    com: np.ndarray
    oh: np.ndarray
    bisector: np.ndarray


def water_geometry(
    positions: np.ndarray,
    cells: np.ndarray | None,
    pbc,
    waters: np.ndarray,
    masses: tuple[float, float] = (MASS_O, MASS_H),
) -> WaterGeometry:
    """Molecular COM, O–H vectors and bisector directions for positions (F, N, 3) or
    (N, 3) Å, cells (F, 3, 3) / (3, 3) rows Å, molecules ``waters`` (M, 3) [O, H, H]."""
    x = np.asarray(positions, dtype=np.float64)
    single = x.ndim == 2
    if single:
        x = x[None]
    F = x.shape[0]
    if cells is None:
        cells = np.zeros((F, 3, 3))
    cells = np.broadcast_to(np.asarray(cells, dtype=np.float64), (F, 3, 3))
    xo = x[:, waters[:, 0]]
    oh = x[:, waters[:, 1:]] - xo[:, :, None, :]
    pbc = np.asarray(pbc, dtype=bool)
    if pbc.any():
        if np.allclose(cells, cells[0]):
            oh = minimum_image(oh, cells[0], pbc)
        else:
            oh = np.stack([minimum_image(oh[f], cells[f], pbc) for f in range(F)])
    mo, mh = masses
    com = xo + mh * oh.sum(axis=2) / (mo + 2 * mh)
    b = oh.sum(axis=2)
    b /= np.linalg.norm(b, axis=-1, keepdims=True)
    if single:
        return WaterGeometry(com[0], oh[0], b[0])
    return WaterGeometry(com, oh, b)


def unwrap(x: np.ndarray, cells: np.ndarray, pbc) -> np.ndarray:
    """Unwrap trajectories x (F, M, 3) Å (positions possibly wrapped into the cell) into
    continuous ones: x_u(t) = x_u(t−1) + mic(x(t) − x(t−1); cell(t)), the
    "toroidal-view-preserving" scheme (Kulke & Vermaas, JCTC 2022), exact for a fixed
    cell and correct for a fluctuating one. Assumes no particle moves more than half
    the cell between frames."""
    x = np.asarray(x, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    if not pbc.any() or x.shape[0] < 2:
        return x.copy()
    cells = np.broadcast_to(np.asarray(cells, dtype=np.float64), (x.shape[0], 3, 3))
    d = np.diff(x, axis=0)
    if np.allclose(cells, cells[0]):
        d = minimum_image(d, cells[0], pbc)
    else:
        d = np.stack([minimum_image(d[f], cells[f + 1], pbc) for f in range(d.shape[0])])
    out = np.empty_like(x)
    out[0] = x[0]
    out[1:] = x[0] + np.cumsum(d, axis=0)
    return out


@dataclass
class WaterTrajectory:
    """Water molecules over a trajectory: ``waters`` (M, 3) atom indices [O, H, H],
    ``geometry`` (see :class:`WaterGeometry`), ``com_unwrapped`` (F, M, 3) Å."""

    waters: np.ndarray
    geometry: WaterGeometry
    com_unwrapped: np.ndarray


def water_trajectory(traj, check_last: bool = True) -> WaterTrajectory:
    """Find waters in the first frame of a :class:`~symbreak.analysis.io.Trajectory`,
    compute their geometry in every frame and unwrap the centres of mass. With
    ``check_last``, the assignment is redone on the last frame and a change (proton
    transfer, dissociation) is warned about."""
    waters = find_waters(traj.symbols, traj.positions[0], traj.cells[0], traj.pbc)
    if check_last and traj.n_frames > 1:
        try:
            last = find_waters(traj.symbols, traj.positions[-1], traj.cells[-1], traj.pbc)
            if not np.array_equal(last, waters):
                warnings.warn("water assignment changed between first and last frame", stacklevel=2)
        except ValueError as err:
            warnings.warn(f"last frame: {err}", stacklevel=2)
    geo = water_geometry(traj.positions, traj.cells, traj.pbc, waters)
    return WaterTrajectory(waters, geo, unwrap(geo.com, traj.cells, traj.pbc))
