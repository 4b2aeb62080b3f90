"""symbreak: serve non-equivariant ML potentials to MD engines and control the
rotational symmetry they break, at run time.

Units everywhere in the Python API: Å, eV, eV/Å (engines convert at their edge).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("symbreak")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "load_model"]


def __getattr__(name: str):
    # lazy: `import symbreak` (and the CLI's --help) must not pay for importing torch
    if name == "load_model":
        from .export import load_model

        return load_model
    raise AttributeError(f"module 'symbreak' has no attribute {name!r}")
