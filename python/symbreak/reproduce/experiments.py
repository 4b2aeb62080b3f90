"""The study's experiments, one function each, run with the shipped model through the
i-PI launcher (MD, PIMD) or the ASE calculator (ice relaxations), analysed with
:mod:`symbreak.analysis`.

Every function takes a :class:`Context` and returns an :class:`~.report.Outcome`; it
writes its i-PI runs, PNGs and ``summary.json`` into its own folder. Every run has a
time limit (the launcher's ``timeout``; a run stopped by it keeps what it wrote and the
experiment is marked ``partial``), and every loop a step or time bound.

Units: Å, ps, eV (meV in tables), amu; L in ħ; torques in eV.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..analysis.angular import analyse_angular_momentum, make_whole, plot_angular_momentum
from ..analysis.components import energy_difference, force_difference
from ..analysis.diffusion import diffusion
from ..analysis.drift import conserved_drift
from ..analysis.io import Trajectory, load_trajectory, read_ipi_xyz, read_properties
from ..analysis.molecules import find_waters, water_trajectory
from ..analysis.orientation import orientation_free_energy, plot_orientation
from ..analysis.rdf import rdf
from ..analysis.stats import mean_and_error  # NaN error when too short
from ..analysis.units import AMU_A2_PER_PS_IN_HBAR
from .inputs import DEFAULT_INPUTS, Input, Interrupted, RunInfo, run_input
from .report import STUDY, Outcome, Table, plot_overlay, write_outcome

TIMESTEP_FS = 0.5  #: the inputs' MD timestep (the inner one with MTS)


# ====================================================================================
# Settings
# ====================================================================================
@dataclass(frozen=True)
class Settings:
    """Sizes and time limits of one reproduction (steps are 0.5 fs MD steps; timeouts
    in seconds of wall time per i-PI run)."""

    quick: bool
    # 1. molecule NVE; the rotation grids of the torque scan (the last is the reference)
    nve_steps: int
    nve_average: str
    grid_policies: tuple[str, ...]
    grid_frames: int
    test_frames: int  #: frames of the model's test split scanned over the grids
    test_policies: tuple[str, ...]
    # 2. molecule NVT
    nvt_steps: int
    nvt_stride: int
    nvt_bins: tuple[int, int]  #: (cos θ, φ) bins of F(cos θ, φ)
    # 3. liquid (64 H2O) and 5. PIMD: plain, MTS averaged correction, random rotation
    liquid_steps: int
    liquid_stride: int
    mts_average: str
    mts_nmts: int
    pimd_beads: int
    pimd_steps: int
    pimd_stride: int
    pimd_random: bool
    # 4. ice: cells (None: all nine), averaging, L-BFGS bounds
    ice_cells: tuple[str, ...] | None
    ice_average: str
    ice_fmax: float  #: eV/Å
    ice_plain_steps: int
    ice_avg_steps: int
    ice_budget: float  #: s for all relaxations together
    equilibration: float  #: fraction of each trajectory discarded
    timeout: float  #: per i-PI run
    mts_timeout: float  #: per MTS / PIMD run
    nvt_timeout: float  #: per molecule NVT run (averaged: ~20 ms per step on one core)

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"


ALL_GRIDS = ("none", "none+inv", "legendre:2", "legendre:2+inv", "legendre:3", "legendre:3+inv")

QUICK = Settings(
    quick=True,
    nve_steps=200,
    nve_average="legendre:2+inv",
    grid_policies=ALL_GRIDS,
    grid_frames=10,
    test_frames=1,
    test_policies=ALL_GRIDS[:4],
    nvt_steps=400,
    nvt_stride=5,
    nvt_bins=(4, 6),
    liquid_steps=60,
    liquid_stride=5,
    mts_average="none+inv",
    mts_nmts=5,
    pimd_beads=4,
    pimd_steps=20,
    pimd_stride=2,
    pimd_random=True,
    ice_cells=("ice_ih_02", "ice_ih_03", "ice_ih_04"),
    ice_average="none+inv",
    ice_fmax=0.1,
    ice_plain_steps=3,
    ice_avg_steps=2,
    ice_budget=60.0,
    equilibration=0.0,
    timeout=90.0,
    mts_timeout=120.0,
    nvt_timeout=90.0,
)

# Full run: ≈ 85 min on 2 busy cores with one torch thread and the interim model (≈ 0.11 s
# per 192-atom evaluation and rotation; molecule steps 10–40 ms with i-PI); the time
# limits (runs, ice budget) cap it at ≈ 135 min whatever the model costs.
FULL = Settings(
    quick=False,
    nve_steps=10000,  # 5 ps
    nve_average="legendre:2+inv",
    grid_policies=ALL_GRIDS,
    grid_frames=50,
    test_frames=4,
    test_policies=ALL_GRIDS,
    nvt_steps=30000,  # 15 ps
    nvt_stride=20,
    nvt_bins=(6, 8),
    liquid_steps=2000,  # 1 ps
    liquid_stride=20,
    mts_average="lebedev:3",
    mts_nmts=10,
    pimd_beads=8,
    pimd_steps=300,  # 0.15 ps
    pimd_stride=10,
    pimd_random=False,
    ice_cells=None,
    ice_average="lebedev:3",
    ice_fmax=0.05,
    ice_plain_steps=200,
    ice_avg_steps=10,
    ice_budget=600.0,
    equilibration=0.1,
    timeout=600.0,
    # 1000 s left the 8-bead PIMD MTS run 7 s of margin in sitting 8 (993 s for its 30 steps
    # with another job on the second core)
    mts_timeout=1300.0,
    # 600 s stopped the averaged run 53 steps short in two full reproductions (sitting 6, 7)
    nvt_timeout=900.0,
)


@dataclass
class Context:
    """Where and how the experiments run; ``log`` writes progress to stderr."""

    out: Path
    settings: Settings
    model: str = "water-revpbe0d3"
    threads: int = 1
    inputs: Path = DEFAULT_INPUTS
    t0: float = field(default_factory=time.monotonic)
    stage: str = ""
    _evaluator: object | None = None

    @property
    def folder(self) -> Path:
        """Where the experiment folders go (beside ``reproduction.md``)."""
        return self.out / "reproduction"

    def log(self, text: str) -> None:
        print(
            f"[reproduce {time.monotonic() - self.t0:7.1f} s] {self.stage}{text}",
            file=sys.stderr,
            flush=True,
        )

    def evaluator(self):
        """One in-process model shared by the grid scans and the ice relaxations."""
        if self._evaluator is None:
            import torch

            from ..evaluator import Evaluator

            torch.set_num_threads(self.threads)
            self._evaluator = Evaluator(self.model)
        return self._evaluator

    def run(self, outcome: Outcome, inp: Input, name: str, steps: int, timeout: float) -> RunInfo:
        """One i-PI run in ``<experiment>/runs/<name>``, recorded in ``outcome.runs``."""
        folder = self.folder / outcome.key / "runs" / name
        self.log(f"i-PI run '{name}', {steps} steps (limit {timeout:.0f} s)")
        info = run_input(
            inp, folder, steps=steps, timeout=timeout, model=self.model, threads=self.threads
        )
        outcome.runs[name] = {**info.to_dict(), "rel_dir": str(folder.relative_to(self.out))}
        if info.status == "partial":
            outcome.status = "partial"
            outcome.notes.append(
                f"run `{name}` reached its time limit at step {info.steps_done} of {steps}; "
                "its numbers use the steps it made"
            )
        return info

    def rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.out))


# ====================================================================================
# Helpers
# ====================================================================================
def _nblocks(n: int, want: int = 5, per_block: int = 2, least: int = 2) -> int:
    """Blocks for error bars: ``want``, fewer (down to ``least``) when ``n`` samples are
    too few for ``per_block`` each (the analyses then give NaN errors)."""
    return int(max(least, min(want, n // per_block)))


def _skip(n: int, fraction: float) -> int:
    """Frames to discard as equilibration (keeps at least half)."""
    return min(int(n * fraction), n // 2)


def _traj(path: Path, fraction: float, **kw) -> Trajectory:
    traj = load_trajectory(path, **kw)
    return traj.select(_skip(traj.n_frames, fraction))


def _molecule_ids(traj: Trajectory) -> np.ndarray:
    """Molecule index (N,) of every atom (waters from frame 0; others alone), to leave
    intramolecular pairs out of g(r)."""
    waters = find_waters(traj.symbols, traj.positions[0], traj.cells[0], traj.pbc)
    mol = np.arange(traj.n_atoms) + len(waters)
    for k, idx in enumerate(waters):
        mol[idx] = k
    return mol


def _drift(run_dir: Path, n_molecules: int) -> dict:
    """Drift of i-PI's conserved quantity (``sim.out``), in meV/molecule/ps."""
    p = read_properties(run_dir / "sim.out")
    t, e = p.time_ps(), p.get("conserved", "energy")
    res = conserved_drift(t, e, n_molecules, _nblocks(len(t)))
    return {"t": t, "e": (e - e[0]) / n_molecules * 1e3, "res": res.to_dict()}


