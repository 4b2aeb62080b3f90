"""Neighbour lists: O(N) cell lists in C++ (``symbreak._neighbors``).

Conventions (the same as ASE and vesin): the cell has the lattice vectors as **rows**, and a
pair ``(i, j, S)`` stands for the edge vector ``r_ij = x_j - x_i + S @ cell`` (Å), reported
when ``|r_ij| < cutoff`` (strictly). An atom is never paired with itself (``i == j``,
``S == 0``); distinct atoms on top of each other are reported with a zero vector, as by ASE
and vesin.

The pairs are **sorted by i**, then by j, then lexicographically by S: the edges of each
centre atom are contiguous, in a deterministic order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from . import _neighbors

__all__ = ["neighbor_list"]


def _as_pbc(pbc: bool | Sequence[bool] | npt.ArrayLike) -> list[bool]:
    flags = np.asarray(pbc)
    if flags.ndim == 0:
        flags = np.repeat(flags, 3)
    if flags.shape != (3,):
        raise ValueError(f"pbc must be one boolean or three, got shape {flags.shape}")
    if flags.dtype != np.bool_:
        if not np.issubdtype(flags.dtype, np.integer) or not np.isin(flags, (0, 1)).all():
            raise ValueError(f"pbc must hold booleans, got {pbc!r}")
    return [bool(f) for f in flags]


def neighbor_list(
    positions: npt.ArrayLike,
    cell: npt.ArrayLike | None,
    pbc: bool | Sequence[bool] | npt.ArrayLike,
    cutoff: float,
    full_list: bool = True,
    n_threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of atoms closer than ``cutoff``, through any periodic image.

    Args:
        positions: (N, 3) Cartesian positions in Å; they may lie outside the cell
            (unwrapped), the vectors always refer to the positions as given.
        cell: (3, 3) lattice vectors as rows, Å. Only rows of periodic axes are used;
            ``None`` (or zeros) is fine when ``pbc`` is all False.
        pbc: periodicity, one boolean or one per cell vector.
        cutoff: Å, >= 0; pairs with distance strictly below it are kept.
        full_list: True: both (i, j, S) and (j, i, -S). False: each pair once, the one
            with i < j (for i == j the one with S lexicographically positive).
        n_threads: threads to use, at most one per 2048 atoms (smaller systems run on
            one); 0 picks automatically (1 below 4096 atoms, else one per core). The result
            does not depend on it.

    Returns:
        ``(i, j, shifts, vectors)``: i and j int64 (P,), shifts int32 (P, 3), vectors
        float64 (P, 3) in Å, ``vectors = positions[j] - positions[i] + shifts @ cell``,
        sorted by i, then j, then shifts.

    Raises:
        ValueError: wrong shapes, non-finite positions (naming the atom) or cell, a
            singular cell along periodic axes, or a negative or non-finite cutoff.
    """
    try:
        pos = np.ascontiguousarray(positions, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"positions must be an (N, 3) array of numbers: {err}") from None
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {pos.shape}")
    flags = _as_pbc(pbc)
    if cell is None:
        if any(flags):
            raise ValueError("a cell is required when pbc is True along any axis")
        box = np.zeros((3, 3))
    else:
        try:
            box = np.ascontiguousarray(cell, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"cell must be a (3, 3) array of numbers: {err}") from None
        if box.shape != (3, 3):
            raise ValueError(f"cell must have shape (3, 3), got {box.shape}")
    try:
        rc = float(cutoff)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cutoff must be a number: {err}") from None
    if not np.isfinite(rc) or rc < 0:
        raise ValueError(f"cutoff must be finite and >= 0, got {cutoff!r}")
    if int(n_threads) < 0:
        raise ValueError(f"n_threads must be >= 0, got {n_threads}")
    return _neighbors.neighbor_list(pos, box, flags, rc, bool(full_list), int(n_threads))
