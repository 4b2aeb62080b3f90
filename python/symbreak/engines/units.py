"""Unit conversions at the i-PI boundary, taken from i-PI itself (``ipi.utils.units``).

i-PI works in atomic units (Bohr, Hartree); the model in Å and eV. Using i-PI's own
factors keeps what i-PI writes in Å and what the client computes consistent to the last
digit (i-PI's Bohr, 0.5291772178 Å, differs from CODATA 2018 in the 8th digit).
"""

from __future__ import annotations

from ipi.utils.units import unit_to_internal

#: One Bohr in Å, and one Hartree in eV, as i-PI converts them.
BOHR_IN_ANGSTROM: float = 1.0 / unit_to_internal("length", "angstrom", 1.0)
HARTREE_IN_EV: float = 1.0 / unit_to_internal("energy", "electronvolt", 1.0)
#: eV/Å -> Hartree/Bohr.
FORCE_EV_A_TO_HA_BOHR: float = BOHR_IN_ANGSTROM / HARTREE_IN_EV
