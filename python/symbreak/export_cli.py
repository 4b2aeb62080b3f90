"""``symbreak export``: write a model file again with this version's code, or as a metatomic
model."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``symbreak export`` to the CLI (see :mod:`symbreak.cli`)."""
    p = subparsers.add_parser(
        "export",
        help="re-export a model file with this version's code (same weights and metadata), "
        "or write it as a metatomic model",
        description="Load a shipped model or an exported file and write it again with the "
        "model code and torch version installed here. The averaging code is part of each "
        "file: re-exporting brings an older file's up to date. A metatomic model file is "
        "written as a symbreak contract file around it (what LAMMPS loads). "
        "--format metatomic writes a symbreak model as a metatomic AtomisticModel (plain "
        "model, energies in eV, lengths in A) for metatomic's engines (metatomic-ase, "
        "i-pi-py_driver -m metatomic, ...).",
    )
    p.add_argument("model", help="shipped model name (e.g. water-revpbe0d3) or model file")
    p.add_argument("--output", required=True, help="file to write (may be the source)")
    p.add_argument(
        "--format",
        choices=("symbreak", "metatomic"),
        default="symbreak",
        help="symbreak: a contract file (default); metatomic: a metatomic AtomisticModel",
    )
    p.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="precision of a --format metatomic file (default float64: total energies of "
        "large systems lose meV in float32)",
    )
    p.add_argument(
        "--extensions",
        metavar="DIR",
        default=None,
        help="folder of the TorchScript extensions a metatomic source model needs, if they "
        "are not installed",
    )
    p.add_argument(
        "--floor",
        metavar="PAIR=Å",
        action="append",
        default=[],
        help="raise the short-range floor of a species pair (e.g. H-H=1.0; repeatable): "
        "below it the learned part and the three-body prior read a fixed contact "
        "(symbreak.short_range); only raised, never below the data's shortest distance",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from .export import export_metatomic, reexport_model

    try:
        if args.format == "metatomic":
            if args.floor:
                raise ValueError("--floor applies to --format symbreak (re-export first)")
            dtype = torch.float64 if args.dtype == "float64" else torch.float32
            path = export_metatomic(args.model, args.output, dtype)
            print(f"wrote {path} (metatomic AtomisticModel, {args.dtype})")
            return 0
        meta = reexport_model(args.model, args.output, args.extensions, args.floor)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"symbreak export: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} (species {meta.species}, torch {meta.torch_version})")
    return 0
