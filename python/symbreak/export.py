"""Export a trained model to one TorchScript file with its metadata, and load it back.

The file is a scripted :class:`~symbreak.contract.AveragedModel` (the contract every engine
calls) with an extra file ``metadata.json`` holding what any front end needs without
Python: species (atomic numbers), cutoff and receptive field (Å), units, the contract
version, the torch version it was exported with, the training-data fingerprint and the
training metrics. C++ (LAMMPS) reads the same extra file. Loading checks that the
metadata agrees with what the module itself knows (species, cutoff, receptive field,
contract version, entry points) and refuses a file where they differ.

Trust: loading a model file runs the TorchScript code inside it. Load model files only
from sources you trust, as you would run their Python code.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .contract import CONTRACT_VERSION, AveragedModel
from .metatomic import is_metatomic_file, is_wrapped_metatomic, prepare_wrapped
from .model import OPTIONAL_BUFFERS, PET, PETConfig

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
    contract: int = 1  # version of the entry points (symbreak.contract); 1: before it

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True)


@dataclass
class LoadedModel:
    """A loaded TorchScript model (an :class:`AveragedModel`) and its metadata.
    ``upgraded``: the file predates the contract and was wrapped in memory on loading."""

    module: torch.jit.ScriptModule
    metadata: ModelMetadata
    path: Path
    upgraded: bool = False


#: The methods of the contract that engines call.
ENTRY_POINTS = ("compute", "accumulate", "merge", "finalize", "policy_rotations", "parse_policy")


def export_model(model: PET, path: str | Path, config: dict, training: dict) -> ModelMetadata:
    """Wrap ``model`` in the contract, script it and write it with its metadata to ``path``."""
    meta = ModelMetadata(
        species=list(model.species),
        cutoff=float(model.cutoff),
        receptive_field=float(model.cutoff) * len(model.layers),
        torch_version=torch.__version__.split("+")[0],
        config=config,
        training=training,
        contract=CONTRACT_VERSION,
    )
    scripted = script_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(path), _extra_files={METADATA_FILE: meta.to_json()})
    return meta


def script_model(model: PET) -> torch.jit.ScriptModule:
    """The scripted contract around ``model`` (weights shared, eval mode)."""
    return torch.jit.script(AveragedModel(model.eval()).eval())


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


def _inner_state(module: torch.jit.ScriptModule) -> dict:
    """The PET weights of a file: the ``inner.`` module of a contract file, the top-level
    module of an older one."""
    state = module.state_dict()
    if any(k.startswith("inner.") for k in state):
        return {k[len("inner.") :]: v for k, v in state.items() if k.startswith("inner.")}
    return dict(state)


def rebuild_pet(path: Path, module: torch.jit.ScriptModule, meta: ModelMetadata) -> PET:
    """A PET with the weights of ``module``, built from the file's own config."""
    try:
        model = PET(PETConfig(**meta.config))
    except (TypeError, ValueError) as err:
        raise ValueError(f"'{path}': its config cannot build a PET here: {err}") from err
    try:
        result = model.load_state_dict(_inner_state(module), strict=False)
    except RuntimeError as err:  # shapes that the config does not give
        raise ValueError(f"'{path}' does not match its own config: {err}") from err
    # A file from before the three-body prior lacks its (empty) coefficients, one from
    # before the short-range guards their buffers (zeros: off).
    missing = [
        k
        for k in result.missing_keys
        if model.state_dict()[k].numel() and k not in OPTIONAL_BUFFERS
    ]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"'{path}' does not match its own config: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    return model


def check_module(path: Path, module: torch.jit.ScriptModule, meta: ModelMetadata) -> None:
    """ValueError naming the file and the field where the metadata and the module differ."""
    missing = [m for m in ENTRY_POINTS if not module._c._has_method(m)]
    if missing:
        raise ValueError(f"'{path}' has no method(s) {', '.join(missing)}: not a model file")
    version = int(getattr(module, "contract_version", -1))
    if version != CONTRACT_VERSION or meta.contract != CONTRACT_VERSION:
        raise ValueError(
            f"'{path}': contract version {version} (metadata {meta.contract}), this symbreak "
            f"reads {CONTRACT_VERSION}: re-export the file (symbreak export)"
        )
    fields = {
        "species": (list(module.species), list(meta.species)),
        "cutoff": (float(module.cutoff), float(meta.cutoff)),
        "receptive_field": (float(module.receptive_field), float(meta.receptive_field)),
    }
    for name, (inside, written) in fields.items():
        if inside != written:
            raise ValueError(
                f"'{path}': metadata.json says {name} = {written}, but the module holds "
                f"{inside}: a corrupt or hand-edited file"
            )


