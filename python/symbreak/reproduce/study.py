"""The study's reference numbers, kept in the repository with their source.

M. F. Langer, S. N. Pozdnyakov, M. Ceriotti, *Probing the effects of broken symmetries in
machine learning*, Mach. Learn.: Sci. Technol. 5, 04LT01 (2024).

They are the study's values, for comparison with ours (``symbreak reproduce``,
``benchmarks/convergence.py``), not targets: the study's PET was larger and trained on more
data (1303 frames) than the shipped model.
"""

from __future__ import annotations

#: How to cite the study next to a number taken from it.
CITATION = (
    "M. F. Langer, S. N. Pozdnyakov, M. Ceriotti, Mach. Learn.: Sci. Technol. 5, 04LT01 (2024)"
)
SHORT_CITATION = "Langer, Pozdnyakov, Ceriotti, MLST 5, 04LT01 (2024)"

#: The study's PET: cutoff (Å) and its smooth width, message-passing layers x transformer
#: layers, widths, activation; one random O(3) rotation per structure per training step
#: (half of them improper), energy weight 0.01 against forces.
MODEL = {
    "cutoff": 4.0,
    "cutoff_width": 0.2,
    "message_passing_layers": 4,
    "transformer_layers": 2,
    "d_model": 128,
    "heads": 4,
    "feed_forward": 512,
    "activation": "SiLU",
    "energy_weight": 0.01,
}

#: Accuracy with 1303 training frames: energy MAE (meV/atom), force MAE and RMSE (meV/Å).
ACCURACY = {"train_frames": 1303, "energy_mae": 0.39, "force_mae": 16.6, "force_rmse": 59.6}

#: Symmetry breaking of the plain model against a 150-rotation average, mean absolute
#: (energy, forces): test frames and bulk MD of 512 H2O in meV/atom and meV/Å, the
#: gas-phase molecule in meV/molecule and meV/Å.
BREAKING = {
    "test": (0.027, 2.04),
    "bulk": (0.005, 1.21),
    "gas": (2.82, 11.8),
}
BREAKING_UNITS = {
    "test": ("meV/atom", "meV/Å"),
    "bulk": ("meV/atom", "meV/Å"),
    "gas": ("meV/molecule", "meV/Å"),
}

#: Energy error (meV/structure, test frames) against the largest grid (150 rotations), by
#: number of rotations of the study's Legendre grids: 1 = plain, 2 = plain + inversion,
#: 18 = L2, 36 = L2 + inversion, 75 = L3.
GRID_ENERGY_ERROR = {1: 5.09, 2: 2.57, 18: 0.56, 36: 0.28, 75: 0.16}

#: The same errors keyed by ``(family, L, inversion)`` as symbreak's policies name the grids
#: (``legendre:L``, ``+inv``; ``legendre:1`` is one rotation, the plain model).
GRID_ENERGY_ERROR_BY_POLICY = {
    ("legendre", 1, False): GRID_ENERGY_ERROR[1],
    ("legendre", 1, True): GRID_ENERGY_ERROR[2],
    ("legendre", 2, False): GRID_ENERGY_ERROR[18],
    ("legendre", 2, True): GRID_ENERGY_ERROR[36],
    ("legendre", 3, False): GRID_ENERGY_ERROR[75],
}

#: The study's qualitative findings.
FINDINGS = {"gas": "visible but stable artefacts", "bulk": "negligible effect"}


def _breaking_entries() -> dict[str, str]:
    out = {}
    for regime, (e, f) in BREAKING.items():
        e_unit, f_unit = BREAKING_UNITS[regime]
        out[f"break_{regime}_E"] = f"{e:g} {e_unit}"
        out[f"break_{regime}_F"] = f"{f:g} {f_unit}"
    return out


#: The study's values as the reproduction report prints them (text with units).
STUDY: dict[str, str] = {
    **_breaking_entries(),
    **{f"grid_{k}": f"{v:g} meV/structure" for k, v in GRID_ENERGY_ERROR.items()},
    **FINDINGS,
}
