"""``symbreak probe <analysis> ...``: analyses of i-PI / LAMMPS / ASE outputs.

Each analysis writes ``OUT/<name>.png`` and ``OUT/<name>.json`` (``--name`` defaults
to the analysis) and prints a short summary. Frames: ``--start`` (frames of the file
to discard as equilibration), ``--stop``, ``--stride``; time: ``--timestep`` is the MD
timestep in fs, combined with the step numbers the file records (i-PI xyz, i-PI ASE
files, LAMMPS dumps) or with ``--frame-steps`` (MD steps between frames) otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .. import exit_codes

ANALYSES = [
    "rdf",
    "orientation",
    "angular-momentum",
    "msd",
    "reorientation",
    "drift",
    "spectrum",
    "dipole-correlation",
    "components",
    "ice",
]


# ----------------------------------------------------------------------------- helpers


def _outputs(args, default: str) -> tuple[Path, Path]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or default
    return out / f"{name}.png", out / f"{name}.json"


def _load(args):
    from .io import load_trajectory

    return load_trajectory(
        args.traj,
        velocities=getattr(args, "velocities", None),
        forces=getattr(args, "forces", None),
        format=args.format,
        type_map=args.types,
        start=args.start,
        stop=args.stop,
        stride=args.stride,
    )


def _frame_dt(args, traj) -> float:
    if args.timestep is None:
        raise SystemExit(f"probe {args.analysis}: pass --timestep (MD timestep in fs)")
    return traj.frame_interval_ps(args.timestep, args.frame_steps)


def _inputs(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("func",) and not callable(v)}


def _finish(args, summary: dict, png: Path, js: Path, lines: list[str]) -> int:
    from .report import write_json

    write_json(js, {"analysis": args.analysis, "inputs": _inputs(args), **summary})
    print(f"symbreak probe {args.analysis}: wrote {png} and {js}")
    for ln in lines:
        print("  " + ln)
    return exit_codes.OK


def _pm(x, e, fmt=".4g") -> str:
    return f"{x:{fmt}} ± {e:.2g}"


# ----------------------------------------------------------------------------- analyses


def run_rdf(args) -> int:
    from .molecules import find_waters
    from .rdf import plot_rdf, rdf

    traj = _load(args)
    mol = None
    if args.intermolecular:
        w = find_waters(traj.symbols, traj.positions[0], traj.cells[0], traj.pbc)
        mol = np.full(traj.n_atoms, -1)
        for k, idx in enumerate(w):
            mol[idx] = k
        mol[mol < 0] = np.arange(traj.n_atoms)[mol < 0] + len(w)
    res = []
    for p in args.pairs.split(","):
        p = p.strip()
        res.append(
            rdf(traj.positions, traj.cells, traj.symbols, p, args.rmax, args.bins, args.blocks, mol)
        )
    png, js = _outputs(args, "rdf")
    plot_rdf(res, png, args.title or Path(args.traj).name)
    lines = []
    for r in res:
        pk = r.peaks()
        if pk:
            lines.append(
                f"g_{r.pair}: first peak {pk['first_peak_r']:.3f} Å, g = "
                f"{_pm(pk['first_peak_g'], pk['first_peak_g_err'], '.3f')}; first min "
                f"{pk['first_min_r']:.3f} Å, n = {pk['coordination_at_first_min']:.3f}"
            )
    return _finish(
        args, {"n_frames": traj.n_frames, "rdfs": [r.to_dict() for r in res]}, png, js, lines
    )


def run_orientation(args) -> int:
    from .molecules import water_trajectory
    from .orientation import orientation_free_energy, plot_orientation

    traj = _load(args)
    w = water_trajectory(traj)
    res = orientation_free_energy(w.geometry.bisector, args.ncos, args.nphi, args.blocks)
    png, js = _outputs(args, "orientation")
    plot_orientation(res, png, args.title)
    d = res.to_dict()
    lines = [
        f"{len(w.waters)} molecules, {traj.n_frames} frames, {d['n_blocks']} blocks",
        f"max |F| = {d['max_abs_F']:.3f} kT (max |F|/err = {d['max_abs_F_over_err']:.2f}); "
        f"chi2/bin = {d['chi2_per_bin']:.2f}",
        f"<u> = {np.round(res.mean_u, 4).tolist()} ± {np.round(res.mean_u_err, 4).tolist()}; "
        f"<P2(cos θ)> = {_pm(res.P2, res.P2_err)}",
    ]
    return _finish(
        args,
        {"axis": "water bisector (dipole) direction, lab frame", "n_molecules": len(w.waters), **d},
        png,
        js,
        lines,
    )


def run_angular_momentum(args) -> int:
    from .angular import analyse_angular_momentum, make_whole, mean_torque, plot_angular_momentum

    traj = _load(args)
    sel = (
        np.arange(traj.n_atoms)
        if args.atoms is None
        else np.array([int(i) for i in args.atoms.split(",")])
    )
    dt = _frame_dt(args, traj)
    x = make_whole(traj.positions[:, sel], traj.cells, traj.pbc)
    m = traj.masses[sel]
    v = None if traj.velocities is None or args.finite_differences else traj.velocities[:, sel]
    t = np.arange(traj.n_frames) * dt
    res = analyse_angular_momentum(t, x, m, v, args.blocks)
    tq = None if traj.forces is None else mean_torque(x, traj.forces[:, sel], m, args.blocks)
    png, js = _outputs(args, "angular-momentum")
    plot_angular_momentum(res, png, tq, args.title)
    d = res.to_dict()
    lines = [
        f"{len(sel)} atoms, {traj.n_frames} frames every {dt:g} ps; L from {res.source}",
        f"|L| mean {d['L_norm_mean']:.4g} amu Å²/ps; d|L|/dt = "
        f"{_pm(res.drift_norm.slope, res.drift_norm.slope_err)} amu Å²/ps²",
    ]
    summary = {"angular_momentum": d}
    if tq is not None:
        summary["torque"] = tq.to_dict()
        lines.append(f"mean |τ| = {_pm(tq.mean_norm, tq.mean_norm_err)} eV")
    return _finish(args, summary, png, js, lines)


def run_msd(args) -> int:
    from .diffusion import diffusion, plot_msd
    from .molecules import water_trajectory

    traj = _load(args)
    dt = _frame_dt(args, traj)
    w = water_trajectory(traj)
    res = diffusion(
        w.com_unwrapped, dt, args.blocks, args.fit_start, args.fit_end, not args.keep_com
    )
    png, js = _outputs(args, "msd")
    plot_msd(res, png, args.title)
    lines = [
        f"{len(w.waters)} molecules, {traj.n_frames} frames every {dt:g} ps",
        f"D = {_pm(res.D, res.D_err)} Å²/ps = {_pm(10 * res.D, 10 * res.D_err)} 1e-9 m²/s "
        f"(fit {res.fit_window[0]:.3g}–{res.fit_window[1]:.3g} ps)",
    ]
    return _finish(args, res.to_dict(), png, js, lines)


def run_reorientation(args) -> int:
    from .molecules import water_trajectory
    from .reorientation import plot_reorientation, reorientation

    traj = _load(args)
    dt = _frame_dt(args, traj)
    w = water_trajectory(traj)
    res = reorientation(w.geometry.bisector, dt, args.blocks)
    png, js = _outputs(args, "reorientation")
    plot_reorientation(res, png, args.title)
    lines = [
        f"τ_1/e = {_pm(res.tau_e, res.tau_e_err)} ps, "
        f"τ_int = {_pm(res.tau_int, res.tau_int_err)} ps"
    ]
    return _finish(args, res.to_dict(), png, js, lines)


def run_dipole_correlation(args) -> int:
    from .dipoles import dipole_correlations, plot_dipole_correlations
    from .molecules import water_trajectory

    traj = _load(args)
    w = water_trajectory(traj)
    res = dipole_correlations(
        w.geometry.com, w.geometry.bisector, traj.cells, args.rmax, args.bins, args.blocks
    )
    png, js = _outputs(args, "dipole-correlation")
    plot_dipole_correlations(res, png, args.title)
    d = res.to_dict()
    fs = d["first_shell"]
    lines = [
        f"{len(w.waters)} molecules, {res.n_frames} frames",
        f"first populated shell r = {fs['r']:.2f} Å: C = {fs['C']:.3f}, C_L = {fs['C_L']:.3f}, "
        f"C_T = {fs['C_T']:.3f}; G_K(r_max) = {_pm(res.G_K[-1], res.G_K_err[-1], '.3f')}",
    ]
    return _finish(args, d, png, js, lines)


def _select_rows(n: int, args) -> slice:
    return slice(args.start, args.stop, args.stride)


def run_drift(args) -> int:
    from .drift import conserved_drift, plot_drift
    from .io import read_properties

    p = read_properties(args.properties)
    s = _select_rows(len(p), args)
    t = p.time_ps(args.timestep)[s]
    e = p.get(args.column, "energy")[s]
    res = conserved_drift(t, e, args.molecules, args.blocks)
    png, js = _outputs(args, "drift")
    plot_drift(res, png, args.title)
    lines = [
        f"{args.column} over {t[-1] - t[0]:.4g} ps, {args.molecules} molecule(s): drift "
        f"{_pm(1e3 * res.slope, 1e3 * res.slope_err)} meV/molecule/ps, RMS fluctuation "
        f"{1e3 * res.rms_fluctuation:.3g} meV/molecule"
    ]
    return _finish(args, res.to_dict(), png, js, lines)


def _is_extras(path) -> bool:
    with open(path) as fh:
        for line in fh:
            if line.strip():
                return line.lstrip().startswith("#EXTRAS")
    return False


def _column(p, name: str, raw: bool) -> tuple[np.ndarray, str]:
    """A properties column in eV if its unit label is an energy unit (not for
    temperatures), else as written; returns (values, unit label)."""
    k = p.key(name)
    unit = p.units[k]
    if not raw and unit and not k.startswith("temperature"):
        try:
            return p.get(k, "energy"), "eV"
        except (KeyError, ValueError, TypeError):
            pass
    return p[k], unit or ""


def run_spectrum(args) -> int:
    from .io import read_extras, read_properties
    from .spectrum import plot_spectrum, power_spectrum

    if _is_extras(args.series):
        ex = read_extras(args.series)
        key = args.column if args.column in ex.fields else next(iter(ex.fields))
        y = np.asarray(ex[key], dtype=float).reshape(len(ex.steps), -1)[:, 0]
        if args.timestep is None:
            raise SystemExit("probe spectrum: extras files need --timestep (fs)")
        steps = ex.steps
        label, unit = key, ""
        y, steps = (
            y[args.start : args.stop : args.stride],
            steps[args.start : args.stop : args.stride],
        )
        dt = float(np.diff(steps)[0]) * args.timestep * 1e-3
    else:
        p = read_properties(args.series)
        s = _select_rows(len(p), args)
        t = p.time_ps(args.timestep)[s]
        y, unit = _column(p, args.column, args.raw_units)
        y = y[s]
        label = p.key(args.column)
        if args.minus:
            y2, unit2 = _column(p, args.minus, args.raw_units)
            if unit2 != unit:
                raise SystemExit(
                    f"probe spectrum: {args.column} is in {unit}, {args.minus} in {unit2}"
                )
            y = y - y2[s]
            label = f"{label} − {p.key(args.minus)}"
        dt = float(np.median(np.diff(t)))
    res = power_spectrum(y, dt, args.method, args.segment, args.unit, unit)
    png, js = _outputs(args, "spectrum")
    plot_spectrum({label: res}, png, args.title or label)
    d = res.to_dict()
    lines = [
        f"{label}: {len(y)} samples every {dt:g} ps, {res.n_segments} segment(s); "
        f"peak at {res.peak:.4g} {res.freq_unit}"
    ]
    return _finish(args, {"series": label, **d, "freq": res.freq, "psd": res.psd}, png, js, lines)


def run_components(args) -> int:
    from .components import energy_difference, force_difference, plot_components
    from .io import read_ipi_xyz, read_properties

    p = read_properties(args.properties)
    s = _select_rows(len(p), args)
    t = p.time_ps(args.timestep)[s]
    n_mol = args.molecules
    fres, tf = None, None
    if args.forces_plain and args.forces_averaged:
        fp = read_ipi_xyz(args.forces_plain)
        fa = read_ipi_xyz(args.forces_averaged)
        if not np.array_equal(fp.steps, fa.steps):
            raise SystemExit("probe components: force files have different steps")
        if n_mol is None and set(fp.symbols) <= {"O", "H"}:
            n_mol = int(np.sum(fp.symbols == "O"))
        fsel = np.isin(fp.steps, p["step"][s]) if "step" in p else np.ones(len(fp.steps), bool)
        fres = force_difference(fp.values[fsel], fa.values[fsel], args.blocks)
        if "step" in p and ("time" in p or args.timestep):
            tf = np.interp(fp.steps[fsel], p["step"], p.time_ps(args.timestep))
    n_mol = n_mol or 1
    e = energy_difference(
        t,
        p.get(args.plain, "energy")[s],
        p.get(args.averaged, "energy")[s],
        n_mol,
        p.key(args.plain),
        p.key(args.averaged),
        args.blocks,
    )
    png, js = _outputs(args, "components")
    plot_components(e, png, fres, tf)
    d = e.to_dict()
    lines = [
        d["definition"],
        f"mean ΔE = {_pm(d['mean'], d['mean_err'])} meV/molecule, std {d['std']:.3g}, "
        f"MAE {d['mean_abs']:.3g} meV/molecule ({n_mol} molecule(s))",
    ]
    summary = {"energy": d}
    if fres is not None:
        fd = fres.to_dict()
        summary["forces"] = fd
        lines.append(f"ΔF: MAE {_pm(fd['mae'], fd['mae_err'])} meV/Å, RMS {fd['rms']:.3g} meV/Å")
    return _finish(args, summary, png, js, lines)


def run_ice(args) -> int:
    from .ice import plot_ice, read_ice_energies, relative_energies

    res = relative_energies(read_ice_energies(args.energies))
    png, js = _outputs(args, "ice")
    plot_ice(res, png, args.title)
    d = res.to_dict()
    lines = [
        f"{d['n_structures']} structures: RMS difference of relative energies "
        f"{d['rms_difference_rel_mean']:.4g} meV/molecule "
        f"(max {d['max_abs_difference_rel_mean']:.3g}); "
        f"Kendall τ = {d['kendall_tau']:.3f}; same lowest: {d['same_lowest']}"
    ]
    return _finish(args, d, png, js, lines)


# ----------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser, blocks: int = 5) -> None:
    p.add_argument("--out", default="probe", help="output directory (default ./probe)")
    p.add_argument("--name", default=None, help="output file stem (default: the analysis)")
    p.add_argument("--title", default="", help="plot title")
    p.add_argument("--blocks", type=int, default=blocks, help=f"blocks for errors ({blocks})")
    p.add_argument(
        "--start", type=int, default=0, help="first frame/row to use (discard equilibration)"
    )
    p.add_argument("--stop", type=int, default=None, help="stop before this frame/row")
    p.add_argument("--stride", type=int, default=1, help="use every n-th frame/row")


def _traj_args(p: argparse.ArgumentParser, time: bool = False) -> None:
    p.add_argument("traj", help="trajectory: i-PI xyz, extxyz, LAMMPS dump, any ASE format")
    p.add_argument(
        "--format",
        default=None,
        help="ASE format name (e.g. lammps-dump-text) or 'ipi'; default: detect",
    )
    p.add_argument("--types", default=None, help="LAMMPS type map, e.g. 1=O,2=H")
    if time:
        p.add_argument("--timestep", type=float, default=None, help="MD timestep (fs)")
        p.add_argument(
            "--frame-steps",
            type=int,
            default=None,
            help="MD steps between frames (default: from the file's step numbers)",
        )


def _series_time(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timestep",
        type=float,
        default=None,
        help="MD timestep (fs), if the file has no time column",
    )


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``symbreak probe`` and its analyses to the CLI (see :mod:`symbreak.cli`); the
    ``probe`` parser is returned for tests."""
    probe = subparsers.add_parser(
        "probe",
        help="analyse trajectories and properties: g(r), orientations, L(t), MSD, drift, ...",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = probe.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    p = sub.add_parser("rdf", help="g_OO, g_OH, g_HH with coordination numbers")
    _traj_args(p)
    _common(p)
    p.add_argument("--pairs", default="OO,OH,HH", help="comma-separated pairs (OO,OH,HH)")
    p.add_argument("--rmax", type=float, default=None, help="Å (default: half the cell width)")
    p.add_argument("--bins", type=int, default=200)
    p.add_argument(
        "--intermolecular", action="store_true", help="leave out pairs within a water molecule"
    )
    p.set_defaults(func=run_rdf)

    p = sub.add_parser("orientation", help="lab-frame F(cos θ, φ) of the water dipoles (kT)")
    _traj_args(p)
    _common(p, blocks=10)
    p.add_argument("--ncos", type=int, default=10, help="bins in cos θ (10)")
    p.add_argument("--nphi", type=int, default=12, help="bins in φ (12)")
    p.set_defaults(func=run_orientation)

    p = sub.add_parser("angular-momentum", help="L(t) about the COM, its drift, mean torque")
    _traj_args(p, time=True)
    _common(p)
    p.add_argument("--velocities", default=None, help="i-PI velocity xyz (else finite differences)")
    p.add_argument("--forces", default=None, help="i-PI force xyz (for the torque)")
    p.add_argument("--atoms", default=None, help="comma-separated atom indices (default all)")
    p.add_argument(
        "--finite-differences",
        action="store_true",
        help="use finite differences even if velocities are given",
    )
    p.set_defaults(func=run_angular_momentum)

    p = sub.add_parser("msd", help="MSD of water centres of mass and D")
    _traj_args(p, time=True)
    _common(p)
    p.add_argument(
        "--fit-start", type=float, default=None, help="fit window start (ps; default 0.2 × max lag)"
    )
    p.add_argument(
        "--fit-end",
        type=float,
        default=None,
        help="fit window end (ps; default max lag = half a block)",
    )
    p.add_argument("--keep-com", action="store_true", help="do not remove the system COM drift")
    p.set_defaults(func=run_msd)

    p = sub.add_parser("reorientation", help="C_1(t) = <u(0).u(t)> of the water dipoles")
    _traj_args(p, time=True)
    _common(p)
    p.set_defaults(func=run_reorientation)

    p = sub.add_parser("dipole-correlation", help="C(r), C_L(r), C_T(r), h_Δ, h_D, G_K")
    _traj_args(p)
    _common(p)
    p.add_argument("--rmax", type=float, default=None, help="Å (default: half the cell width)")
    p.add_argument("--bins", type=int, default=60)
    p.set_defaults(func=run_dipole_correlation)

    p = sub.add_parser("drift", help="drift of the conserved quantity (eV/molecule/ps)")
    p.add_argument("properties", help="i-PI properties file")
    _common(p)
    p.add_argument("--column", default="conserved")
    p.add_argument("--molecules", type=int, default=1, help="number of molecules (1)")
    _series_time(p)
    p.set_defaults(func=run_drift)

    p = sub.add_parser("spectrum", help="power spectrum of a property or extras series")
    p.add_argument("series", help="i-PI properties file or extras file")
    _common(p)
    p.add_argument(
        "--column", default="potential", help="property column (or extras key) (potential)"
    )
    p.add_argument("--minus", default=None, help="subtract this column (e.g. the plain component)")
    p.add_argument(
        "--raw-units",
        action="store_true",
        help="use the column as written (default: convert to eV)",
    )
    p.add_argument("--unit", default="THz", choices=["THz", "cm-1"])
    p.add_argument("--method", default="welch", choices=["welch", "periodogram"])
    p.add_argument("--segment", type=int, default=None, help="Welch segment length (samples)")
    _series_time(p)
    p.set_defaults(func=run_spectrum)

    p = sub.add_parser("components", help="averaged − plain energies (and forces) along a run")
    p.add_argument("properties", help="i-PI properties file with both components")
    _common(p)
    p.add_argument("--plain", default="pot_component_raw(0)", help="column of the plain model")
    p.add_argument(
        "--averaged", default="pot_component_raw(1)", help="column of the averaged model"
    )
    p.add_argument("--forces-plain", default=None, help="i-PI xyz of forces_component_raw (plain)")
    p.add_argument("--forces-averaged", default=None, help="... (averaged)")
    p.add_argument(
        "--molecules",
        type=int,
        default=None,
        help="number of molecules (default: from the force files, else 1)",
    )
    _series_time(p)
    p.set_defaults(func=run_components)

    p = sub.add_parser("ice", help="relative energies of structures, plain vs averaged")
    p.add_argument("energies", help="JSON file (see symbreak.analysis.ice)")
    _common(p)
    p.set_defaults(func=run_ice)
    return probe


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone ``symbreak``-like parser holding only ``probe`` (for tests)."""
    parser = argparse.ArgumentParser(prog="symbreak")
    register(parser.add_subparsers(dest="command"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``symbreak probe ARGV`` (e.g. ``main(["rdf", "traj.xyz", "--out", "d"])``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(["probe", *argv])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
