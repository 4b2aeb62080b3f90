"""Short-range scans: where a water model must stay physical although it has no data.

Geometries of the checks of :mod:`symbreak.short_range` (and of ``scripts/short_range_scan.py``
and ``tests/test_short_range.py``), each a list of ASE ``Atoms`` along one coordinate:

* :func:`dimer`: two atoms alone in a large non-periodic box, at distances r (Å);
* :func:`bend`: one water molecule (O–H 0.97 Å) at H–O–H angles θ (degrees);
* :func:`push`: one molecule of a liquid frame moved rigidly towards its nearest
  neighbour along their O–O axis, at O–O distances r (Å).

:func:`energies_and_forces` runs any ASE calculator along a scan; :func:`minima` and
:func:`monotone` read the curves.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

BOX = 30.0  # Å: non-periodic box of the gas-phase scans, far beyond any cutoff
O_H = 0.97  # Å: bond length of the bent molecule


def dimer(numbers: tuple[int, int], distances: np.ndarray) -> list[Atoms]:
    """Two atoms of atomic numbers ``numbers`` along x at each distance (Å)."""
    centre = BOX / 2
    return [
        Atoms(
            numbers=list(numbers),
            positions=[[centre, centre, centre], [centre + r, centre, centre]],
            cell=np.eye(3) * BOX,
            pbc=False,
        )
        for r in distances
    ]


def bend(angles_deg: np.ndarray, bond: float = O_H) -> list[Atoms]:
    """One H2O (O first) with both O–H = ``bond`` (Å) at each H–O–H angle (degrees)."""
    frames = []
    for theta in np.radians(angles_deg):
        half = theta / 2
        positions = np.array(
            [
                [0, 0, 0],
                [bond * np.cos(half), bond * np.sin(half), 0],
                [bond * np.cos(half), -bond * np.sin(half), 0],
            ]
        )
        frames.append(Atoms("OH2", positions=positions + BOX / 2, cell=np.eye(3) * BOX, pbc=False))
    return frames


def _molecule_of(atoms: Atoms, oxygen: int) -> list[int]:
    """The oxygen and the two H nearest to it (minimum image)."""
    hydrogens = np.flatnonzero(atoms.numbers == 1)
    d = atoms.get_distances(oxygen, hydrogens, mic=True)
    return [oxygen, *hydrogens[np.argsort(d)[:2]].tolist()]


def push(atoms: Atoms, distances: np.ndarray, oxygen: int = 0) -> list[Atoms]:
    """``atoms`` (periodic liquid water) with the molecule of O index ``oxygen`` moved
    rigidly along the axis to its nearest other O until that O–O distance is each of
    ``distances`` (Å); nothing else moves."""
    oxygens = np.flatnonzero(atoms.numbers == 8)
    others = oxygens[oxygens != oxygen]
    d = atoms.get_distances(oxygen, others, mic=True, vector=True)
    nearest = int(np.argmin(np.linalg.norm(d, axis=1)))
    axis = d[nearest] / np.linalg.norm(d[nearest])  # from the moved O towards its neighbour
    start = float(np.linalg.norm(d[nearest]))
    molecule = _molecule_of(atoms, oxygen)
    frames = []
    for r in distances:
        frame = atoms.copy()
        frame.positions[molecule] += (start - r) * axis
        frames.append(frame)
    return frames


def energies_and_forces(frames: list[Atoms], calc) -> tuple[np.ndarray, np.ndarray]:
    """Energies [F] (eV) and forces [F, N, 3] (eV/Å) of ``calc`` along a scan."""
    energies, forces = [], []
    for frame in frames:
        frame = frame.copy()
        frame.calc = calc
        energies.append(frame.get_potential_energy())
        forces.append(frame.get_forces())
    return np.array(energies), np.array(forces)


def minima(energies: np.ndarray, depth: float = 1e-3) -> int:
    """Number of wells inside a sampled curve (eV) at least ``depth`` eV deep (their
    prominence: the smaller rise to either side before a lower point; end points
    excluded). The default 1 meV, 1/26 of kT at 300 K, leaves out sub-meV ripples, which
    trap nothing; ``depth=0`` counts every strict local minimum."""
    from scipy.signal import find_peaks

    e = np.asarray(energies, dtype=np.float64)
    if depth <= 0:
        return int(np.sum((e[1:-1] < e[:-2]) & (e[1:-1] < e[2:])))
    return len(find_peaks(-e, prominence=depth)[0])


def monotone(energies: np.ndarray) -> bool:
    """Whether a sampled curve never decreases (ordered along the scan)."""
    return bool(np.all(np.diff(energies) >= 0.0))
