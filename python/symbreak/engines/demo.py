"""``symbreak demo``: a short path-integral water run through i-PI with averaging
switched on partway, and a table of what changed.

The demo writes a PIMD input (64 H2O, ``--beads`` beads in one batched request per
step, PILE-L at 300 K, 0.5 fs) into a run directory, runs it with the launcher
(:mod:`symbreak.engines.launcher`: i-PI + one ``symbreak serve`` client), switches the
client from the plain model to a rotational average at ``--switch-at`` through the
run-time control channel (what ``symbreak control --average lebedev:3`` does), and
reads i-PI's outputs to compare the plain and the averaged part of the run:

- ``n_rotations``: model evaluations per structure;
- spread of the energy and the forces over the rotations of the grid
  (``energy_rot_std``, ``forces_rot_std``: how far a single orientation, i.e. the
  plain model, typically is from the average; undefined with one rotation);
- the net torque the model exerts on the system (zero for an invariant model: the
  plain model's torque is the symmetry breaking the dynamics feels, the average's is
  what is left of it);
- cost: model seconds per call (all beads in one call) and wall seconds per MD step.

The starting structure is a 64-molecule frame of the revPBE0-D3 training data (see
``ipi_inputs/README.md`` for its provenance: Langer, Pozdnyakov, Ceriotti, Mach. Learn.:
Sci. Technol. 5, 04LT01 (2024), Materials Cloud doi:10.24435/materialscloud:kz-3b,
CC BY 4.0; Cheng et al., PNAS 116, 1110 (2019)).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .. import exit_codes
from .launcher import LaunchError, LaunchOptions, Switch, launch
from .progress import ProgressRow

DEMO_STRUCTURE = Path(__file__).resolve().parents[1] / "data" / "water_64h2o.xyz"
EXTRA_KEYS = "average,n_rotations,energy_rot_std,forces_rot_std,torque,call_seconds"
_NUMERIC = (("n_rotations", 1), ("energy_rot_std", 1), ("forces_rot_std", 1), ("torque", 3))
_NUMERIC += (("call_seconds", 1),)


def demo_input(structure: Path, beads: int, steps: int) -> str:
    """The demo's i-PI input (PIMD, batched, one ``<ffsocket>``)."""
    return f"""<!-- symbreak demo: PIMD of 64 H2O, {beads} beads batched in one request per step -->
<simulation verbosity='low'>
  <output prefix='sim'>
    <properties filename='out' stride='1' flush='1'> [ step, time{{picosecond}},
      temperature{{kelvin}}, conserved{{electronvolt}}, potential{{electronvolt}} ] </properties>
    <trajectory filename='diag' stride='1' flush='1' extra_type='{EXTRA_KEYS}'> extras </trajectory>
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>2024</seed></prng>
  <ffsocket name='symbreak' mode='unix'>
    <address>demo</address>
    <batch_size>{beads}</batch_size>
  </ffsocket>
  <system>
    <initialize nbeads='{beads}'>
      <file mode='ase'>{structure}</file>
      <velocities mode='thermal' units='kelvin'>300</velocities>
    </initialize>
    <forces><force forcefield='symbreak'/></forces>
    <ensemble><temperature units='kelvin'>300</temperature></ensemble>
    <motion mode='dynamics'>
      <dynamics mode='nvt'>
        <timestep units='femtosecond'>0.5</timestep>
        <thermostat mode='pile_l'>
          <tau units='femtosecond'>100</tau>
          <pile_lambda>0.5</pile_lambda>
        </thermostat>
      </dynamics>
    </motion>
  </system>
</simulation>
"""


