"""Shared pieces of the benchmark scripts: structures and a default-size random model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("symbreak") is None:  # not installed: use the source tree
    sys.path.insert(0, str(REPO / "python"))

WATER_160 = REPO / "data" / "water_revpbe0d3_160.xyz"
LIQUID_1536 = Path("/work/shared/data/liquid_512h2o.xyz")


def water(n_atoms: int):
    """Liquid water with ``n_atoms`` atoms (ASE Atoms, cubic periodic cell, Å): 192 is
    frame 0 of the training data, 1536 the equilibrated 512-molecule box (or frame 0
    repeated 2x2x2 if that file is absent), 192·m³ frame 0 repeated m x m x m."""
    import ase.io

    if n_atoms == 1536 and LIQUID_1536.is_file():
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
