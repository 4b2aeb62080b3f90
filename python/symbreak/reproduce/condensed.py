"""Experiments 3–5: condensed water. Liquid (64 H2O) and PIMD with plain, MTS-averaged
and randomly rotated models (structure, the averaged correction's size), and the
relative energies of ice Ih cells, plain against averaged.

Units: Å, ps, eV (meV in tables), amu.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..analysis.components import energy_difference, force_difference
from ..analysis.diffusion import diffusion
from ..analysis.io import Trajectory, read_ipi_xyz, read_properties
from ..analysis.molecules import water_trajectory
from ..analysis.orientation import orientation_free_energy
from ..analysis.rdf import rdf
from ..analysis.stats import mean_and_error  # NaN error when too short
from .context import (
    TIMESTEP_FS,
    Context,
    equilibration_frames,
    load_equilibrated,
    molecule_ids,
    n_blocks,
    run_drift,
)
from .inputs import Input
from .report import STUDY, Outcome, Table, plot_overlay


# ====================================================================================
# 3. liquid water and 5. PIMD: plain, MTS averaged correction, random rotation
# ====================================================================================
def _condensed_runs(
    ctx: Context,
    o: Outcome,
    src: Path,
    steps: int,
    stride: int,
    setup: Callable[[Input], Input],
    random: bool,
) -> dict[str, tuple]:
    """plain / MTS / random runs of a 64-H2O input; returns {label: (RunInfo, timestep
    fs of a recorded step)}."""
    s = ctx.settings
    variants = [("plain", None), ("mts", s.mts_average)] + ([("random", None)] if random else [])
    out = {}
    for label, avg in variants:
        inp = setup(Input(src)).set_stride("pos", stride).set_stride("out", stride)
        n, dt, limit = steps, TIMESTEP_FS, s.timeout
        if label == "random":
            inp.set_average("random+seed=7")
        if label == "mts":
            inp.make_mts(avg, s.mts_nmts)
            inp.add_columns(
                "out", ["pot_component_raw(0){electronvolt}", "pot_component_raw(1){electronvolt}"]
            )
            fstride = max(1, stride // s.mts_nmts)
            for k, name in ((0, "fplain"), (1, "favg")):
                inp.add_trajectory(name, f"forces_component_raw({k})", fstride, format="xyz")
            n, dt, limit = max(1, steps // s.mts_nmts), TIMESTEP_FS * s.mts_nmts, s.mts_timeout
        out[label] = (ctx.run(o, inp, label, n, limit), dt)
    return out


def _mts_note(ctx: Context) -> str:
    s = ctx.settings
    return (
        f"`mts`: the study's recipe (as `ipi_inputs/mts_water512`): plain model on the "
        f"{TIMESTEP_FS} fs inner steps, the correction (`{s.mts_average}` − plain) on the "
        f"{TIMESTEP_FS * s.mts_nmts:g} fs outer step; `random`: one random O(3) rotation "
        "per evaluation"
    )


def _structure_rows(o: Outcome, tab: Table, label: str, traj: Trajectory, pair: str) -> dict:
    """g(r) of ``pair`` (intermolecular) and the orientation distribution of the
    bisectors: rows in ``tab``; returns the g(r) and orientation dicts."""
    nb = n_blocks(traj.n_frames)
    g = rdf(traj.positions, traj.cells, traj.symbols, pair, None, 150, nb, molecule_ids(traj))
    pk = g.peaks()
    tab.add(f"g_{pair} first peak r, {label}", pk.get("first_peak_r"), unit="Å")
    tab.add(
        f"g_{pair} first peak height, {label}", pk.get("first_peak_g"), pk.get("first_peak_g_err")
    )
    u = water_trajectory(traj).geometry.bisector
    ori = orientation_free_energy(u, 6, 8, n_blocks(traj.n_frames, 10, 1)).to_dict()
    tab.add(
        f"orientation χ²/bin against isotropic, {label}", ori["chi2_per_bin"], study=STUDY["bulk"]
    )
    tab.add(f"|⟨u⟩| (net dipole direction), {label}", float(np.linalg.norm(ori["mean_u"])))
    return {"g": g, "orientation": ori}


def _components_rows(o: Outcome, tab: Table, rd: Path, n_mol: int, n_atoms: int) -> dict:
    """Averaged − plain along an MTS run (energies each outer step, forces on the
    position frames): the size of the symmetry breaking in the bulk."""
    p = read_properties(rd / "sim.out")
    e = energy_difference(
        p.time_ps(),
        p.get("pot_component_raw(0)", "energy"),
        p.get("pot_component_raw(1)", "energy"),
        n_mol,
        n_blocks=n_blocks(len(p)),
    ).to_dict()
    # i-PI names these files without a bead suffix (sim.fplain.xyz)
    fp, fa = (read_ipi_xyz(next(rd.glob(f"sim.{n}*.xyz"))) for n in ("fplain", "favg"))
    f = force_difference(fp.values, fa.values, n_blocks(len(fp.values))).to_dict()
    tab.add(
        "|E_avg − E_plain| per atom (mts run)",
        e["mean_abs"] * n_mol / n_atoms,
        unit="meV/atom",
        study=STUDY["break_bulk_E"],
    )
    tab.add(
        "|F_avg − F_plain| (MAE, mts run)",
        f["mae"],
        f["mae_err"],
        "meV/Å",
        study=STUDY["break_bulk_F"],
    )
    return {"energy": e, "forces": f}


def liquid(ctx: Context, o: Outcome) -> None:
    """64 H2O NVT 300 K: plain vs the MTS averaged correction vs random rotation; g_OO,
    orientation distribution, MSD and D, conserved-quantity drift."""
    s = ctx.settings
    d = ctx.folder / o.key
    o.notes += [
        f"64 H2O (192 atoms, 12.38 Å box, 1.008 g/cm³), SVR 300 K (τ 10 fs), "
        f"{s.liquid_steps * TIMESTEP_FS * 1e-3:g} ps per run; the study used 512 H2O, which "
        "costs 8× more per step: too expensive on 2 CPU cores",
        _mts_note(ctx),
        "orientations: water reorients in picoseconds, so 64 molecules over a short run "
        "sample few independent directions and χ²/bin stays well above 1 for any model: "
        "compare the runs with each other",
    ]
    runs = _condensed_runs(
        ctx,
        o,
        ctx.inputs / "nvt_water64" / "input.xml",
        s.liquid_steps,
        s.liquid_stride,
        lambda inp: inp,
        True,
    )
    tab = o.table("Structure, dynamics and conservation (64 H2O)")
    g_curves, msd_curves, e_curves = {}, {}, {}
    for label, (info, dt) in runs.items():
        traj = load_equilibrated(info.run_dir / "sim.pos_0.xyz", s.equilibration)
        st = _structure_rows(o, tab, label, traj, "OO")
        g_curves[label] = (st["g"].r, st["g"].g)
        w = water_trajectory(traj)
        fdt = traj.frame_interval_ps(dt)
        nb = n_blocks(traj.n_frames, 5, 8, 1)  # ≥ 8 frames per block for 4 lags
        D = diffusion(w.com_unwrapped, fdt, nb)
        msd_curves[label] = (D.time, D.msd)
        tab.add(f"D (MSD, {D.time[-1]:.2g} ps lags), {label}", D.D * 10, D.D_err * 10, "1e-9 m²/s")
        dr = run_drift(info.run_dir, 64)
        e_curves[label] = (dr["t"], dr["e"])
        tab.add(
            f"conserved-quantity drift, {label}",
            dr["res"]["drift_meV_per_molecule_per_ps"],
            1e3 * (dr["res"]["drift_err"] or float("nan")),
            "meV/molecule/ps",
        )
        o.data[label] = {
            "rdf_OO": st["g"].to_dict(),
            "orientation": st["orientation"],
            "msd": D.to_dict(),
            "drift": dr["res"],
        }
    o.data["components"] = _components_rows(o, tab, runs["mts"][0].run_dir, 64, 192)
    for name, curves, xl, yl in (
        ("g_OO", g_curves, "r (Å)", "g_OO(r)"),
        ("msd", msd_curves, "lag time (ps)", "MSD (Å²)"),
        ("conserved", e_curves, "time (ps)", "E_cons − E_cons(0) (meV/molecule)"),
    ):
        png = plot_overlay(d / f"{name}.png", curves, xl, yl, name)
        o.plots.append((f"{yl}: plain, mts, random", ctx.rel(png)))


# ====================================================================================
# 4. ice Ih
# ====================================================================================
def _relax(atoms, calc, fmax: float, steps: int, deadline: float, log: Path) -> dict:
    """Fixed-cell L-BFGS (ASE) until ``fmax`` (eV/Å), ``steps`` or ``deadline``."""
    from ase.optimize import LBFGS

    atoms.calc = calc
    opt = LBFGS(atoms, logfile=str(log))
    converged, n = False, 0
    for converged in opt.irun(fmax=fmax, steps=steps):
        n += 1
        if converged or time.monotonic() > deadline:
            break
    f = np.linalg.norm(atoms.get_forces(), axis=1).max()
    return {
        "energy": atoms.get_potential_energy(),
        "steps": n - 1,
        "fmax": f,
        "converged": bool(converged),
    }


def ice(ctx: Context, o: Outcome) -> None:
    """The nine proton-disordered ice Ih cells relaxed (fixed cell) plain, then
    averaged starting from the plain minimum; relative energies per molecule."""
    import ase.io

    from ..analysis.ice import plot_ice, read_ice_energies, relative_energies
    from ..ase import SymbreakCalculator

    s = ctx.settings
    d = ctx.folder / o.key
    d.mkdir(parents=True, exist_ok=True)
    files = sorted((ctx.inputs / "ice_geop").glob("ice_ih_*.xyz"))
    if s.ice_cells is not None:
        files = [f for f in files if f.stem in s.ice_cells]
    o.notes.append(
        f"{len(files)} cells, fixed-cell L-BFGS with ASE and `symbreak.ase.SymbreakCalculator` "
        f"(cheaper to drive in-process than i-PI's geop here) to max |F| < {s.ice_fmax} eV/Å "
        f"(≤ {s.ice_plain_steps} steps plain; averaged `{s.ice_average}` from the plain "
        f"minimum, ≤ {s.ice_avg_steps} steps); all relaxations share a {s.ice_budget:.0f} s budget"
    )
    ev = ctx.evaluator()
    deadline = time.monotonic() + s.ice_budget
    cells, single = [], []
    for f in files:
        atoms = ase.io.read(f)
        n_mol = int(np.sum(atoms.numbers == 8))
        ctx.log(f"relaxing {f.stem} ({len(atoms)} atoms)")
        plain = _relax(
            atoms,
            SymbreakCalculator(ev),
            s.ice_fmax,
            s.ice_plain_steps,
            deadline,
            d / f"{f.stem}_plain.log",
        )
        avg_calc = SymbreakCalculator(ev, average=s.ice_average)
        atoms.calc = avg_calc
        e_sp = atoms.get_potential_energy()  # averaged model at the plain minimum
        avg = _relax(
            atoms, avg_calc, s.ice_fmax, s.ice_avg_steps, deadline, d / f"{f.stem}_averaged.log"
        )
        ase.io.write(d / f"{f.stem}_averaged.xyz", atoms)
        cells.append(
            {
                "name": f.stem,
                "n_molecules": n_mol,
                "plain": plain["energy"],
                "averaged": avg["energy"],
                "plain_relax": plain,
                "averaged_relax": avg,
            }
        )
        single.append(
            {"name": f.stem, "n_molecules": n_mol, "plain": plain["energy"], "averaged": e_sp}
        )
    if time.monotonic() > deadline:
        o.status = "partial"
        o.notes.append("the relaxation budget ran out: some cells stopped before converging")
    unconverged = [c["name"] for c in cells if not c["plain_relax"]["converged"]]
    if unconverged:
        o.notes.append(f"not converged to {s.ice_fmax} eV/Å (plain): {', '.join(unconverged)}")
    from ..analysis.report import write_json

    write_json(d / "energies.json", {"structures": cells})
    relaxed = relative_energies(read_ice_energies({"structures": cells}))
    res = relaxed.to_dict()
    sp = relative_energies(read_ice_energies({"structures": single})).to_dict()
    png = plot_ice(relaxed, d / "ice.png", "relaxed, relative to the mean of the cells")
    o.plots.append(("relative energies per molecule, plain and averaged", ctx.rel(png)))
    tab = o.table("Relative energies (per molecule, w.r.t. the mean of the cells)")
    for c in res["structures"]:
        tab.add(
            f"{c['name']}: E − ⟨E⟩ plain / averaged",
            f"{c['rel_mean_plain']:.3f} / {c['rel_mean_averaged']:.3f}",
            unit="meV/molecule",
        )
    tab.add(
        "RMS difference of relative energies (relaxed)",
        res["rms_difference_rel_mean"],
        unit="meV/molecule",
        study=STUDY["bulk"],
    )
    tab.add("max |difference|", res["max_abs_difference_rel_mean"], unit="meV/molecule")
    tab.add(
        "RMS difference, averaged at the plain minimum",
        sp["rms_difference_rel_mean"],
        unit="meV/molecule",
    )
    tab.add("Kendall τ of the two orderings", res["kendall_tau"])
    tab.add("same lowest cell", "yes" if res["same_lowest"] else "no")
    o.data.update({"relaxed": res, "single_point": sp, "cells": cells})


# ====================================================================================
# 5. PIMD (beyond the study)
# ====================================================================================
def pimd(ctx: Context, o: Outcome) -> None:
    """64 H2O PIMD 300 K (batched beads): quantum kinetic energies of H and O, g_OH
    and the orientation distribution, plain vs MTS-averaged (vs random)."""
    s = ctx.settings
    d = ctx.folder / o.key
    o.notes += [
        f"64 H2O, {s.pimd_beads} beads (one batched request per step), PILE-L 300 K, "
        f"{s.pimd_steps * TIMESTEP_FS * 1e-3:g} ps per run; g_OH (intermolecular) and "
        "orientations from bead 0",
        _mts_note(ctx),
    ]
    cols = ["kinetic_cv(H){electronvolt}", "kinetic_cv(O){electronvolt}"]
    runs = _condensed_runs(
        ctx,
        o,
        ctx.inputs / "pimd_water64" / "input.xml",
        s.pimd_steps,
        s.pimd_stride,
        lambda inp: inp.set_beads(s.pimd_beads).add_columns("out", cols),
        s.pimd_random,
    )
    tab = o.table(f"Quantum kinetic energies and structure ({s.pimd_beads} beads)")
    g_curves = {}
    for label, (info, _) in runs.items():
        p = read_properties(info.run_dir / "sim.out")
        k0 = equilibration_frames(len(p), s.equilibration)
        for el, n in (("H", 128), ("O", 64)):
            k = 1e3 * p.get(f"kinetic_cv({el})", "energy")[k0:] / n
            m, e = mean_and_error(k, n_blocks(len(k)))
            tab.add(
                f"K_cv({el}) per atom, {label}",
                m,
                e,
                "meV",
                study="— (classical 1.5 k_B T = 38.8 meV)",
            )
            o.data.setdefault(label, {})[f"K_{el}_meV"] = [m, e]
        traj = load_equilibrated(info.run_dir / "sim.pos_0.xyz", s.equilibration)
        st = _structure_rows(o, tab, label, traj, "OH")
        g_curves[label] = (st["g"].r, st["g"].g)
        o.data[label].update({"rdf_OH": st["g"].to_dict(), "orientation": st["orientation"]})
    if "mts" in runs:
        o.data["components"] = _components_rows(o, tab, runs["mts"][0].run_dir, 64, 192)
    png = plot_overlay(d / "g_OH.png", g_curves, "r (Å)", "g_OH(r) (intermolecular)", "g_OH")
    o.plots.append(("intermolecular g_OH(r), bead 0", ctx.rel(png)))
