"""metatomic models in symbreak, both ways.

- Serving any metatomic ``AtomisticModel`` file with symbreak's run-time averaging:
  :func:`is_metatomic_file` tells one from the file itself, :func:`load_metatomic` loads it
  (extensions included) and wraps it in the scripted contract
  (:class:`~symbreak.metatomic.averaged.MetatomicAveraged`), with symbreak metadata filled
  from the model's capabilities. :func:`symbreak.export.load_model` calls it, so every
  engine that takes a symbreak model takes a metatomic one.
- Writing symbreak's PET as a metatomic model: :mod:`symbreak.metatomic.pet`.

metatomic (``metatomic-torch``) is imported only here, when a metatomic file is met: the
custom TorchScript classes it registers (``System``, ``Labels``…) are needed to load or run
such a file.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch

#: Extra files every metatomic ``AtomisticModel.save`` writes (and symbreak's files lack).
METATOMIC_MARKERS = ("metatomic-version", "extensions")


def _extra_files(path: Path) -> set[str]:
    """Names of the extra files of a TorchScript archive (empty if not a zip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return set()
    return {n.split("/extra/", 1)[1] for n in names if "/extra/" in n}


def is_metatomic_file(path: str | Path) -> bool:
    """Whether ``path`` is a metatomic model file (written by ``AtomisticModel.save``), told
    from its archive alone: metatomic's extra files and no symbreak ``metadata.json``."""
    extra = _extra_files(Path(path))
    return all(m in extra for m in METATOMIC_MARKERS) and "metadata.json" not in extra


def _read_extra(path: Path, name: str) -> str:
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if member.endswith("/extra/" + name):
                return archive.read(member).decode()
    return ""


def _extensions(path: str | Path) -> list[dict]:
    """The TorchScript extensions a metatomic file names: ``{"name", "path"}`` each."""
    try:
        entries = json.loads(_read_extra(Path(path), "extensions") or "[]")
    except json.JSONDecodeError:
        return []
    return [e for e in entries if isinstance(e, dict) and "name" in e]


def required_extensions(path: str | Path) -> list[str]:
    """Names of the TorchScript extensions a metatomic file needs (from its archive)."""
    return [str(e["name"]) for e in _extensions(path)]


def _not_loaded(extensions: list[dict]) -> list[str]:
    """Names of extensions no shared library of this process provides (Linux:
    /proc/self/maps; elsewhere nothing is reported)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    loaded = {Path(line.split()[-1]).name for line in maps.read_text().splitlines() if "/" in line}
    missing = []
    for extension in extensions:
        name = str(extension["name"])
        file = Path(str(extension.get("path", ""))).name
        if file not in loaded and not any(f.startswith(f"lib{name}.") for f in loaded):
            missing.append(name)
    return missing


def load_extensions(path: str | Path, extensions_directory: str | Path | None = None) -> None:
    """Load the TorchScript extensions a metatomic file (or a wrapped one) names; ValueError
    naming the file, the extensions and the ``--extensions`` option otherwise."""
    import metatomic.torch as mta  # registers metatomic's TorchScript classes

    directory = None if extensions_directory is None else str(extensions_directory)
    where = (
        f"in the extensions directory '{directory}'"
        if directory
        else "installed (give their folder with --extensions DIR, or extensions_directory=)"
    )
    try:
        # metatomic only warns (on stderr) about an extension it cannot find; the model
        # would then fail later, or compute without it: refuse it here, by name.
        mta.load_model_extensions(str(path), directory)
    except RuntimeError as err:
        missing = ", ".join(required_extensions(path)) or "(unnamed)"
        raise ValueError(
            f"'{path}': the metatomic model's TorchScript extension(s) {missing} could not "
            f"be loaded: not {where}. {err}"
        ) from err
    missing = _not_loaded(_extensions(path))
    if missing:
        raise ValueError(
            f"'{path}': the metatomic model needs the TorchScript extension(s) "
            f"{', '.join(missing)}, which could not be loaded: not {where}"
        )


def load_atomistic(
    path: str | Path, extensions_directory: str | Path | None = None
) -> torch.jit.ScriptModule:
    """The scripted ``AtomisticModel`` of a metatomic file, its extensions loaded first.
    ValueError naming the file and what is missing (an extension, an input)."""
    import metatomic.torch as mta

    path = Path(path)
    load_extensions(path, extensions_directory)
    try:
        mta.check_atomistic_model(str(path))
        module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as err:
        hint = " (missing extension? --extensions DIR)" if "Unknown" in str(err) else ""
        raise ValueError(f"'{path}' is not a loadable metatomic model{hint}: {err}") from err
    return module  # the wrapper's configure() checks what it needs (inputs, outputs)


def load_metatomic(
    path: str | Path, extensions_directory: str | Path | None = None, output: str = "energy"
):
    """A metatomic file as symbreak's ``(scripted MetatomicAveraged, ModelMetadata)``. A
    wrapped file (:func:`save_wrapped`, an older symbreak's) is unwrapped and wrapped again
    with this version's code, around the same model (``output`` then is the file's)."""
    from ..contract import CONTRACT_VERSION
    from ..export import ModelMetadata
    from .averaged import MetatomicAveraged

    path = Path(path)
    if is_wrapped_metatomic(path):
        load_extensions(path, extensions_directory)
        try:
            wrapped = torch.jit.load(str(path), map_location="cpu")
            atomistic, output = wrapped.model, str(wrapped.output)
        except (RuntimeError, AttributeError) as err:
            raise ValueError(f"'{path}' is not a readable wrapped metatomic model: {err}") from err
    else:
        atomistic = load_atomistic(path, extensions_directory)
    try:
        wrapper = MetatomicAveraged(atomistic, output)
    except ValueError as err:
        raise ValueError(f"'{path}': {err}") from err
    module = torch.jit.script(wrapper.eval())
    capabilities = atomistic.capabilities()
    metadata = atomistic.metadata()
    torch_version = _read_extra(path, "torch-version") or torch.__version__
    config = {
        "format": "metatomic",
        "name": metadata.name,
        "description": metadata.description,
        "authors": list(metadata.authors),
        "references": {k: list(v) for k, v in metadata.references.items()},
        "output": output,
        "per_atom": bool(module.per_atom),
        "dtype": str(capabilities.dtype),
        "length_unit": str(capabilities.length_unit),
        "energy_unit": str(capabilities.outputs[output].unit),
        "interaction_range": float(capabilities.engine_interaction_range("angstrom")),
        "neighbor_lists": [
            {"cutoff": c, "full_list": f, "strict": bool(o.strict)}
            for c, f, o in zip(
                module.nl_cutoffs, module.nl_full, atomistic.requested_neighbor_lists(), strict=True
            )
        ],
        "extensions": required_extensions(path),
        "extensions_directory": None if extensions_directory is None else str(extensions_directory),
        "metatomic_version": _read_extra(path, "metatomic-version"),
    }
    meta = ModelMetadata(
        species=[int(z) for z in module.species],
        cutoff=float(module.cutoff),
        receptive_field=float(module.receptive_field),
        torch_version=torch_version.split("+")[0],
        config=config,
        contract=CONTRACT_VERSION,
    )
    return module, meta


#: metatomic's extra files that a wrapped file carries over (its extensions, its version).
CARRIED = ("metatomic-version", "extensions", "extensions-deps", "torch-version")


def is_wrapped_metatomic(path: str | Path) -> bool:
    """Whether ``path`` is a symbreak contract file around a metatomic model
    (:func:`save_wrapped`): symbreak's ``metadata.json`` and metatomic's version."""
    extra = _extra_files(Path(path))
    return "metadata.json" in extra and "metatomic-version" in extra


def prepare_wrapped(path: str | Path, extensions_directory: str | Path | None = None) -> None:
    """Before ``torch.jit.load`` of a wrapped file: metatomic's classes and the model's
    extensions (nothing for other files)."""
    if is_wrapped_metatomic(path):
        load_extensions(path, extensions_directory)


def save_wrapped(module: torch.jit.ScriptModule, meta, source: Path, output: Path) -> None:
    """Write the scripted contract around a metatomic model (:func:`load_metatomic`) as a
    symbreak model file: ``metadata.json`` and the source's metatomic extra files (so that
    its extensions are found again). Engines that load it need metatomic's libraries
    (Python: ``metatomic.torch``; C++: ``libmetatomic_torch``, ``libmetatensor_torch``)."""
    extra = {"metadata.json": meta.to_json()}
    extra.update({name: _read_extra(source, name) for name in CARRIED})
    torch.jit.save(module, str(output), _extra_files=extra)