def _scan_grids(ev, structures, policies: tuple[str, ...], n_atoms: int) -> list[dict]:
    """Each structure with each averaging policy: mean |τ| of the (averaged) model (the
    evaluator's ``torque`` diagnostic, eV) and the energy (meV/structure and meV/atom)
    and force (meV/Å, MAE over components) errors against the last policy."""
    from ..rotations import AveragingPolicy

    res = {p: [ev.compute(s, p)[0] for s in structures] for p in policies}
    ref = res[policies[-1]]
    out = []
    for p in policies:
        tau = np.array([np.linalg.norm(r.diagnostics["torque"]) for r in res[p]])
        de = np.array([abs(r.energy - q.energy) for r, q in zip(res[p], ref, strict=True)])
        fd = force_difference(
            np.array([q.forces for q in ref]), np.array([r.forces for r in res[p]]), 2
        )
        out.append(
            {
                "policy": p,
                "n_rotations": AveragingPolicy.parse(p).n_rotations,
                "torque_mean": float(tau.mean()),
                "torque_max": float(tau.max()),
                "dE_meV": 1e3 * float(de.mean()),
                "dE_meV_per_atom": 1e3 * float(de.mean()) / n_atoms,
                "dF_mae_meV_A": fd.to_dict()["mae"],
            }
        )
    return out


