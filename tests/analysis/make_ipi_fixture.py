"""Regenerate the real i-PI output files in ``tests/analysis/data/ipi_run/``.

Runs i-PI 3.3 (in-process ``<ffdirect>`` with the small analytic PES below, no sockets)
for 12 steps of NVE with multiple time stepping and two force fields, on two flexible
water molecules in a triclinic periodic cell, and keeps every output format the analysis
layer reads: properties (with ``pot_component_raw``), xyz positions / velocities / forces,
ASE extended xyz positions, and extras (one keyed, one raw). Takes a few seconds, so the
tests read the committed files; ``test_ipi_fixture_regenerates`` (marked slow) checks that
a fresh run gives files that parse the same way.

    python tests/analysis/make_ipi_fixture.py [OUTDIR]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data" / "ipi_run"

PES = '''
import json
import numpy as np
from ipi.pes.dummy import Dummy_driver

__DRIVER_NAME__ = "flexwater"
__DRIVER_CLASS__ = "FlexWater"


class FlexWater(Dummy_driver):
    """Harmonic O-H bonds and H-O-H angle (atomic units), atoms ordered O H H per
    molecule; ``scale`` multiplies the energy (a stand-in for plain vs averaged)."""

    def __init__(self, scale=1.0, *args, **kwargs):
        self.scale = float(scale)
        super().__init__(*args, **kwargs)

    def compute_structure(self, cell, pos):
        x = np.asarray(pos, dtype=float).reshape(-1, 3, 3)  # molecules, (O,H,H), xyz
        kb, r0, ka, a0 = 0.5, 1.81, 0.16, np.deg2rad(104.5)
        d = x[:, 1:, :] - x[:, :1, :]  # O->H
        r = np.linalg.norm(d, axis=-1)
        u = d / r[..., None]
        cos = np.sum(u[:, 0] * u[:, 1], axis=-1)
        ang = np.arccos(np.clip(cos, -1, 1))
        e = 0.5 * kb * ((r - r0) ** 2).sum() + 0.5 * ka * ((ang - a0) ** 2).sum()
        f = np.zeros_like(x)
        fb = -kb * (r - r0)[..., None] * u  # on H
        f[:, 1:] += fb
        f[:, 0] -= fb.sum(axis=1)
        sin = np.sqrt(np.maximum(1 - cos**2, 1e-12))
        dedc = -ka * (ang - a0) / sin  # dE/dcos
        dc1 = (u[:, 1] - cos[:, None] * u[:, 0]) / r[:, 0, None]
        dc2 = (u[:, 0] - cos[:, None] * u[:, 1]) / r[:, 1, None]
        f[:, 1] -= dedc[:, None] * dc1
        f[:, 2] -= dedc[:, None] * dc2
        f[:, 0] += dedc[:, None] * (dc1 + dc2)
        e *= self.scale
        f *= self.scale
        extras = json.dumps(
            {"average": "none", "energy_rot_std": float(1e-3 * e),
             "torque": [0.0, 0.0, float(e)], "n_rotations": 1}
        )
        return e, f.reshape(pos.shape), np.zeros((3, 3)), extras
'''

INIT = """6
# CELL(abcABC):    9.00000    8.50000   10.00000   90.00000   95.00000   80.00000  Step: 0
O   0.10000   0.20000   0.10000
H   0.85000   0.75000   0.05000
H  -0.65000   0.80000   0.15000
O   4.20000   4.10000   4.90000
H   4.90000   3.50000   5.20000
H   3.40000   3.55000   4.80000
"""

XML = """<simulation verbosity='low' safe_stride='100'>
  <output prefix='sim'>
    <properties stride='1' filename='out'> [ step, time{picosecond}, conserved{electronvolt},
      temperature{kelvin}, kinetic_md{electronvolt}, potential{electronvolt},
      pot_component_raw(0){electronvolt}, pot_component_raw(1){electronvolt} ] </properties>
    <trajectory filename='pos' stride='2' format='xyz' cell_units='angstrom'>
      positions{angstrom} </trajectory>
    <trajectory filename='vel' stride='2' format='xyz'> velocities </trajectory>
    <trajectory filename='frc' stride='2' format='xyz'> forces{ev/ang} </trajectory>
    <trajectory filename='apos' stride='2' format='ase'> positions </trajectory>
    <trajectory filename='xstd' stride='2' extra_type='energy_rot_std'> extras </trajectory>
    <trajectory filename='xtor' stride='2' extra_type='torque'> extras </trajectory>
    <trajectory filename='xraw' stride='4'> extras </trajectory>
  </output>
  <total_steps> 12 </total_steps>
  <prng><seed> 31415 </seed></prng>
  <ffdirect name='plain'><pes>custom</pes><pes_path>flexwater.py</pes_path>
    <parameters>{scale: 1.0}</parameters></ffdirect>
  <ffdirect name='avg'><pes>custom</pes><pes_path>flexwater.py</pes_path>
    <parameters>{scale: 1.01}</parameters></ffdirect>
  <system>
    <initialize nbeads='1'>
      <file mode='xyz' units='angstrom' cell_units='angstrom'> init.xyz </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities>
    </initialize>
    <forces>
      <force forcefield='avg'><mts_weights>[1, 0]</mts_weights></force>
      <force forcefield='plain'><mts_weights>[-1, 1]</mts_weights></force>
    </forces>
    <motion mode='dynamics'>
      <dynamics mode='nve'>
        <timestep units='femtosecond'> 0.5 </timestep>
        <nmts> [1, 2] </nmts>
      </dynamics>
    </motion>
  </system>
</simulation>
"""

KEEP = [
    "sim.out",
    "sim.pos_0.xyz",
    "sim.vel_0.xyz",
    "sim.frc_0.xyz",
    "sim.apos_0.extxyz",
    "sim.xstd_0",
    "sim.xtor_0",
    "sim.xraw_0",
]


def generate(out: Path = DEFAULT_OUT, timeout: float = 120.0) -> Path:
    """Run i-PI in a temporary directory and copy the outputs to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ipi_bin = Path(sys.executable).parent / "i-pi"
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "flexwater.py").write_text(PES)
        (t / "init.xyz").write_text(INIT)
        (t / "input.xml").write_text(XML)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run(
            ["timeout", "-k", "5", str(timeout), str(ipi_bin), "input.xml"],
            cwd=t,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for name in KEEP:
            shutil.copy(t / name, out / name)
    return out


if __name__ == "__main__":
    print(generate(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT))
