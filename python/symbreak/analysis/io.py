"""Readers for i-PI outputs, LAMMPS dumps and any ASE-readable trajectory.

All readers return arrays in analysis units (Å, ps, eV, eV/Å, Å/ps; cells with lattice
vectors as **rows**, Å), converting with the unit labels i-PI writes into its files and
i-PI's own conversion factors (:mod:`symbreak.analysis.units`).

- :func:`read_properties`: i-PI properties file (``# column 3 --> conserved{electronvolt} : ...``
  header lines, vector properties as ``# cols. 4-6 --> ...``); columns looked up by name.
- :func:`read_ipi_xyz`: i-PI xyz trajectories (``positions``, ``velocities``, ``forces``,
  ``forces_component_raw`` ...). ASE does not read i-PI's comment line
  (``# CELL(abcABC): a b c α β γ  Step: n  Bead: b positions{angstrom}  cell{angstrom}``;
  also ``CELL(H)``: the 9 elements of i-PI's column-vector cell, and ``CELL(GENH)``: a
  general cell with lattice vectors as rows), so this parses it; frames are selected
  before parsing (``start``/``stop``/``stride``) and a trailing incomplete frame (a run
  still writing) is dropped.
- :func:`read_extras`: i-PI extras trajectories (``<trajectory extra_type="key">extras``:
  ``#EXTRAS(key)# Step: n`` blocks of numbers; or ``raw``: the Python repr of i-PI's dict
  of per-bead lists, parsed back into arrays).
- :func:`read_ase_trajectory`: anything ASE reads (extended xyz, i-PI ``format='ase'``
  files, LAMMPS ``lammps-dump-text`` with a type → element map).
- :func:`load_trajectory`: one call for positions (+ optional separate velocity / force
  files from i-PI), detecting the format.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .units import IPI_DIMENSIONS, ipi_factor, split_key_unit

# ----------------------------------------------------------------------------- properties

_COL_RE = re.compile(
    r"^#\s*(?:column|cols\.)\s+(\d+)\s*(?:-\s*(\d+))?\s*-->\s*(.*?)\s*(?:\s:\s(.*))?$"
)


def _normalise_name(name: str) -> str:
    """Canonical property name for look-ups: no spaces, no ``index=`` keyword."""
    n = re.sub(r"\s+", "", name)
    return re.sub(r"\((?:index|idx)=", "(", n)


@dataclass
class Properties:
    """Columns of an i-PI properties file.

    ``columns[name]``: (T,) array, or (T, k) for vector properties, in the units the file
    states (``units[name]``, None when the header gives none). Names are the header's
    ``what`` without the unit, e.g. ``"conserved"``, ``"pot_component_raw(0)"``.
    """

    columns: dict[str, np.ndarray]
    units: dict[str, str | None]
    descriptions: dict[str, str] = field(default_factory=dict)
    path: str = ""

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def key(self, name: str) -> str:
        """Resolve a user-given name (exact, unit-stripped, space/``index=``-insensitive,
        or a unique base name such as ``"pot_component_raw"`` → ``"…(0)"`` if only one)."""
        if name in self.columns:
            return name
        base, _ = split_key_unit(name)
        want = _normalise_name(base)
        for k in self.columns:
            if _normalise_name(k) == want:
                return k
        matches = [k for k in self.columns if _normalise_name(k).split("(")[0] == want]
        if len(matches) == 1:
            return matches[0]
        hint = f" (ambiguous: {matches})" if matches else ""
        raise KeyError(
            f"no column {name!r} in {self.path or 'properties'}{hint}; have {self.names}"
        )

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[self.key(name)]

    def __contains__(self, name: str) -> bool:
        try:
            self.key(name)
        except KeyError:
            return False
        return True

    def get(self, name: str, dimension: str | None = None) -> np.ndarray:
        """Column ``name``; with ``dimension`` (``"energy"``, ``"time"``, ``"temperature"``
        ...) converted from the file's unit to analysis units (eV, ps, K). A column
        without a unit label is taken to be in i-PI atomic units, as i-PI writes it."""
        k = self.key(name)
        x = self.columns[k]
        if dimension is None:
            return x
        return x * ipi_factor(dimension, self.units[k] or "atomic_unit")

    def time_ps(self, timestep_fs: float | None = None) -> np.ndarray:
        """Simulation time (T,) in ps: the ``time`` column if present, else ``step`` ×
        ``timestep_fs``."""
        if "time" in self:
            return self.get("time", "time")
        if "step" in self and timestep_fs is not None:
            return self["step"] * (timestep_fs * 1e-3)
        raise KeyError("no 'time' column: pass the timestep (fs) to use the 'step' column")


def read_properties(path: str | Path) -> Properties:
    """Read an i-PI properties file (``<properties filename=...>``). Comment lines other
    than the column descriptions (``###`` identification lines, headers repeated by a
    restart) are skipped; an incomplete trailing line is dropped."""
    path = Path(path)
    text = path.read_text()
    cols: list[tuple[int, int, str, str | None, str]] = []
    seen: set[str] = set()
    data_lines = []
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            m = _COL_RE.match(s)
            if m:
                first = int(m.group(1))
                last = int(m.group(2) or first)
                name, unit = split_key_unit(m.group(3))
                if name not in seen:
                    seen.add(name)
                    cols.append((first, last, name, unit, (m.group(4) or "").strip()))
            continue
        data_lines.append(s)
    if not cols:
        raise ValueError(f"{path}: no i-PI '# column N --> name' header lines")
    ncol = max(c[1] for c in cols)
    rows = [ln.split() for ln in data_lines]
    good = [r for r in rows if len(r) == ncol]
    if len(good) != len(rows):
        warnings.warn(
            f"{path}: dropped {len(rows) - len(good)} line(s) without {ncol} columns",
            stacklevel=2,
        )
    data = np.asarray(good, dtype=np.float64).reshape(-1, ncol)
    columns, units, desc = {}, {}, {}
    for first, last, name, unit, help_ in cols:
        block = data[:, first - 1 : last]
        columns[name] = block[:, 0] if first == last else block
        units[name] = unit
        desc[name] = help_
    return Properties(columns, units, desc, str(path))


# ----------------------------------------------------------------------------- i-PI xyz

_CELL_ABC = re.compile(r"CELL[\(\[\{]abcABC[\)\]\}]:\s*([-+0-9.eE\s]*)")
_CELL_H = re.compile(r"CELL[\(\[\{]H[\)\]\}]:\s*([-+0-9.eE\s]*)")
_CELL_GENH = re.compile(r"CELL[\(\[\{]GENH[\)\]\}]:\s*([-+0-9.eE\s]*)")
_STEP = re.compile(r"Step:\s*(-?\d+)")
_KEYUNIT = re.compile(r"([A-Za-z_]\w*(?:\([^)]*\))?)\{([^}]*)\}")


def abc_to_cell(
    a: float, b: float, c: float, alpha: float, beta: float, gamma: float
) -> np.ndarray:
    """Cell (3, 3), lattice vectors as rows, from lengths and angles (degrees), in i-PI's
    orientation: a along x, b in the xy plane (upper-triangular i-PI h, transposed)."""
    al, be, ga = np.deg2rad([alpha, beta, gamma])
    h = np.zeros((3, 3))
    h[0, 0] = a
    h[0, 1] = b * np.cos(ga)
    h[1, 1] = b * np.sin(ga)
    h[0, 2] = c * np.cos(be)
    h[1, 2] = (b * c * np.cos(al) - h[0, 1] * h[0, 2]) / h[1, 1]
    h[2, 2] = np.sqrt(max(c**2 - h[0, 2] ** 2 - h[1, 2] ** 2, 0.0))
    return h.T.copy()


@dataclass
class CommentInfo:
    """What an i-PI xyz comment line says: cell (3,3) rows in ``cell_unit`` (None if the
    line has none), step (-1 if absent), the quantity written and its unit."""

    cell: np.ndarray | None
    step: int
    quantity: str | None
    unit: str | None
    cell_unit: str | None


def parse_ipi_comment(line: str) -> CommentInfo:
    """Parse an i-PI xyz comment line (CELL(abcABC) / CELL(H) / CELL(GENH), Step,
    ``quantity{unit}``, ``cell{unit}``)."""
    cell = None
    m = _CELL_ABC.search(line)
    if m:
        v = [float(t) for t in m.group(1).split()[:6]]
        cell = abc_to_cell(*v) if v[0] > 0 and v[1] > 0 and v[2] > 0 else np.zeros((3, 3))
    else:
        m = _CELL_GENH.search(line)
        if m:
            cell = np.array([float(t) for t in m.group(1).split()[:9]]).reshape(3, 3)
        else:
            m = _CELL_H.search(line)
            if m:  # i-PI's h: lattice vectors as columns
                cell = np.array([float(t) for t in m.group(1).split()[:9]]).reshape(3, 3).T
    step = _STEP.search(line)
    quantity = unit = cell_unit = None
    for k, u in _KEYUNIT.findall(line):
        if k == "cell":
            cell_unit = u
        elif quantity is None:
            quantity, unit = k, u
    return CommentInfo(cell, int(step.group(1)) if step else -1, quantity, unit, cell_unit)


@dataclass
class IPIFrames:
    """Frames of one i-PI xyz trajectory, in analysis units.

    symbols (N,), values (F, N, 3) (Å for positions, Å/ps for velocities, eV/Å for
    forces), cells (F, 3, 3) rows in Å (zeros without a cell), steps (F,) (-1 unknown).
    """

    symbols: np.ndarray
    values: np.ndarray
    cells: np.ndarray
    steps: np.ndarray
    quantity: str
    unit: str
    source_unit: str
    path: str = ""

    @property
    def pbc(self) -> np.ndarray:
        return np.any(self.cells != 0, axis=(0, 2))


_ANALYSIS_UNIT = {"length": "angstrom", "velocity": "angstrom/ps", "force": "ev/ang"}


def _frame_chunks(fh, frame_len: int, chunk_frames: int):
    while True:
        lines = list(itertools.islice(fh, frame_len * chunk_frames))
        if not lines:
            return
        yield lines


def read_ipi_xyz(
    path: str | Path,
    start: int = 0,
    stop: int | None = None,
    stride: int = 1,
    units: str | None = None,
    cell_units: str | None = None,
    chunk_frames: int = 2000,
) -> IPIFrames:
    """Read an i-PI xyz trajectory (``<trajectory format='xyz'>``).

    Frames ``start:stop:stride`` are kept (indices into the file's frames). The quantity
    and its unit come from the comment (``positions{angstrom}``), the cell unit from
    ``cell{...}``; ``units`` / ``cell_units`` override them. Missing labels mean atomic
    units, as in i-PI. Values are converted to analysis units (see :class:`IPIFrames`).
    """
    path = Path(path)
    stride = max(int(stride), 1)
    with path.open() as fh:
        first = fh.readline()
        if not first.strip():
            raise ValueError(f"{path}: empty file")
        natoms = int(first.split()[0])
        comment0 = fh.readline()
    info0 = parse_ipi_comment(comment0)
    quantity = info0.quantity or "positions"
    base = quantity.split("(")[0]
    dimension = IPI_DIMENSIONS.get(base, "length")
    unit = units or info0.unit or "atomic_unit"
    cunit = cell_units or info0.cell_unit or "atomic_unit"
    fac = ipi_factor(dimension, unit)
    cfac = ipi_factor("length", cunit)
    L = natoms + 2
    symbols = None
    vals, cells, steps = [], [], []
    iframe = 0
    with path.open() as fh:
        for lines in _frame_chunks(fh, L, chunk_frames):
            nf = len(lines) // L
            if nf * L != len(lines):
                warnings.warn(f"{path}: dropped an incomplete last frame", stacklevel=2)
            idx = np.arange(iframe, iframe + nf)
            sel = (idx >= start) & ((idx - start) % stride == 0)
            if stop is not None:
                sel &= idx < stop
            iframe += nf
            for k in np.nonzero(sel)[0]:
                head = lines[k * L].split()
                if not head or int(head[0]) != natoms:
                    raise ValueError(f"{path}: frame {idx[k]} has {head[:1]} atoms, not {natoms}")
                info = parse_ipi_comment(lines[k * L + 1])
                cells.append(np.zeros((3, 3)) if info.cell is None else info.cell)
                steps.append(info.step)
            ks = np.nonzero(sel)[0]
            if len(ks):
                atom_lines = [ln for k in ks for ln in lines[k * L + 2 : (k + 1) * L]]
                tok = np.array(" ".join(atom_lines).split()).reshape(len(ks) * natoms, -1)
                if symbols is None:
                    symbols = tok[:natoms, 0].astype(str)
                vals.append(tok[:, 1:4].astype(np.float64).reshape(len(ks), natoms, 3))
            if stop is not None and iframe >= stop:
                break
    if symbols is None:
        raise ValueError(f"{path}: no frames selected (start={start}, stop={stop})")
    values = np.concatenate(vals) * fac
    return IPIFrames(
        symbols=symbols,
        values=values,
        cells=np.asarray(cells) * cfac,
        steps=np.asarray(steps, dtype=np.int64),
        quantity=quantity,
        unit=_ANALYSIS_UNIT[dimension] if dimension in _ANALYSIS_UNIT else dimension,
        source_unit=unit,
        path=str(path),
    )


def is_ipi_xyz(path: str | Path) -> bool:
    """True if the file looks like an i-PI xyz trajectory (its comment line has a
    ``CELL(...)`` or a ``quantity{unit}`` label)."""
    try:
        with Path(path).open() as fh:
            first = fh.readline().split()
            if len(first) != 1 or not first[0].isdigit():
                return False
            comment = fh.readline()
    except (OSError, UnicodeDecodeError):
        return False
    if "Lattice=" in comment or "Properties=" in comment:
        return False
    return bool(re.search(r"CELL[\(\[\{]", comment) or _KEYUNIT.search(comment))


# ----------------------------------------------------------------------------- extras

_EXTRAS_HEAD = re.compile(r"^\s*#(EXTRAS\w*)\(([^)]*)\)#\s*Step:\s*(-?\d+)(?:\s*Bead:\s*(\d+))?")


@dataclass
class Extras:
    """An i-PI extras trajectory: steps (F,) and, per field, an array (F, ...) (numbers)
    or a list (strings). For a keyed file (``extra_type="energy_rot_std"``) the field is
    that key, with one row of numbers per step as (F, k) (squeezed to (F,) for k = 1)
    or (F, rows, k); for ``raw`` files, every key of the dict i-PI printed, with i-PI's
    per-bead axis kept: (F, n_beads, ...)."""

    steps: np.ndarray
    fields: dict[str, np.ndarray | list]
    extra_type: str
    path: str = ""

    def __getitem__(self, key: str):
        return self.fields[key]


def _parse_python_literal(text: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    cleaned = re.sub(r"np\.\w+\(([^()]*)\)", r"\1", text)
    cleaned = re.sub(r"\barray\(", "(", cleaned)
    cleaned = re.sub(r",\s*dtype=\w+", "", cleaned)
    return ast.literal_eval(cleaned)


def _stack(values: list):
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        return values
    return arr


def read_extras(path: str | Path) -> Extras:
    """Read an i-PI extras trajectory (see :class:`Extras`)."""
    path = Path(path)
    blocks: list[tuple[int, list[str]]] = []
    extra_type = None
    for line in path.read_text().splitlines():
        m = _EXTRAS_HEAD.match(line)
        if m:
            extra_type = m.group(2)
            blocks.append((int(m.group(3)), []))
        elif blocks:
            if line.strip():
                blocks[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"{path}: not an i-PI extras file (no '#EXTRAS(...)# Step:' header)")
    if extra_type is None:
        raise ValueError(f"{path}: no extras blocks")
    steps = np.array([b[0] for b in blocks], dtype=np.int64)
    fields: dict[str, np.ndarray | list] = {}
    if extra_type == "raw":
        dicts = []
        for _, lines in blocks:
            obj = _parse_python_literal("\n".join(lines))
            dicts.append(obj if isinstance(obj, dict) else {"raw": obj})
        keys = list(dict.fromkeys(k for d in dicts for k in d))
        for k in keys:
            fields[k] = _stack([d.get(k) for d in dicts])
    else:
        keys = [k.strip() for k in extra_type.split(",")]
        rows = []
        for _, lines in blocks:
            try:
                rows.append([[float(t) for t in ln.split()] for ln in lines])
            except ValueError:
                rows.append(" ".join(ln.strip() for ln in lines))
        arr = _stack(rows)
        if isinstance(arr, np.ndarray) and arr.ndim == 3 and arr.shape[1] == 1:
            arr = arr[:, 0, :]
            if arr.shape[1] == 1:
                arr = arr[:, 0]
        fields[extra_type if len(keys) > 1 else keys[0]] = arr
    return Extras(steps, fields, extra_type, str(path))


# ----------------------------------------------------------------------------- trajectories


@dataclass
class Trajectory:
    """Atoms over time, in analysis units.

    symbols (N,), positions (F, N, 3) Å, cells (F, 3, 3) Å with lattice vectors as rows
    (zeros along non-periodic directions), pbc (3,), steps (F,) MD step of each frame
    (-1 where the file does not say), velocities (F, N, 3) Å/ps and forces (F, N, 3)
    eV/Å when available.
    """

    symbols: np.ndarray
    positions: np.ndarray
    cells: np.ndarray
    pbc: np.ndarray
    steps: np.ndarray
    velocities: np.ndarray | None = None
    forces: np.ndarray | None = None
    source: str = ""

    @property
    def n_frames(self) -> int:
        return self.positions.shape[0]

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[1]

    @property
    def masses(self) -> np.ndarray:
        """Standard atomic masses (N,) in amu (ASE's table)."""
        from ase.data import atomic_masses, atomic_numbers

        return np.array([atomic_masses[atomic_numbers[s]] for s in self.symbols])

    def select(self, start: int = 0, stop: int | None = None, stride: int = 1) -> Trajectory:
        """Frames start:stop:stride."""
        s = slice(start, stop, stride)
        return Trajectory(
            self.symbols,
            self.positions[s],
            self.cells[s],
            self.pbc,
            self.steps[s],
            None if self.velocities is None else self.velocities[s],
            None if self.forces is None else self.forces[s],
            self.source,
        )

    def frame_interval_ps(self, timestep_fs: float, stride: int | None = None) -> float:
        """Time between consecutive frames in ps: ``timestep_fs`` × the step interval
        read from the file (or ``stride`` when the file has no step numbers)."""
        if stride is None:
            d = np.diff(self.steps)
            if np.any(self.steps < 0):
                raise ValueError(
                    f"{self.source}: no step numbers in the file; give the MD steps "
                    "between frames (--frame-steps)"
                )
            if len(d) and not (np.all(d == d[0]) and d[0] > 0):
                raise ValueError(f"{self.source}: frames are not equally spaced in steps")
            stride = int(d[0]) if len(d) else 1
        return timestep_fs * 1e-3 * stride


def parse_type_map(spec: str | dict | None) -> dict[int, str] | None:
    """``"1=O,2=H"`` (or ``"O,H"`` for types 1, 2, ...) → {1: "O", 2: "H"}."""
    if spec is None or isinstance(spec, dict):
        return spec
    out: dict[int, str] = {}
    for i, tok in enumerate(t.strip() for t in spec.split(",") if t.strip()):
        if "=" in tok:
            k, v = tok.split("=")
            out[int(k)] = v.strip()
        else:
            out[i + 1] = tok
    return out


def _ase_step(info: dict) -> int:
    """MD step of an ASE frame: LAMMPS ``timestep``, a ``step`` key, or the ``Step:`` of
    the ``ipi_comment`` i-PI writes into extended xyz files; -1 if none."""
    for k in ("timestep", "step", "Step"):
        if k in info:
            return int(info[k])
    m = _STEP.search(str(info.get("ipi_comment", "")))
    return int(m.group(1)) if m else -1


def read_ase_trajectory(
    path: str | Path,
    format: str | None = None,
    index: str = ":",
    type_map: dict[int, str] | str | None = None,
) -> Trajectory:
    """Read any ASE-readable trajectory (``format`` as ASE names it, e.g.
    ``"lammps-dump-text"``, ``"extxyz"``). LAMMPS dumps carry types, not elements:
    ``type_map`` ({1: "O", 2: "H"} or ``"1=O,2=H"``) names them (ASE would otherwise
    read type t as atomic number t); ``units metal`` is assumed for dumps."""
    import ase.io
    import ase.units

    tmap = parse_type_map(type_map)
    kwargs = {}
    if format is None and str(path).endswith((".lammpstrj", ".dump")):
        format = "lammps-dump-text"
    if format == "lammps-dump-text" and tmap:
        kwargs["specorder"] = [tmap.get(i, "X") for i in range(1, max(tmap) + 1)]
    frames = ase.io.read(str(path), index=index, format=format, **kwargs)
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise ValueError(f"{path}: no frames")
    a0 = frames[0]
    symbols = np.array(a0.get_chemical_symbols())
    pos = np.array([a.get_positions() for a in frames])
    cells = np.array([a.cell.array for a in frames])
    pbc = np.asarray(a0.pbc, dtype=bool)
    cells[:, ~pbc, :] = 0.0
    steps = np.array([_ase_step(a.info) for a in frames], dtype=np.int64)
    vel = None
    if a0.has("momenta"):
        # ASE velocity unit Å / (Å sqrt(amu/eV)) → Å/ps
        vel = np.array([a.get_velocities() for a in frames]) * (ase.units.fs * 1000.0)
    frc = None
    if a0.calc is not None and "forces" in getattr(a0.calc, "results", {}):
        frc = np.array([a.calc.results["forces"] for a in frames])
    elif "forces" in a0.arrays:
        frc = np.array([a.arrays["forces"] for a in frames])
    return Trajectory(symbols, pos, cells, pbc, steps, vel, frc, str(path))


def _match_steps(ref: IPIFrames | Trajectory, other: IPIFrames, what: str) -> np.ndarray:
    if other.values.shape[0] == ref.steps.shape[0] and np.array_equal(other.steps, ref.steps):
        return other.values
    common, ia, ib = np.intersect1d(ref.steps, other.steps, return_indices=True)
    if len(common) != len(ref.steps):
        raise ValueError(
            f"{what}: steps of {other.path} do not cover those of the positions "
            f"({len(common)} of {len(ref.steps)} frames in common); use the same stride"
        )
    return other.values[ib]


def load_trajectory(
    path: str | Path,
    velocities: str | Path | None = None,
    forces: str | Path | None = None,
    format: str | None = None,
    type_map: dict[int, str] | str | None = None,
    start: int = 0,
    stop: int | None = None,
    stride: int = 1,
) -> Trajectory:
    """Positions from ``path`` (i-PI xyz detected from its comment line, else ASE; for
    path integrals pass i-PI's ``x_centroid`` trajectory or one bead's file), plus
    velocities and forces from separate i-PI xyz files if given (matched by step).
    Frames ``start:stop:stride`` of the positions file are kept."""
    if format in (None, "ipi", "ipi-xyz") and is_ipi_xyz(path):
        fr = read_ipi_xyz(path, start, stop, stride)
        if fr.unit != "angstrom":
            raise ValueError(f"{path} holds {fr.quantity}, not positions")
        traj = Trajectory(fr.symbols, fr.values, fr.cells, fr.pbc, fr.steps, source=str(path))
    elif format in ("ipi", "ipi-xyz"):
        raise ValueError(f"{path} is not an i-PI xyz file")
    else:
        traj = read_ase_trajectory(path, format=format, type_map=type_map)
        traj = traj.select(start, stop, stride)
    if velocities is not None:
        v = read_ipi_xyz(velocities)
        traj.velocities = _match_steps(traj, v, "velocities")
    if forces is not None:
        f = read_ipi_xyz(forces)
        traj.forces = _match_steps(traj, f, "forces")
    return traj
