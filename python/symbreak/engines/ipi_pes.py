"""symbreak as an in-process i-PI potential (one file, as i-PI's own PES files).

Use it in an i-PI input (``symbreak ipi-pes-path`` prints this file's path)::

    <ffdirect name="symbreak">
      <pes>custom</pes>
      <pes_path>/path/to/symbreak/engines/ipi_pes.py</pes_path>
      <parameters>{template: init.xyz, model: water-revpbe0d3, average: lebedev:3}</parameters>
    </ffdirect>

or with i-PI's Python driver over a socket::

    i-pi-py_driver -m custom -P /path/to/ipi_pes.py -o template=init.xyz,average=lebedev:3

Options: ``model`` (a shipped name, a symbreak or a metatomic model file),
``extensions_directory`` (a metatomic model's extensions), ``template`` (or ``species``),
``average`` (the policy text, e.g. ``lebedev:3+inv``), ``inversion``, ``seed``,
``rotation_batch``, ``workers``, ``device`` (cpu, cuda, cuda:N), ``pbc``, ``control`` (an
address: opens the run-time control channel used by ``symbreak control --address``),
``sockets_prefix`` (of that channel). i-PI works in atomic units with cells as columns; this
file converts to and from Å/eV and rows, with i-PI's own unit factors
(:mod:`symbreak.engines.units`).
"""

from __future__ import annotations

import json

import numpy as np
from ipi.pes.dummy import Dummy_driver

# an absolute import: i-PI loads this file by path, outside the package
from symbreak.engines.sockets import IPI_DEFAULT_PREFIX
from symbreak.engines.units import BOHR_IN_ANGSTROM, FORCE_EV_A_TO_HA_BOHR, HARTREE_IN_EV

__DRIVER_NAME__ = "symbreak"
__DRIVER_CLASS__ = "SymbreakPES"


class SymbreakPES(Dummy_driver):
    """i-PI PES: compute(cell, pos) in atomic units, batched when given lists."""

    def __init__(self, *args, control=None, sockets_prefix=IPI_DEFAULT_PREFIX, **kwargs):
        from symbreak.engines.ipi_driver import SymbreakDriver, parse_bool

        options = dict(kwargs)
        for key in ("inversion", "pbc"):
            if key in options:
                options[key] = parse_bool(options[key])
        for key in ("seed", "rotation_batch", "workers"):
            if key in options:
                options[key] = int(options[key])
        # i-PI's <ffdirect> always adds "verbosity" (its own verbosity.high) to the options
        verbosity = options.pop("verbosity", False)
        verbose = parse_bool(options.pop("verbose", verbosity))
        self.symbreak = SymbreakDriver(*args, **options)
        self.control = self.slot = None
        if control:
            from symbreak.engines.control import ControlServer, PolicySlot

            self.slot = PolicySlot(self.symbreak)
            self.control = ControlServer(str(control), str(sockets_prefix), self.slot)
            self.control.start()
        super().__init__(verbose)

    def compute_structure(self, cell, pos):
        return self._compute([cell], [pos])[0]

    def compute(self, cell, pos):
        if isinstance(cell, list):
            return self._compute(cell, pos)
        return self.compute_structure(cell, pos)

    def _compute(self, cells, positions):
        if self.slot is not None:  # run-time policy changes, applied between requests
            self.slot.apply_pending(self.symbreak)
        cells_a = np.stack([np.asarray(c).reshape(3, 3).T for c in cells]) * BOHR_IN_ANGSTROM
        pos_a = np.stack([np.asarray(p).reshape(-1, 3) for p in positions]) * BOHR_IN_ANGSTROM
        out = []
        for energy, forces, virial, extras in self.symbreak.compute(cells_a, pos_a):
            out.append(
                (
                    energy / HARTREE_IN_EV,
                    forces * FORCE_EV_A_TO_HA_BOHR,
                    virial.T / HARTREE_IN_EV,
                    json.dumps(extras),
                )
            )
        return out
