"""The study's experiments in the order the report shows them, and how one is run.

The experiments (:mod:`.gas_phase`, :mod:`.condensed`) are one function each, run with
the shipped model through the i-PI launcher (MD, PIMD) or the ASE calculator (ice
relaxations), analysed with :mod:`symbreak.analysis`. Every function takes a
:class:`~.context.Context` and an :class:`~.report.Outcome` to fill; it writes its i-PI
runs, PNGs and ``summary.json`` into its own folder. Every run has a time limit (the
launcher's ``timeout``; a run stopped by it keeps what it wrote and the experiment is
marked ``partial``), and every loop a step or time bound.

Units: Å, ps, eV (meV in tables), amu; L in ħ; torques in eV.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from .condensed import ice, liquid, pimd
from .context import Context
from .gas_phase import molecule_nve, molecule_nvt
from .inputs import Interrupted
from .report import Outcome, write_outcome


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
