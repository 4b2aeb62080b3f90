"""Export a trained model to one TorchScript file with its metadata, and load it back.

The file is a TorchScript archive with an extra file ``metadata.json`` holding what any
front end needs without Python: species (atomic numbers), cutoff and receptive field (Å),
units, the torch version it was exported with, the training-data fingerprint and the
training metrics. C++ (LAMMPS) reads the same extra file.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .model import PET

SHIPPED_MODELS_DIR = Path(__file__).parent / "models"
METADATA_FILE = "metadata.json"


@dataclass
class ModelMetadata:
    species: list[int]
    cutoff: float  # Å
    receptive_field: float  # Å, message-passing layers × cutoff
    torch_version: str
    units: dict = field(default_factory=lambda: {"length": "angstrom", "energy": "eV"})
    config: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)  # data fingerprint, split, metrics

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True)


@dataclass
class LoadedModel:
    """A loaded TorchScript model and its metadata."""

    module: torch.jit.ScriptModule
    metadata: ModelMetadata
    path: Path


def export_model(model: PET, path: str | Path, config: dict, training: dict) -> ModelMetadata:
    """Script ``model`` and write it with its metadata to ``path``."""
    meta = ModelMetadata(
        species=list(model.species),
        cutoff=float(model.cutoff),
        receptive_field=float(model.cutoff) * len(model.layers),
        torch_version=torch.__version__.split("+")[0],
        config=config,
        training=training,
    )
    scripted = torch.jit.script(model.eval())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(path), _extra_files={METADATA_FILE: meta.to_json()})
    return meta


def shipped_models() -> list[str]:
    """Names of the models shipped inside the package."""
    return sorted(p.stem for p in SHIPPED_MODELS_DIR.glob("*.pt"))


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A shipped model's name (e.g. ``"water-revpbe0d3"``) or a path to an exported file."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    shipped = SHIPPED_MODELS_DIR / f"{name_or_path}.pt"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"no model file '{name_or_path}' and no shipped model of that name "
        f"(shipped: {', '.join(shipped_models()) or 'none'})"
    )


def _read(path: Path) -> tuple[torch.jit.ScriptModule, ModelMetadata]:
    """The TorchScript module and metadata of a model file (clear errors otherwise)."""
    extra = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"'{path}' is not a readable symbreak model file: {err}") from err
    if not extra[METADATA_FILE]:
        raise ValueError(f"'{path}' has no {METADATA_FILE}: not a symbreak model file")
    try:
        meta = ModelMetadata(**json.loads(extra[METADATA_FILE]))
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"'{path}': corrupt {METADATA_FILE}: {err}") from err
    return module, meta


def load_model(name_or_path: str | Path) -> LoadedModel:
    """Load an exported model. Raises a clear error for a missing, corrupt or
    incompatible file (exported by another torch major.minor version)."""
    path = resolve_model_path(name_or_path)
    module, meta = _read(path)
    running = torch.__version__.split("+")[0]
    if meta.torch_version.split(".")[:2] != running.split(".")[:2]:
        raise RuntimeError(
            f"'{path}' was exported with torch {meta.torch_version}, but torch {running} is "
            "running; TorchScript files are only supported by the torch version that wrote "
            "them: install that version or re-export the model (symbreak export)"
        )
    # Inference only needs gradients with respect to the inputs: with trainable weights,
    # TorchScript's backward also computes every weight gradient (measured: ~2x the
    # matrix products, 1.45x the time of an energy + forces call).
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return LoadedModel(module.eval(), meta, path)


def reexport_model(name_or_path: str | Path, output: str | Path) -> ModelMetadata:
    """Write a model file again with this version's code: the same weights, buffers and
    metadata (config, training), this torch version. The scripted code, e.g. how
    ``compute`` averages, is frozen inside a file at export; this brings an older file
    up to date. ``output`` may be the source itself."""
    path = resolve_model_path(name_or_path)
    module, meta = _read(path)
    from .model import PETConfig

    try:
        model = PET(PETConfig(**meta.config))
    except (TypeError, ValueError) as err:
        raise ValueError(f"'{path}': its config cannot build a PET here: {err}") from err
    try:
        result = model.load_state_dict(module.state_dict(), strict=False)
    except RuntimeError as err:  # shapes that the config does not give
        raise ValueError(f"'{path}' does not match its own config: {err}") from err
    # A file from before the three-body prior lacks its (empty) coefficients.
    missing = [k for k in result.missing_keys if model.state_dict()[k].numel()]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"'{path}' does not match its own config: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    output = Path(output)
    tmp = output.with_name(output.name + ".tmp")
    meta = export_model(model, tmp, meta.config, meta.training)
    tmp.replace(output)  # atomic, and safe when output is the source
    return meta