def load_model(
    name_or_path: str | Path, extensions_directory: str | Path | None = None
) -> LoadedModel:
    """Load an exported model. Raises a clear error for a missing, corrupt, inconsistent
    or incompatible file (exported by another torch major.minor version). A file written
    before the contract (``contract`` 1, a bare PET) is wrapped in memory; ``symbreak
    export`` writes it anew. A metatomic model file (told from the file itself) is wrapped
    in the contract (:mod:`symbreak.metatomic`), its TorchScript extensions loaded from
    ``extensions_directory`` when they are not installed."""
    path = resolve_model_path(name_or_path)
    if is_metatomic_file(path):
        return _load_metatomic(path, extensions_directory)
    prepare_wrapped(path, extensions_directory)  # a contract file around a metatomic model
    module, meta = _read(path)
    running = torch.__version__.split("+")[0]
    if meta.torch_version.split(".")[:2] != running.split(".")[:2]:
        raise RuntimeError(
            f"'{path}' was exported with torch {meta.torch_version}, but torch {running} is "
            "running; TorchScript files are only supported by the torch version that wrote "
            "them: install that version or re-export the model (symbreak export)"
        )
    upgraded = False
    if meta.contract < CONTRACT_VERSION and not hasattr(module, "contract_version"):
        module = script_model(rebuild_pet(path, module, meta))
        meta.contract = CONTRACT_VERSION
        upgraded = True
    check_module(path, module, meta)
    # Inference only needs gradients with respect to the inputs: with trainable weights,
    # TorchScript's backward also computes every weight gradient (measured: ~2x the
    # matrix products, 1.45x the time of an energy + forces call).
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return LoadedModel(module.eval(), meta, path, upgraded)


def _load_metatomic(path: Path, extensions_directory: str | Path | None) -> LoadedModel:
    """A metatomic file wrapped in the contract (scripted in memory), with its metadata."""
    from .metatomic import load_metatomic

    module, meta = load_metatomic(path, extensions_directory)
    check_module(path, module, meta)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return LoadedModel(module.eval(), meta, path)


def _wrap_metatomic(
    path: Path, output: Path, extensions_directory: str | Path | None
) -> ModelMetadata:
    """A metatomic file written as a contract file around it (``symbreak export``)."""
    from .metatomic import load_metatomic, save_wrapped

    if output.resolve() == path.resolve() and is_metatomic_file(path):
        raise ValueError(f"'{path}': write the wrapped model to another file")
    module, meta = load_metatomic(path, extensions_directory)
    tmp = output.with_name(output.name + ".tmp")
    save_wrapped(module, meta, path, tmp)
    tmp.replace(output)
    return meta


def reexport_model(
    name_or_path: str | Path,
    output: str | Path,
    extensions_directory: str | Path | None = None,
    floors: list[str] | None = None,
) -> ModelMetadata:
    """Write a model file again with this version's code: the same weights, buffers and
    metadata (config, training), this torch version. The scripted code, e.g. how
    ``compute`` averages, is frozen inside a file at export; this brings an older file
    up to date. ``output`` may be the source itself. A metatomic model file is written
    as a contract file around it (for engines that load contract files only: LAMMPS).
    ``floors``: short-range floors to raise, ``["H-H=1.0", ...]`` (Å,
    :mod:`symbreak.short_range`; recorded in the training metadata)."""
    path = resolve_model_path(name_or_path)
    if is_metatomic_file(path) or is_wrapped_metatomic(path):
        if floors:
            raise ValueError(f"'{path}': a metatomic model has no short-range floors to raise")
        # the metatomic model wrapped in this version's contract
        return _wrap_metatomic(path, Path(output), extensions_directory)
    module, meta = _read(path)
    model = rebuild_pet(path, module, meta)
    if floors:
        from .short_range import parse_floors, symbols

        try:
            species = list(model.species)
            model.short_range.raise_floors(parse_floors(floors, species), symbols(species))
        except ValueError as err:
            raise ValueError(f"'{path}': {err}") from err
        meta.training = dict(meta.training)
        meta.training["raised_floors"] = list(meta.training.get("raised_floors", [])) + floors
    output = Path(output)
    tmp = output.with_name(output.name + ".tmp")
    meta = export_model(model, tmp, meta.config, meta.training)
    tmp.replace(output)  # atomic, and safe when output is the source
    return meta


def export_metatomic(
    name_or_path: str | Path, output: str | Path, dtype: torch.dtype = torch.float64
) -> Path:
    """Write a symbreak model file as a metatomic ``AtomisticModel`` at ``output``
    (:mod:`symbreak.metatomic.pet`: the plain model, energies in eV, float64 by default)."""
    from .metatomic.pet import save_metatomic

    path = resolve_model_path(name_or_path)
    if is_metatomic_file(path):
        raise ValueError(f"'{path}' is a metatomic model already")
    module, meta = _read(path)
    model = rebuild_pet(path, module, meta)
    extra = {"symbreak-config": meta.config, "symbreak-training": meta.training}
    output = Path(output)
    tmp = output.with_name(output.name + ".tmp")
    save_metatomic(model, tmp, name=path.stem, dtype=dtype, extra=extra)
    tmp.replace(output)
    return output
