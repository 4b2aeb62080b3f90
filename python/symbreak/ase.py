"""The ASE calculator, kept importable here: it lives in :mod:`symbreak.engines.ase`."""

from .engines.ase import SymbreakCalculator, make_policy

__all__ = ["SymbreakCalculator", "make_policy"]
