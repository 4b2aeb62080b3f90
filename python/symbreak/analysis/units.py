"""Units used by the analysis layer, and conversion of i-PI's unit labels.

Internal units of every analysis function: Å, ps, eV, amu, K; velocities Å/ps, forces
eV/Å, angular momentum amu·Å²/ps, torque eV (= eV/Å × Å), frequencies THz (1/ps) or
cm⁻¹. Files written by i-PI are converted with *i-PI's own* factors
(:mod:`ipi.utils.units`), so that a quantity i-PI wrote in atomic units comes back
exactly as i-PI had it (i-PI's Bohr, 0.5291772178 Å, differs from CODATA 2018 in the 8th
digit).
"""

from __future__ import annotations

import re

import numpy as np

#: Boltzmann constant in eV/K (CODATA 2018, exact).
KB_EV_PER_K = 8.617333262e-5
#: Speed of light in cm/ps (for THz → cm⁻¹: 1 THz = 33.35641 cm⁻¹).
C_CM_PER_PS = 2.99792458e-2
THZ_TO_CM1 = 1.0 / C_CM_PER_PS
#: 1 amu·Å²/ps in units of ħ (1.66053906660e-27 kg · 1e-20 m² / 1e-12 s / 1.054571817e-34 J s).
AMU_A2_PER_PS_IN_HBAR = 1.66053906660e-35 / 1.054571817e-34
#: 1 eV in amu·Å²/ps² (so that F/m in eV/Å/amu is an acceleration in Å/ps²).
EV_IN_AMU_A2_PER_PS2 = 1.602176634e-19 / (1.66053906660e-27 * 1e-20 / 1e-24)
#: 1 Å²/ps in 10⁻⁹ m²/s (the usual unit of diffusion coefficients).
A2_PER_PS_IN_1E9_M2_PER_S = 10.0

# i-PI dimension of each per-atom quantity it writes as a trajectory.
IPI_DIMENSIONS = {
    "positions": "length",
    "x_centroid": "length",
    "x_centroid_even": "length",
    "x_centroid_odd": "length",
    "r_gyration": "length",
    "velocities": "velocity",
    "v_centroid": "velocity",
    "v_centroid_even": "velocity",
    "v_centroid_odd": "velocity",
    "f_centroid": "force",
    "forces": "force",
    "forces_component": "force",
    "forces_component_raw": "force",
    "forces_spring": "force",
    "forces_sc": "force",
    "Eforces": "force",
    "momenta": "momentum",
}

# Target (analysis) units per dimension, as i-PI labels or a special marker.
TARGET_UNITS = {"length": "angstrom", "force": "ev/ang", "energy": "electronvolt"}


def _ipi_units():
    from ipi.utils import units  # imported lazily: only needed when reading i-PI files

    return units


def ipi_factor(dimension: str, unit: str) -> float:
    """Factor converting a value i-PI wrote in ``unit`` (dimension ``dimension``) to
    analysis units (Å, eV, eV/Å, Å/ps, ps, K, amu·Å/ps for momenta)."""
    u = _ipi_units()
    unit = (unit or "atomic_unit").strip()
    to_internal = u.unit_to_internal(dimension, unit, 1.0)  # → atomic units
    if dimension in TARGET_UNITS:
        return float(u.unit_to_user(dimension, TARGET_UNITS[dimension], to_internal))
    if dimension == "velocity":
        a = u.unit_to_user("length", "angstrom", 1.0)
        ps = u.unit_to_user("time", "picosecond", 1.0)
        return float(to_internal * a / ps)
    if dimension == "momentum":
        a = u.unit_to_user("length", "angstrom", 1.0)
        ps = u.unit_to_user("time", "picosecond", 1.0)
        amu = u.unit_to_user("mass", "dalton", 1.0)
        return float(to_internal * amu * a / ps)
    if dimension == "time":
        return float(u.unit_to_user("time", "picosecond", to_internal))
    if dimension == "temperature":
        return float(u.unit_to_user("temperature", "kelvin", to_internal))
    raise ValueError(f"no analysis unit defined for i-PI dimension {dimension!r}")


_KEY_UNIT = re.compile(r"^\s*([^{]+?)\s*(?:\{([^}]*)\})?\s*$")


def split_key_unit(what: str) -> tuple[str, str | None]:
    """``'pot_component_raw(0){electronvolt}'`` → ``('pot_component_raw(0)', 'electronvolt')``."""
    m = _KEY_UNIT.match(what)
    if m is None:
        return what.strip(), None
    return m.group(1).strip(), m.group(2)


def kT_eV(temperature_K: float) -> float:
    """k_B T in eV."""
    return KB_EV_PER_K * float(temperature_K)


def as_float_array(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)
