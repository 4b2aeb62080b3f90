"""``symbreak export``: write a model file again with this version's code."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``symbreak export`` to the CLI (see :mod:`symbreak.cli`)."""
    p = subparsers.add_parser(
        "export",
        help="re-export a model file with this version's code (same weights and metadata)",
        description="Load a shipped model or an exported file and write it again with the "
        "model code and torch version installed here. The averaging code is part of each "
        "file: re-exporting brings an older file's up to date.",
    )
    p.add_argument("model", help="shipped model name (e.g. water-revpbe0d3) or model file")
    p.add_argument("--output", required=True, help="file to write (may be the source)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .export import reexport_model

    try:
        meta = reexport_model(args.model, args.output)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"symbreak export: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} (species {meta.species}, torch {meta.torch_version})")
    return 0