def _structures_from(traj: Trajectory, n: int, pbc: bool):
    from ase.data import atomic_numbers

    from ..evaluator import Structure

    numbers = np.array([atomic_numbers[s] for s in traj.symbols])
    idx = np.unique(np.linspace(0, traj.n_frames - 1, min(n, traj.n_frames)).astype(int))
    return [Structure(numbers, traj.positions[i], traj.cells[i], (pbc,) * 3) for i in idx]


# ====================================================================================
# 1. single molecule NVE
# ====================================================================================
def molecule_nve(ctx: Context, o: Outcome) -> None:
    """One molecule in a 100 Å box, NVE 0.5 fs from 300 K, plain and averaged; L(t),
    conserved drift, the torque of the model against the grid size, and the grid
    convergence of the energy on the model's test frames."""
    s = ctx.settings
    d = ctx.folder / o.key
    src = ctx.inputs / "molecule_nve" / "input.xml"
    t_ps = s.nve_steps * TIMESTEP_FS * 1e-3
    o.notes.append(
        f"one H2O in a 100 Å box without PBC, NVE 0.5 fs, {t_ps:g} ps per run (study: ~25 ps), "
        f"same initial velocities (300 K, seed 31415); averaged run: `{s.nve_average}` "
        "(the study's `legendre:2` + inversion, 36 rotations)"
    )
    L_curves, dL_curves, results = {}, {}, {}
    for label, spec in (("plain", "none"), ("averaged", s.nve_average)):
        info = ctx.run(o, Input(src).set_average(spec, "plain"), label, s.nve_steps, s.timeout)
        rd = info.run_dir
        traj = load_trajectory(rd / "sim.pos_0.xyz", velocities=rd / "sim.vel_0.xyz")
        t = np.arange(traj.n_frames) * traj.frame_interval_ps(TIMESTEP_FS)
        x = make_whole(traj.positions)  # gas phase: no periodic images
        am = analyse_angular_momentum(t, x, traj.masses, traj.velocities, _nblocks(len(t)))
        png = plot_angular_momentum(am, d / f"angular_momentum_{label}.png", title=label)
        o.plots.append((f"L(t) of the {label} run ({spec})", ctx.rel(png)))
        L = am.L * AMU_A2_PER_PS_IN_HBAR
        dL = np.linalg.norm(L - L[0], axis=1)
        L_curves[label] = (t, np.linalg.norm(L, axis=1))
        dL_curves[label] = (t, dL)
        p = read_properties(rd / "sim.out")
        comp = energy_difference(
            p.time_ps(),
            p.get("pot_component_raw(0)", "energy"),
            p.get("pot_component_raw(1)", "energy"),
            1,
            n_blocks=_nblocks(len(p)),
        ).to_dict()
        results[label] = {
            "policy": spec,
            "angular_momentum": am.to_dict(),
            "L_change_max_hbar": float(dL.max()),
            "L_norm_drift_hbar_per_ps": am.drift_norm.slope * AMU_A2_PER_PS_IN_HBAR,
            "L_norm_drift_err": am.drift_norm.slope_err * AMU_A2_PER_PS_IN_HBAR,
            "drift": _drift(rd, 1)["res"],
            "energy_vs_lebedev5inv": comp,
        }
        if label == "plain":
            plain_traj = traj
    o.plots.append(
        (
            "|L(t) − L(0)|: the plain model's torque changes the angular momentum, "
            "the averaged one conserves it",
            ctx.rel(plot_overlay(d / "L_change.png", dL_curves, "time (ps)", "|L(t) − L(0)| (ħ)")),
        )
    )
    tab = o.table("Angular momentum and energy conservation")
    for label, r in results.items():
        tab.add(
            f"max |L(t) − L(0)|, {label}",
            r["L_change_max_hbar"],
            unit="ħ",
            study="changes (plain) / conserved (averaged)",
        )
        tab.add(f"d|L|/dt, {label}", r["L_norm_drift_hbar_per_ps"], r["L_norm_drift_err"], "ħ/ps")
        tab.add(
            f"conserved-quantity drift, {label}",
            r["drift"]["drift_meV_per_molecule_per_ps"],
            1e3 * (r["drift"]["drift_err"] or float("nan")),
            "meV/ps",
        )
    c = results["plain"]["energy_vs_lebedev5inv"]
    tab.add(
        "|E_plain − E_avg| along the plain run (avg: lebedev:5+inv, 140 rot.)",
        c["mean_abs"],
        unit="meV/molecule",
        study=STUDY["break_gas_E"],
    )

    # torque of the model against the grid size, on frames of the plain run
    ctx.log("torque and energy error against the grid size (molecule frames)")
    ev = ctx.evaluator()
    scan = _scan_grids(ev, _structures_from(plain_traj, s.grid_frames, False), s.grid_policies, 3)
    ref = s.grid_policies[-1]
    tab = o.table(
        f"Grid size (molecule, {min(s.grid_frames, plain_traj.n_frames)} frames "
        f"of the plain run; errors against `{ref}`)"
    )
    for g in scan:
        tab.add(
            f"mean |τ|, `{g['policy']}` ({g['n_rotations']} rot.)",
            g["torque_mean"],
            unit="eV",
            study="falls with the grid size",
        )
    tab.add(
        f"|E_plain − E_{ref}|",
        scan[0]["dE_meV"],
        unit="meV/molecule",
        study=STUDY["break_gas_E"] if ref == ALL_GRIDS[-1] else "",
    )
    tab.add(
        f"|F_plain − F_{ref}| (MAE)",
        scan[0]["dF_mae_meV_A"],
        unit="meV/Å",
        study=STUDY["break_gas_F"] if ref == ALL_GRIDS[-1] else "",
    )
    n = np.array([g["n_rotations"] for g in scan])
    o.plots.append(
        (
            "mean |τ| of the model (molecule) against the number of rotations averaged over",
            ctx.rel(
                plot_overlay(
                    d / "torque_vs_grid.png",
                    {"mean |τ|": (n, [g["torque_mean"] for g in scan])},
                    "rotations",
                    "mean |τ| (eV)",
                    logx=True,
                    logy=True,
                    marker="o",
                )
            ),
        )
    )
    o.data.update({"runs": results, "grid_scan_molecule": scan})
    _test_frames_scan(ctx, o, ev)


