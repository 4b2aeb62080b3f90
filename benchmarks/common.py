"""Shared pieces of the benchmark scripts: structures and a default-size random model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

#: The checkout this file belongs to: its data files are found from here, whatever the
#: working directory.
REPO = Path(__file__).resolve().parents[1]
WATER_160 = REPO / "data" / "water_revpbe0d3_160.xyz"
#: 512 equilibrated H2O (the study's liquid box, as ipi_inputs/mts_water512 runs it).
LIQUID_1536 = REPO / "ipi_inputs" / "mts_water512" / "liquid_512h2o.xyz"

# `python benchmarks/X.py` puts this folder first on sys.path: that is how the scripts import
# this module. Two of them are named like the packages they measure (ipi.py, lammps.py) and
# would shadow them, so the folder comes off the path once this module is loaded.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

if importlib.util.find_spec("symbreak") is None:
    raise SystemExit(
        "symbreak is not installed in this Python: the benchmarks use the installed package "
        f"(with its compiled neighbour lists). Run `bash {REPO / 'scripts' / 'setup.sh'}` and "
        f"`. {REPO / '.venv' / 'bin' / 'activate'}` first."
    )


def machine() -> tuple[str, str]:
    """This machine's CPU model name and load average (1, 5, 15 min), for table headers."""
    import contextlib
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return cpu, load


def water(n_atoms: int):
    """Liquid water with ``n_atoms`` atoms (ASE Atoms, cubic periodic cell, Å): 192 is
    frame 0 of the training data, 1536 the equilibrated 512-molecule box, other 192·m³
    frame 0 repeated m x m x m."""
    import ase.io

    if n_atoms == 1536:
        return ase.io.read(LIQUID_1536, 0)
    frame = ase.io.read(WATER_160, 0)
    m = round((n_atoms / len(frame)) ** (1 / 3))
    if len(frame) * m**3 != n_atoms:
        raise ValueError(f"no water structure with {n_atoms} atoms (use 192·m³)")
    return frame.repeat(m) if m > 1 else frame


def export_random_model(path: str | Path, seed: int = 0, readout_std: float = 0.05) -> Path:
    """Export a default-size PET (``PETConfig()``: the cost of the trained model) with random
    weights. The readouts of a fresh PET are zero (constant energy); here they are drawn
    from N(0, readout_std²) so that energies and forces vary and break the symmetry."""
    import torch

    from symbreak.export import export_model
    from symbreak.model import PET, PETConfig

    torch.manual_seed(seed)
    cfg = PETConfig()
    model = PET(cfg)
    with torch.no_grad():
        for layer in model.layers:
            for head in (layer.head_central, layer.head_edge):
                head.fc2.weight.normal_(0.0, readout_std)
                head.fc2.bias.normal_(0.0, readout_std)
        model.baseline.copy_(torch.tensor([-187.0, -375.0], dtype=torch.float64))
    export_model(model, path, cfg.to_dict(), {"note": f"random default-size model, seed {seed}"})
    return Path(path)
