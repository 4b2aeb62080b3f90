"""Command-line entry point: ``symbreak <subcommand> ...``.

This file only collects the subcommands. Every module in :data:`SUBCOMMAND_MODULES`
contributes its own, the same way:

- it defines ``register(subparsers)``, which adds its parser(s) with
  ``subparsers.add_parser(name, help=..., description=...)`` and sets
  ``func`` with ``parser.set_defaults(func=handler)`` (what ``register`` returns is
  ignored);
- ``handler(args: argparse.Namespace) -> int`` returns an exit code of
  :mod:`symbreak.exit_codes`: ``OK`` on success, ``USAGE`` after printing
  ``symbreak <subcommand>: <problem>`` to stderr for an input or usage error found
  before anything started, a per-command code otherwise;
- the module imports heavy dependencies (torch) inside the handler, so that
  ``symbreak --help`` stays fast;
- a new subcommand is a new module and one more line here, nothing else.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__, exit_codes

# Modules that contribute subcommands (imported lazily so `symbreak --help` stays fast
# and a broken optional front end cannot break the others).
SUBCOMMAND_MODULES: list[str] = [
    "training_cli",  # train
    "export_cli",  # export
    "engines.ipi_commands",  # serve, control, ipi-pes-path
    "engines.run_cli",  # run
    "engines.demo",  # demo
    "engines.lammps",  # lammps-plugin
    "analysis.cli",  # probe
    "reproduce.cli",  # reproduce
]


def build_parser() -> argparse.ArgumentParser:
    """The ``symbreak`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="symbreak",
        description="Run non-equivariant ML potentials in i-PI, LAMMPS and ASE, "
        "and measure and control the rotational symmetry they break.",
    )
    parser.add_argument("--version", action="version", version=f"symbreak {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"symbreak.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``symbreak ARGV``; returns the subcommand's exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return exit_codes.OK
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