def _test_frames_scan(ctx: Context, o: Outcome, ev) -> None:
    """Energy error against the largest grid on the model's test frames (the study's
    grid-convergence numbers; the split is the one recorded in the model file), when the
    training data is in the checkout."""
    import ase.io

    from ..evaluator import Structure
    from ..training_data import file_fingerprint

    s = ctx.settings
    record = ev.model.metadata.training if s.test_frames >= 1 else {}
    if not record.get("split", {}).get("test"):
        o.notes.append("grid convergence on test frames skipped (no test split for this model)")
        return
    name = record.get("data", "water_revpbe0d3_160.xyz")
    # The training data sits in the checkout's data/: next to the inputs given (--inputs),
    # in the working directory, or above the package when it runs from the checkout (the
    # inputs installed with the package have no data beside them).
    candidates = [
        ctx.inputs.parent / "data" / name,
        Path.cwd() / "data" / name,
        Path(__file__).resolve().parents[3] / "data" / name,
    ]
    data = next((c for c in candidates if c.is_file()), None)
    if data is None:
        o.notes.append(
            f"grid convergence on test frames skipped: no data/{name} in the checkout "
            "(run from the repository root)"
        )
        return
    digest = file_fingerprint(data)
    if record.get("data_sha256", digest) != digest:
        o.notes.append(f"grid convergence on test frames skipped: {data} is not the model's data")
        return
    split = record.get("split", {}).get("test", [])[: s.test_frames]
    frames = [ase.io.read(data, i) for i in split]
    ctx.log(f"energy error against the grid size ({len(frames)} test frame(s))")
    n_atoms = len(frames[0])
    scan = _scan_grids(ev, [Structure.from_atoms(a) for a in frames], s.test_policies, n_atoms)
    ref = s.test_policies[-1]
    tab = o.table(
        f"Grid convergence on {len(frames)} test frame(s) ({n_atoms} atoms) of the "
        f"model's split, against `{ref}`"
    )
    full = ref == ALL_GRIDS[-1]
    for g in scan[:-1]:
        key = f"grid_{g['n_rotations']}"
        tab.add(
            f"|E − E_ref|, `{g['policy']}` ({g['n_rotations']} rot.)",
            g["dE_meV"],
            unit="meV/structure",
            study=STUDY.get(key, "") if full else "",
        )
    tab.add(
        "|E_plain − E_ref| per atom",
        scan[0]["dE_meV_per_atom"],
        unit="meV/atom",
        study=STUDY["break_test_E"] if full else "",
    )
    tab.add(
        "|F_plain − F_ref| (MAE)",
        scan[0]["dF_mae_meV_A"],
        unit="meV/Å",
        study=STUDY["break_test_F"] if full else "",
    )
    if not full:
        o.notes.append(f"quick mode: grid errors are against `{ref}`, not the 150-rotation grid")
    o.data["grid_scan_test_frames"] = {"frames": split, "scan": scan}