def read_diagnostics(path: Path) -> dict[int, dict[str, Any]]:
    """Step → symbreak extras of one bead's ``extra_type='{EXTRA_KEYS}'`` trajectory."""
    out: dict[int, dict[str, Any]] = {}
    step, tokens = None, []

    def flush() -> None:
        if step is None:
            return
        words = [t for t in tokens if not _is_number(t)]
        nums = [float(t) for t in tokens if _is_number(t)]
        rec: dict[str, Any] = {"average": words[0] if words else "?"}
        i = 0
        for key, n in _NUMERIC:
            vals = nums[i : i + n]
            i += n
            rec[key] = vals[0] if n == 1 and vals else vals
        out[step] = rec

    for line in Path(path).read_text().splitlines():
        if line.lstrip().startswith("#EXTRAS"):
            flush()
            step, tokens = int(line.split("Step:")[1].split()[0]), []
        else:
            tokens += line.split()
    flush()
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def summarize(
    beads: list[dict[int, dict[str, Any]]], progress: list[ProgressRow]
) -> list[dict[str, Any]]:
    """One row per averaging policy met in the run, in the order met."""
    walls = {r.step: r.wall for r in progress}
    phases: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    order: list[str] = []
    for step in sorted(beads[0]):
        avg = beads[0][step]["average"]
        if any(b.get(step, {}).get("average") != avg for b in beads):
            continue  # a step that straddles the switch
        if avg not in phases:
            order.append(avg)
        ph = phases[avg]
        ph["steps"].append(step)
        for b in beads:
            rec = b[step]
            ph["n_rotations"].append(rec["n_rotations"])
            ph["e_std"].append(rec["energy_rot_std"])
            ph["f_std"].append(rec["forces_rot_std"])
            ph["torque"].append(float(np.linalg.norm(rec["torque"])))
        ph["call_seconds"].append(beads[0][step]["call_seconds"])
        # wall time of step s: from the row of step s-1 to the row of step s, if both
        # were done with this policy (step 0 is the initial force evaluation only)
        prev = beads[0].get(step - 1, {}).get("average")
        if step > 0 and prev == avg and step in walls and step - 1 in walls:
            ph["wall"].append(walls[step] - walls[step - 1])
    rows = []
    for avg in order:
        ph = phases[avg]
        nrot = int(round(_mean(ph["n_rotations"])))
        rows.append(
            {
                "average": avg,
                "steps": f"{min(ph['steps'])}-{max(ph['steps'])}",
                "n_steps": len(ph["steps"]),
                "n_rotations": nrot,
                "energy_rot_std_meV": _mean(ph["e_std"]) * 1e3 if nrot > 1 else math.nan,
                "forces_rot_std_meV_A": _mean(ph["f_std"]) * 1e3 if nrot > 1 else math.nan,
                "torque_meV": _mean(ph["torque"]) * 1e3,
                "model_s_per_call": float(np.median(ph["call_seconds"])),
                "wall_s_per_step": float(np.median(ph["wall"])) if ph["wall"] else math.nan,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]], n_beads: int, n_atoms: int) -> str:
    """The comparison table, plain text."""

    def f(x: float, fmt: str) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    head = (
        f"{'averaging':<14}{'steps':>8}{'rotations':>10}{'E spread':>11}{'F spread':>11}"
        f"{'|torque|':>10}{'model s':>10}{'wall s':>9}"
    )
    units = (
        f"{'':<14}{'':>8}{'':>10}{'meV/str':>11}{'meV/Å':>11}{'meV':>10}{'/call':>10}{'/step':>9}"
    )
    lines = [head, units, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['average']:<14}{r['steps']:>8}{r['n_rotations']:>10}"
            f"{f(r['energy_rot_std_meV'], '.3f'):>11}{f(r['forces_rot_std_meV_A'], '.2f'):>11}"
            f"{f(r['torque_meV'], '.3f'):>10}{f(r['model_s_per_call'], '.3f'):>10}"
            f"{f(r['wall_s_per_step'], '.2f'):>9}"
        )
    if len(rows) >= 2 and rows[0]["model_s_per_call"] > 0:
        a, b = rows[0], rows[-1]
        cost = b["model_s_per_call"] / a["model_s_per_call"]
        lines.append(
            f"cost of averaging: x{cost:.1f} model time per step for x{b['n_rotations']} "
            f"rotations; net torque {f(a['torque_meV'], '.3f')} -> "
            f"{f(b['torque_meV'], '.3f')} meV"
        )
    lines.append(
        f"({n_beads} beads x {n_atoms} atoms per model call; spreads are the standard "
        "deviation over the rotations of the grid, averaged over beads and steps: how far "
        "a single orientation, i.e. the plain model, is from the average; '-' with one "
        "rotation)"
    )
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``symbreak demo`` to the CLI (see :mod:`symbreak.cli`)."""
    p = subparsers.add_parser(
        "demo",
        help="short PIMD water run in i-PI with averaging switched on partway",
        description="Run a short path-integral MD of 64 H2O through i-PI with a symbreak "
        "client, switch rotational averaging on while it runs, and print what changed "
        "(spread over rotations, torque, cost per step).",
    )
    p.add_argument("--model", default="water-revpbe0d3", help="shipped model name or file")
    p.add_argument("--beads", type=int, default=4, help="path-integral beads (batched)")
    p.add_argument("--steps", type=int, default=16, help="MD steps in all")
    p.add_argument("--switch-at", type=int, default=11, help="step at which to switch")
    p.add_argument("--average", default="lebedev:3", help="averaging switched to, e.g. lebedev:3")
    p.add_argument(
        "--threads", type=int, help="torch threads of the client (default: the idle cores)"
    )
    p.add_argument("--run-dir", type=Path, help="where i-PI runs (default runs/demo-<time>)")
    p.add_argument("--structure", type=Path, default=DEMO_STRUCTURE, help="64 H2O start")
    p.add_argument("--timeout", type=float, default=1800.0, help="stop after this many seconds")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    import time

    try:
        if not 0 < args.switch_at < args.steps:
            raise LaunchError("--switch-at must lie between 0 and --steps")
        if args.beads < 1:
            raise LaunchError("--beads must be >= 1")
        if not Path(args.structure).is_file():
            raise LaunchError(f"structure file '{args.structure}' does not exist")
        switch = Switch.parse(f"{args.switch_at}={args.average}")
        run_dir = args.run_dir or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        xml = run_dir / "demo.xml"
        xml.write_text(demo_input(Path(args.structure).resolve(), args.beads, args.steps))
        import ase.io

        n_atoms = len(ase.io.read(str(args.structure), 0))
        opts = LaunchOptions(
            model=args.model,
            clients=1,
            timeout=args.timeout,
            threads=args.threads,
            run_dir=run_dir,
            switches=[switch],
            progress="lines",
            progress_interval=0.0,
        )
        print(
            f"symbreak demo: PIMD of {n_atoms // 3} H2O, {args.beads} beads (one batched model "
            f"call per step), {args.steps} steps of 0.5 fs at 300 K; plain model until step "
            f"{args.switch_at}, then `symbreak control --average {args.average}` on the "
            "running client.",
            flush=True,
        )
        result = launch(xml, opts, stream=sys.stdout)
    except (LaunchError, ValueError) as err:
        print(f"symbreak demo: {err}", file=sys.stderr)
        return exit_codes.USAGE
    if result.exit_code != exit_codes.OK:
        print(f"symbreak demo: the run failed: {result.message}", file=sys.stderr)
        print(f"symbreak demo: outputs in {result.run_dir}", file=sys.stderr)
        return result.exit_code
    width = len(str(args.beads - 1))
    beads = [
        read_diagnostics(result.run_dir / f"sim.diag_{b:0{width}d}") for b in range(args.beads)
    ]
    rows = summarize(beads, result.progress)
    sw = result.switches[0]
    averaged = [s for s in sorted(beads[0]) if beads[0][s]["average"] != "none"]
    print()
    print(
        f"switch sent after step {sw.at_step} was written; the first step computed with "
        f"{args.average}: {averaged[0] if averaged else 'none (run ended first)'}"
    )
    print(format_table(rows, args.beads, n_atoms))
    print(f"run directory: {result.run_dir} (demo.xml, input.xml, sim.out, sim.diag_*)")
    print(f"total wall time {result.elapsed:.1f} s")
    return exit_codes.OK
