"""``symbreak reproduce [--quick] [--out DIR] [--threads N]``: run the study's
experiments and write ``DIR/reproduction.md`` (plots and per-experiment folders with
the i-PI outputs and JSON summaries in ``DIR/reproduction/``).

Exit codes (:mod:`symbreak.exit_codes`): 0 when every experiment ran (some possibly
stopped by their time limits: ``partial``), 1 for a usage error (nothing was run), 2
when one or more failed (the report says why), 130 when interrupted (the report then
holds the experiments done so far).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from .. import exit_codes


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``symbreak reproduce`` to the CLI (see :mod:`symbreak.cli`)."""
    p = subparsers.add_parser(
        "reproduce",
        help="rerun the study's experiments and write a report (docs/reproduction.md)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny runs (a smoke test, < 5 min on 2 cores); default: the full runs "
        "(~105 min; time limits cap them at ~2.3 h)",
    )
    p.add_argument("--out", type=Path, default=Path("docs"), help="report folder (docs)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads per process (default: idle cores)"
    )
    p.add_argument("--model", default="water-revpbe0d3", help="shipped model name or file")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated experiment numbers to run, e.g. 1,4 (default: all five)",
    )
    p.add_argument(
        "--inputs", type=Path, default=None, help="the i-PI inputs folder (default: ipi_inputs/)"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..engines.clients import default_threads
    from ..export import resolve_model_path
    from ..training_data import file_fingerprint
    from .context import FULL, QUICK, Context
    from .experiments import EXPERIMENTS, run_experiment
    from .inputs import DEFAULT_INPUTS, Interrupted
    from .report import kept_outcomes, write_report

    inputs = (args.inputs or DEFAULT_INPUTS).resolve()
    if not (inputs / "molecule_nve" / "input.xml").is_file():
        print(f"symbreak reproduce: no i-PI inputs in {inputs} (--inputs DIR)", file=sys.stderr)
        return exit_codes.USAGE
    try:
        only = None if args.only is None else {int(k) for k in args.only.split(",")}
        if only is not None and not only <= set(range(1, len(EXPERIMENTS) + 1)):
            raise ValueError
    except ValueError:
        print(f"symbreak reproduce: bad --only {args.only!r} (numbers 1 to 5)", file=sys.stderr)
        return exit_codes.USAGE
    try:  # the file's hash tells a kept experiment's model from a retrained one of that name
        sha = file_fingerprint(resolve_model_path(args.model))
    except FileNotFoundError as err:
        print(f"symbreak reproduce: --model: {err}", file=sys.stderr)
        return exit_codes.USAGE
    threads = args.threads or default_threads(1)
    # i-PI and the clients inherit it: keeps numpy/OpenMP from oversubscribing the cores
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    settings = QUICK if args.quick else FULL
    out = args.out.resolve()
    ctx = Context(out, settings, model=args.model, threads=threads, inputs=inputs)
    ctx.log(f"{settings.mode} reproduction, model {args.model}, {threads} thread(s), into {out}")
    outcomes, code = [], 0
    try:
        for k, exp in enumerate(EXPERIMENTS, 1):
            if only is None or k in only:
                outcomes.append(run_experiment(ctx, k, exp))
    except (Interrupted, KeyboardInterrupt) as err:
        ctx.log(f"interrupted ({err}): writing the report of what is done")
        code = exit_codes.from_signal(signal.SIGINT)
    # --only into a folder with a report of the same mode and model: the other
    # experiments keep their results there, so the report stays whole.
    kept = [] if only is None else kept_outcomes(out, only, settings.quick, sha)
    outcomes = sorted(outcomes + kept, key=lambda o: int(o.number))
    meta = {
        "quick": settings.quick,
        "kept": [int(o.number) for o in kept],
        "model": args.model,
        "model_sha256": sha,
        "threads": threads,
        "elapsed": time.monotonic() - ctx.t0,
        "host": f"{os.uname().nodename} ({os.cpu_count()} cores)",
        "settings": settings.__dict__,
        "model_accuracy": _model_accuracy(args.model),
    }
    md = write_report(out, outcomes, meta)
    failed = [o.key for o in outcomes if o.status == "failed"]
    ctx.log(f"report: {md}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return code or (exit_codes.REPRODUCE_FAILED if failed else exit_codes.OK)


def _model_accuracy(model: str) -> str:
    """One line on the model's own test errors (from its metadata), for the report."""
    from ..export import load_model

    try:
        training = load_model(model).metadata.training
        test = training["metrics"]["test"]
    except (KeyError, OSError, RuntimeError, ValueError):
        return "test errors not recorded in the model file"
    return (
        f"test force MAE {test['force_mae_meV_A']:.0f} meV/Å, energy MAE "
        f"{test['energy_mae_meV_atom']:.1f} meV/atom after {training.get('steps', '?')} "
        "training steps"
    )