# ====================================================================================
# 2. single molecule NVT
# ====================================================================================
def molecule_nvt(ctx: Context, o: Outcome) -> None:
    """One molecule, Langevin NVT 300 K, plain and averaged: lab-frame F(cos θ, φ) of
    its bisector (dipole) direction."""
    s = ctx.settings
    d = ctx.folder / o.key
    src = ctx.inputs / "molecule_nvt" / "input.xml"
    o.notes.append(
        f"one H2O without PBC, Langevin 300 K (τ 100 fs), {s.nvt_steps * TIMESTEP_FS * 1e-3:g} ps "
        f"per run (study: NVT, F(cos θ, φ)); frames every {s.nvt_stride} steps; averaged run: "
        f"`{s.nve_average}`; F in k_B T on {s.nvt_bins[0]} × {s.nvt_bins[1]} bins; "
        "χ²/bin ≈ 1 for an isotropic distribution (errors from blocks of frames; the study "
        "ran 100 ps, and the weak anisotropy of the plain model needs such lengths to show)"
    )
    tab = o.table("Orientation of the molecule in the lab frame")
    prof = {}
    for label, spec in (("plain", "none"), ("averaged", s.nve_average)):
        inp = Input(src).set_average(spec).set_stride("pos", s.nvt_stride)
        info = ctx.run(o, inp, label, s.nvt_steps, s.nvt_timeout)
        traj = _traj(info.run_dir / "sim.pos_0.xyz", s.equilibration)
        u = water_trajectory(traj).geometry.bisector
        res = orientation_free_energy(u, *s.nvt_bins, _nblocks(traj.n_frames, 10))
        png = plot_orientation(res, d / f"orientation_{label}.png", f"{label} ({spec})")
        o.plots.append((f"F(cos θ, φ) of the {label} run", ctx.rel(png)))
        r = res.to_dict()
        o.data[label] = r
        cc = r["cos_centres"]
        prof[label] = (cc, res.F_cos)
        tab.add(
            f"χ²/bin against isotropic, {label}",
            r["chi2_per_bin"],
            study=STUDY["gas"] if label == "plain" else "flat",
        )
        tab.add(f"max |F|, {label}", r["max_abs_F"], unit="k_B T")
        tab.add(f"⟨P₂(cos θ)⟩, {label}", r["P2_mean"], r["P2_err"])
    o.plots.append(
        (
            "φ-integrated F(cos θ), both runs",
            ctx.rel(plot_overlay(d / "F_cos.png", prof, "cos θ", "F(cos θ) / k_B T", marker="o")),
        )
    )


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
    nb = _nblocks(traj.n_frames)
    g = rdf(traj.positions, traj.cells, traj.symbols, pair, None, 150, nb, _molecule_ids(traj))
    pk = g.peaks()
    tab.add(f"g_{pair} first peak r, {label}", pk.get("first_peak_r"), unit="Å")
    tab.add(
        f"g_{pair} first peak height, {label}", pk.get("first_peak_g"), pk.get("first_peak_g_err")
    )
    u = water_trajectory(traj).geometry.bisector
    ori = orientation_free_energy(u, 6, 8, _nblocks(traj.n_frames, 10, 1)).to_dict()
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
        n_blocks=_nblocks(len(p)),
    ).to_dict()
    # i-PI names these files without a bead suffix (sim.fplain.xyz)
    fp, fa = (read_ipi_xyz(next(rd.glob(f"sim.{n}*.xyz"))) for n in ("fplain", "favg"))
    f = force_difference(fp.values, fa.values, _nblocks(len(fp.values))).to_dict()
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
        traj = _traj(info.run_dir / "sim.pos_0.xyz", s.equilibration)
        st = _structure_rows(o, tab, label, traj, "OO")
        g_curves[label] = (st["g"].r, st["g"].g)
        w = water_trajectory(traj)
        fdt = traj.frame_interval_ps(dt)
        nb = _nblocks(traj.n_frames, 5, 8, 1)  # ≥ 8 frames per block for 4 lags
        D = diffusion(w.com_unwrapped, fdt, nb)
        msd_curves[label] = (D.time, D.msd)
        tab.add(f"D (MSD, {D.time[-1]:.2g} ps lags), {label}", D.D * 10, D.D_err * 10, "1e-9 m²/s")
        dr = _drift(info.run_dir, 64)
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
        k0 = _skip(len(p), s.equilibration)
        for el, n in (("H", 128), ("O", 64)):
            k = 1e3 * p.get(f"kinetic_cv({el})", "energy")[k0:] / n
            m, e = mean_and_error(k, _nblocks(len(k)))
            tab.add(
                f"K_cv({el}) per atom, {label}",
                m,
                e,
                "meV",
                study="— (classical 1.5 k_B T = 38.8 meV)",
            )
            o.data.setdefault(label, {})[f"K_{el}_meV"] = [m, e]
        traj = _traj(info.run_dir / "sim.pos_0.xyz", s.equilibration)
        st = _structure_rows(o, tab, label, traj, "OH")
        g_curves[label] = (st["g"].r, st["g"].g)
        o.data[label].update({"rdf_OH": st["g"].to_dict(), "orientation": st["orientation"]})
    if "mts" in runs:
        o.data["components"] = _components_rows(o, tab, runs["mts"][0].run_dir, 64, 192)
    png = plot_overlay(d / "g_OH.png", g_curves, "r (Å)", "g_OH(r) (intermolecular)", "g_OH")
    o.plots.append(("intermolecular g_OH(r), bead 0", ctx.rel(png)))


