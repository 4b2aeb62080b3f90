"""``symbreak run``: the command line of the launcher (:mod:`symbreak.engines.launcher`).

``python -m symbreak.engines.run_cli run|demo ...`` runs ``symbreak run`` and
``symbreak demo`` without loading the other subcommands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import exit_codes
from .launcher import Launcher, LaunchError, LaunchOptions, Switch


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``symbreak run`` (one per field of :class:`LaunchOptions`)."""
    p.add_argument("input", help="i-PI XML input with one or more <ffsocket>")
    p.add_argument(
        "--model",
        default="water-revpbe0d3",
        help="shipped model name, symbreak model file or metatomic model file",
    )
    p.add_argument(
        "--extensions",
        metavar="DIR",
        help="folder of a metatomic model's TorchScript extensions (passed to the clients)",
    )
    p.add_argument(
        "--device", help="where the clients run the model: cpu (default), cuda or cuda:N"
    )
    p.add_argument("--clients", type=int, default=1, help="clients per <ffsocket> (0: start none)")
    p.add_argument("--timeout", type=float, help="stop everything after this many seconds")
    p.add_argument(
        "--threads", type=int, help="torch threads per client (default: idle cores / clients)"
    )
    p.add_argument(
        "--inet",
        action="store_true",
        help="use TCP sockets (unix sockets become inet on free ports)",
    )
    p.add_argument("--host", help="inet: address i-PI binds to / clients connect to")
    p.add_argument(
        "--keep-prefix",
        action="store_true",
        help="use the input's sockets_prefix, addresses and ports as written (for clients "
        "started elsewhere); by default they are made private to this run. A taken address "
        "is an input error: nothing starts",
    )
    p.add_argument("--run-dir", type=Path, help="where i-PI runs (default runs/<input>-<time>)")
    p.add_argument("--steps", type=int, help="override <total_steps> (>= 1)")
    p.add_argument("--structure", help="override the initial structure (any ASE file with a cell)")
    p.add_argument("--template", help="structure giving the species (default: the initial one)")
    p.add_argument(
        "--average",
        help="the clients' averaging, e.g. lebedev:3+inv, for sockets whose <parameters> "
        "do not set one (those set it through i-PI's INIT)",
    )
    p.add_argument(
        "--switch-at",
        action="append",
        default=[],
        metavar="STEP=SPEC[@FF]",
        help="change the clients' averaging at STEP, e.g. 20=lebedev:3+inv (repeatable)",
    )
    p.add_argument("--connect-timeout", type=float, default=120.0, help="clients wait for i-PI")
    p.add_argument("--grace", type=float, default=10.0, help="seconds allowed for a clean stop")
    p.add_argument(
        "--progress", choices=("auto", "bar", "lines", "none"), default="auto", help="display"
    )
    p.add_argument("--progress-interval", type=float, default=10.0, help="seconds between lines")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="write the run directory and print the commands, start nothing",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``symbreak run`` to the CLI (see :mod:`symbreak.cli`)."""
    p = subparsers.add_parser(
        "run",
        help="run an i-PI input together with its symbreak clients",
        description="Start i-PI on a private copy of INPUT and a `symbreak serve` client per "
        "<ffsocket> (nested ones in <ffrotations> included), show the progress, and end "
        "everything on completion, failure, --timeout or Ctrl-C, leaving no process or "
        "socket file behind.",
        epilog=exit_codes.RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.set_defaults(func=_run)


def options_from_args(args: argparse.Namespace) -> LaunchOptions:
    """:class:`LaunchOptions` from parsed ``symbreak run`` arguments (validated)."""
    opts = LaunchOptions(
        model=args.model,
        clients=args.clients,
        timeout=args.timeout,
        threads=args.threads,
        inet=args.inet,
        host=args.host,
        keep_prefix=args.keep_prefix,
        run_dir=args.run_dir,
        steps=args.steps,
        structure=args.structure,
        template=args.template,
        switches=[Switch.parse(s) for s in args.switch_at],
        connect_timeout=args.connect_timeout,
        grace=args.grace,
        progress=args.progress,
        progress_interval=args.progress_interval,
        dry_run=args.dry_run,
        client_args=_average_args(args.average)
        + _extensions_args(args.extensions)
        + _device_args(args.device),
    )
    opts.validate()
    return opts


def _average_args(spec: str | None) -> list[str]:
    """``symbreak serve`` options for ``--average SPEC`` (validated here)."""
    if not spec:
        return []
    from ..rotations import AveragingPolicy

    return ["--average", str(AveragingPolicy.parse(spec))]  # the one grammar's text


def _extensions_args(directory: str | None) -> list[str]:
    """``symbreak serve`` options for ``--extensions DIR`` (an absolute path: the clients
    run in the run directory)."""
    if not directory:
        return []
    path = Path(directory).resolve()
    if not path.is_dir():
        raise LaunchError(f"--extensions {directory}: no such directory")
    return ["--extensions", str(path)]


def _device_args(device: str | None) -> list[str]:
    """``symbreak serve`` options for ``--device D`` (checked here, before i-PI starts)."""
    if not device:
        return []
    from ..evaluator import resolve_device

    try:
        resolve_device(device)
    except ValueError as err:
        raise LaunchError(f"--device: {err}") from None
    return ["--device", device]


def _run(args: argparse.Namespace) -> int:
    try:
        opts = options_from_args(args)
        launcher = Launcher(args.input, opts)
    except (LaunchError, ValueError) as err:
        print(f"symbreak run: {err}", file=sys.stderr)
        return exit_codes.USAGE
    if opts.dry_run:
        print(launcher.describe())
        print(" ".join([launcher.ipi_cmd, str(launcher.input_xml)]), f"  # in {launcher.run_dir}")
        for cmd in launcher.client_commands():
            print(cmd)
        return exit_codes.OK
    result = launcher.run()
    rate = ""
    if result.progress:
        last = result.progress[-1]
        rate = f", {last.step} steps"
    if result.exit_code == exit_codes.OK:
        launcher.say(
            f"{result.message} in {result.elapsed:.1f} s{rate}; outputs in {result.run_dir}"
        )
    else:
        launcher.say(f"{result.message}")
        launcher.say(f"exit code {result.exit_code}; outputs in {result.run_dir}")
    return result.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """``symbreak run|demo ARGV`` with only these two subcommands loaded."""
    from . import demo

    parser = argparse.ArgumentParser(prog="symbreak")
    subparsers = parser.add_subparsers(dest="command", required=True)
    register(subparsers)
    demo.register(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
