"""Command-line entry point: ``symbreak <subcommand> ...``."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="symbreak",
        description="Run non-equivariant ML potentials in i-PI, LAMMPS and ASE, "
        "and measure and control the rotational symmetry they break.",
    )
    parser.add_argument("--version", action="version", version=f"symbreak {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
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