@dataclass(frozen=True)
class Experiment:
    key: str  #: folder name
    title: str
    func: Callable[[Context, Outcome], None]


EXPERIMENTS: list[Experiment] = [
    Experiment("1_molecule_nve", "Single molecule, NVE: angular momentum and torque", molecule_nve),
    Experiment("2_molecule_nvt", "Single molecule, NVT: orientation free energy", molecule_nvt),
    Experiment("3_liquid", "Liquid water: plain vs MTS-averaged vs random rotation", liquid),
    Experiment("4_ice", "Ice Ih: relative energies of the cells, plain vs averaged", ice),
    Experiment("5_pimd", "Beyond the study: path-integral MD", pimd),
]


def run_experiment(ctx: Context, k: int, exp: Experiment) -> Outcome:
    """Run one experiment; any error makes it ``failed`` (keeping what it had done; the
    others still run), except an interrupt, which propagates."""
    ctx.stage = f"({k}/{len(EXPERIMENTS)} {exp.key}) "
    ctx.log("start")
    o = Outcome(exp.key, exp.title)
    t0 = time.monotonic()
    try:
        exp.func(ctx, o)
    except Interrupted:
        raise
    except Exception as err:  # noqa: BLE001 - reported in the markdown, others still run
        o.status = "failed"
        o.error = f"{type(err).__name__}: {err}\n\n" + traceback.format_exc(limit=-4)
        ctx.log(f"FAILED: {type(err).__name__}: {err}")
    o.elapsed = time.monotonic() - t0
    o.date = time.strftime("%Y-%m-%d %H:%M")
    write_outcome(ctx.folder / o.key, o)
    ctx.log(f"{o.status} in {o.elapsed:.0f} s")
    ctx.stage = ""
    return o
