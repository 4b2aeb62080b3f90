"""symbreak: serve non-equivariant ML potentials to MD engines and control the
rotational symmetry they break, at run time.

Units everywhere in the Python API: Å, eV, eV/Å (engines convert at their edge).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("symbreak")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
