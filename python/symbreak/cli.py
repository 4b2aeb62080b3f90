"""Command-line entry point: ``symbreak <subcommand> ...``.

Each subcommand lives in the module that owns the concept and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed ``argparse.Namespace`` and returning an exit code. This file
only collects them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# Modules that contribute subcommands (imported lazily so `symbreak --help` stays fast
# and a broken optional front end cannot break the others).
SUBCOMMAND_MODULES: list[str] = [
    "training_config",
    "export_cli",
    "engines.ipi_commands",
    "engines.launcher",
    "engines.lammps",
    "analysis.cli",
    "reproduce.cli",
]


def build_parser() -> argparse.ArgumentParser:
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
