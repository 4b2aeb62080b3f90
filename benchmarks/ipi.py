"""symbreak behind the real i-PI: step times, measured by i-PI itself, in one run.

Three tables, all with the same model (a default-size random PET unless ``--model``):

1. **Peer comparison.** i-PI 3.3's own rotational averaging (``<ffrotations>`` around a
   plain ``symbreak serve`` client, in its fastest setting: ``batch_size`` = K on the
   wrapped socket, so that the client gets all K rotated copies in one request) against
   symbreak's own averaging (``symbreak serve --average GRID``) on the same grids:
   ``legendre:2+inv`` (36 rotations) and ``lebedev:3`` (18), for one gas-phase molecule
   and 8 molecules of liquid water. Printed: i-PI's time per MD step, the client's model
   time per step, the ratio, and the energy difference at step 0 (float32 model). The
   energies are also compared with a float64 copy of the model (one i-PI run, both
   routes side by side as force components), where they must agree to 1e-8 eV.
2. **PIMD, 8 beads, 64 H2O**: one batched request per step (``batch_size`` 8, all beads in
   one model call) against 8 single requests.
3. **Overhead** of the socket and i-PI, classical NVE with the plain model, 64 and 512
   H2O: i-PI's step time minus the client's model time (``call_seconds`` in the extras:
   neighbour list + model + unpacking), as a fraction of the model time.

Timing: i-PI at ``verbosity='high'`` prints its own wall time of every MD step ("Average
timings at MD step N. t/step"), which includes the force requests and the outputs but not
i-PI's start-up or its 1 s soft-exit wait. The first ``--warmup`` steps are dropped
(TorchScript profiles and optimises its first calls); the tables give medians over the
next ``--steps`` steps. Model time per step sums ``call_seconds`` over the distinct model
calls of the step (a batched call counts once).

Usage: ``python benchmarks/ipi.py [--model PATH] [--steps 4] [--warmup 3] [--threads 1]
[--keep DIR]``. Every run is bounded in time; processes and socket files are cleaned up.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common import export_random_model, machine, water  # first: it takes this folder off sys.path

# isort: split
# symbreak.engines.units imports i-PI, which this file's own name would shadow before common
from symbreak.engines.sockets import IPI_DEFAULT_PREFIX as IPI_PREFIX  # nested <ffsocket>s
from symbreak.engines.units import HARTREE_IN_EV

STEP_RE = re.compile(r"Average timings at MD step\s+(\d+)\. t/step:\s+([-+0-9.eE]+)")
GRIDS = (("legendre", 2, True), ("lebedev", 3, False))


# ======================================================================================
# Structures and files
# ======================================================================================
def gas_molecule():
    """One H2O in a 20 Å box (the model's cutoff is far smaller: a gas-phase molecule)."""
    from ase.build import molecule

    atoms = molecule("H2O")
    atoms.set_cell([20.0, 20.0, 20.0])
    atoms.center()
    atoms.pbc = True
    return atoms


def liquid8():
    """8 randomly oriented H2O on a 2x2x2 lattice in a 6.2 Å box (≈ 1 g/cm³)."""
    from ase import Atoms
    from ase.build import molecule
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    base = molecule("H2O")
    atoms = Atoms(cell=[6.2, 6.2, 6.2], pbc=True)
    for k in range(8):
        m = base.copy()
        m.positions = m.positions @ Rotation.random(random_state=rng).as_matrix().T
        m.positions += (np.array([k & 1, (k >> 1) & 1, (k >> 2) & 1]) + 0.5) * 3.1
        atoms += m
    return atoms


def write_ipi_xyz(path: Path, atoms) -> None:
    """i-PI xyz with the exact (upper-triangular h) cell in Å; ASE reads it too."""
    h = atoms.cell.array.T
    head = " ".join(f"{x:.16e}" for x in h.ravel())
    lines = [str(len(atoms)), f"# CELL(H): {head} cell{{angstrom}} positions{{angstrom}}"]
    lines += [
        f"{s} {p[0]:.16e} {p[1]:.16e} {p[2]:.16e}"
        for s, p in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


def float64_copy(model: Path, out: Path) -> Path:
    """The same model with float64 weights (the i-PI driver then runs it in float64)."""
    import torch

    from symbreak.export import METADATA_FILE, load_model

    loaded = load_model(model)
    with torch.no_grad():
        module = loaded.module.double()
    torch.jit.save(module, str(out), _extra_files={METADATA_FILE: loaded.metadata.to_json()})
    return out


# ======================================================================================
# Running i-PI and its clients
# ======================================================================================
@dataclass
class Run:
    """What one i-PI run gave: per-step wall times (s), extras, potentials (eV)."""

    step_times: np.ndarray
    model_times: np.ndarray  # per MD step (frames 1..), seconds
    calls_per_step: np.ndarray
    potential: np.ndarray  # eV per frame (frame 0 = initial structure)
    props: dict = field(default_factory=dict)

    def median_step(self, warmup: int) -> float:
        return float(np.median(self.step_times[warmup:]))

    def median_model(self, warmup: int) -> float:
        return float(np.median(self.model_times[warmup:]))


def _env(threads: int) -> dict:
    env = dict(os.environ)  # i-PI and the clients run the installed symbreak, as this script
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(cmd: list[str], workdir: Path, name: str, env: dict) -> subprocess.Popen:
    with open(workdir / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            cmd,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)


def serve_cmd(model: Path, address: str, prefix: str, threads: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "symbreak",
        "serve",
        *("--model", str(model), "--template", "init.xyz", "--address", address),
        *("--socket-prefix", prefix, "--threads", str(threads), "--no-control"),
        *args,
    ]


def run_ipi(
    workdir: Path,
    xml: str,
    clients: dict[str, list[str]],
    sockets: list[str],
    threads: int,
    timeout: float,
) -> str:
    """Run i-PI and its clients in ``workdir`` until i-PI ends; returns i-PI's log."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "input.xml").write_text(xml)
    env = _env(threads)
    # i-PI of this Python's environment first (the venv need not be activated)
    ipi = shutil.which("i-pi", path=str(Path(sys.executable).parent)) or shutil.which("i-pi")
    procs = {"ipi": _start([ipi or "i-pi", "input.xml"], workdir, "ipi", env)}
    try:
        for name, cmd in clients.items():
            procs[name] = _start(cmd, workdir, name, env)
        deadline = time.monotonic() + timeout
        while procs["ipi"].poll() is None:
            failed = [n for n, p in procs.items() if n != "ipi" and p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                logs = {n: (workdir / f"{n}.log").read_text()[-2000:] for n in procs}
                why = f"client(s) {failed} failed" if failed else f"no end after {timeout} s"
                raise RuntimeError(f"{workdir.name}: {why}\n{logs}")
            time.sleep(0.2)
        if procs["ipi"].returncode != 0:
            raise RuntimeError(f"i-PI failed:\n{(workdir / 'ipi.log').read_text()[-3000:]}")
        for proc in procs.values():
            proc.wait(30)
    finally:
        for proc in procs.values():
            _stop(proc)
        for path in sockets:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return (workdir / "ipi.log").read_text()


def simulation(ffs: str, forces: str, outputs: str, prefix: str, steps: int, nbeads=1) -> str:
    return f"""<simulation verbosity='high' floatformat='%.16e' sockets_prefix='{prefix}'>
  <output prefix='sim'>
    <properties filename='out' stride='1'> [ step, potential ] </properties>
    {outputs}
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>31415</seed></prng>
  {ffs}
  <system>
    <initialize nbeads='{nbeads}'>
      <file mode='xyz'>init.xyz</file>
      <velocities mode='thermal' units='kelvin'>300</velocities>
    </initialize>
    <forces>{forces}</forces>
    <ensemble><temperature units='kelvin'>300</temperature></ensemble>
    <motion mode='dynamics'>
      <dynamics mode='nve'><timestep units='femtosecond'>0.5</timestep></dynamics>
    </motion>
  </system>
</simulation>"""


def read_props(path: Path) -> dict[str, np.ndarray]:
    spans = {}
    for line in path.read_text().splitlines():
        m = re.match(r"#\s*(?:column|cols\.)\s+(\d+)(?:-(\d+))?\s+-->\s+(\S+)", line)
        if m:
            first = int(m.group(1)) - 1
            spans[m.group(3)] = slice(first, int(m.group(2) or first + 1))
    data = np.loadtxt(path, ndmin=2)
    return {k: data[:, s] if s.stop - s.start > 1 else data[:, s.start] for k, s in spans.items()}


def read_call_extras(paths: list[Path]) -> list[dict[int, float]]:
    """Per frame: {call id: call_seconds} over all files (beads) and all entries (the
    rotations of <ffrotations>), from extras written with extra_type='call,call_seconds'."""
    frames: list[dict[int, float]] = []
    for path in paths:
        blocks = re.split(r"^\s*#EXTRAS[^\n]*\n", path.read_text(), flags=re.M)[1:]
        for k, block in enumerate(blocks):
            values = np.array(block.split(), float)
            calls, seconds = np.split(values, 2)
            if len(frames) <= k:
                frames.append({})
            frames[k].update(zip(calls.astype(int).tolist(), seconds.tolist(), strict=True))
    return frames


def collect(workdir: Path, log: str, extras: list[Path]) -> Run:
    steps = sorted((int(s), float(t)) for s, t in STEP_RE.findall(log))
    frames = read_call_extras(extras)[1:]  # frame k+1 = the forces of MD step k
    props = read_props(workdir / "sim.out")
    return Run(
        step_times=np.array([t for _, t in steps]),
        model_times=np.array([sum(f.values()) for f in frames]),
        calls_per_step=np.array([len(f) for f in frames]),
        potential=props["potential"] * HARTREE_IN_EV,
        props=props,
    )


# ======================================================================================
# The benchmarks
# ======================================================================================
class Bench:
    def __init__(self, args, root: Path, model: Path):
        self.args, self.root, self.model = args, root, model
        self.prefix = tempfile.mkdtemp(prefix="sbb", dir="/tmp") + "/"
        self.tag = f"sbb{os.getpid()}"
        self.n = 0

    def close(self) -> None:
        shutil.rmtree(self.prefix, ignore_errors=True)

    def workdir(self, name: str, atoms) -> Path:
        self.n += 1
        wd = self.root / f"{self.n:02d}_{name}"
        wd.mkdir(parents=True)
        write_ipi_xyz(wd / "init.xyz", atoms)
        return wd

    @property
    def total_steps(self) -> int:
        return self.args.warmup + self.args.steps

    def plain_socket(self, name: str, atoms, *serve_args: str, nbeads=1, batch=1, model=None):
        wd = self.workdir(name, atoms)
        ff = f"""<ffsocket name='sb' mode='unix'><address>{name}</address>
          <batch_size>{batch}</batch_size></ffsocket>"""
        outputs = """<trajectory filename='x' stride='1' extra_type='call,call_seconds'>
          extras </trajectory>"""
        xml = simulation(
            ff, "<force forcefield='sb'/>", outputs, self.prefix, self.total_steps, nbeads
        )
        cmd = serve_cmd(model or self.model, name, self.prefix, self.args.threads, *serve_args)
        log = run_ipi(wd, xml, {"serve": cmd}, [self.prefix + name], self.args.threads, 600)
        return collect(wd, log, [wd / f"sim.x_{b}" for b in range(nbeads)])

    def ffrotations(self, name: str, atoms, mode: str, order: int, inversion: bool):
        wd = self.workdir(name, atoms)
        k = rotations(mode, order, inversion)
        address = f"{self.tag}_{name}"
        ff = f"""<ffrotations name='sb'>
          <grid_mode>{mode}</grid_mode><grid_order>{order}</grid_order>
          <inversion>{str(inversion).lower()}</inversion>
          <ffsocket name='inner' mode='unix'><address>{address}</address>
            <batch_size>{k}</batch_size></ffsocket>
        </ffrotations>"""
        outputs = """<trajectory filename='x' stride='1' extra_type='call,call_seconds'>
          extras_component_raw(0) </trajectory>"""
        xml = simulation(ff, "<force forcefield='sb'/>", outputs, self.prefix, self.total_steps)
        cmd = serve_cmd(self.model, address, IPI_PREFIX, self.args.threads)
        log = run_ipi(wd, xml, {"serve": cmd}, [IPI_PREFIX + address], self.args.threads, 600)
        return collect(wd, log, [wd / "sim.x"])

    def agreement64(self, atoms) -> dict[str, float]:
        """|E_ffrotations - E_symbreak| (eV) at step 0 with a float64 copy of the model."""
        model64 = float64_copy(self.model, self.root / "model64.pt")
        wd = self.workdir("agreement_float64", atoms)
        ffs, forces, clients, sockets = "", "", {}, []
        for mode, order, inv in GRIDS:
            k, name = rotations(mode, order, inv), f"{mode}{order}"
            addr = f"{self.tag}_{name}64"
            ffs += f"""<ffrotations name='rot_{name}'><grid_mode>{mode}</grid_mode>
              <grid_order>{order}</grid_order><inversion>{str(inv).lower()}</inversion>
              <ffsocket name='in_{name}' mode='unix'><address>{addr}</address>
              <batch_size>{k}</batch_size></ffsocket></ffrotations>
              <ffsocket name='sb_{name}' mode='unix'><address>sb_{name}</address></ffsocket>"""
            forces += f"<force forcefield='rot_{name}'/><force forcefield='sb_{name}'/>"
            threads = self.args.threads
            clients[f"plain_{name}"] = serve_cmd(model64, addr, IPI_PREFIX, threads)
            clients[f"sb_{name}"] = serve_cmd(
                model64, f"sb_{name}", self.prefix, threads, *average_args(mode, order, inv)
            )
            sockets += [IPI_PREFIX + addr, f"{self.prefix}sb_{name}"]
        xml = simulation(ffs, forces, "", self.prefix, 1)
        xml = xml.replace("[ step, potential ]", "[ step, " + ", ".join(
            f"pot_component_raw({i})" for i in range(2 * len(GRIDS))
        ) + " ]")  # fmt: skip
        run_ipi(wd, xml, clients, sockets, self.args.threads, 600)
        props = read_props(wd / "sim.out")
        return {
            grid_name(*g): abs(
                props[f"pot_component_raw({2 * i})"][0]
                - props[f"pot_component_raw({2 * i + 1})"][0]
            )
            * HARTREE_IN_EV
            for i, g in enumerate(GRIDS)
        }


def rotations(mode: str, order: int, inversion: bool) -> int:
    from symbreak.rotations import AveragingPolicy

    return AveragingPolicy(f"{mode}:{order}", inversion).n_rotations


def grid_name(mode: str, order: int, inversion: bool) -> str:
    return f"{mode}:{order}" + ("+inv" if inversion else "")


def average_args(mode: str, order: int, inversion: bool) -> list[str]:
    return ["--average", f"{mode}:{order}"] + (["--inversion"] if inversion else [])


def table(title: str, header: list[str], rows: list[list], note: str = "") -> None:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}\n{line}")
    for k, r in enumerate(cells):
        cols = enumerate(zip(r, widths, strict=True))
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in cols))
        if k == 0:
            print(line)
    print(line)
    if note:
        print(note)
    sys.stdout.flush()


def ms(x: float) -> str:
    return f"{1e3 * x:.1f}"


def describe(args, model: Path) -> None:
    from importlib.metadata import version

    import torch

    from symbreak.export import load_model

    loaded = load_model(model)
    params = sum(p.numel() for p in loaded.module.parameters())
    dtype = next(loaded.module.parameters()).dtype
    cpu, load = machine()
    print("symbreak behind i-PI: benchmark")
    print(f"  device: CPU, {cpu}, {os.cpu_count()} cores; load average {load}")
    print(
        f"  torch {torch.__version__}, {args.threads} thread(s) per client; i-PI {version('ipi')}"
    )
    print(f"  model: {model} ({params} parameters, {dtype})")
    print(f"  timing: median of i-PI's per-step wall time over {args.steps} steps after "
          f"{args.warmup} warm-up steps")  # fmt: skip
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="exported model (default: random default-size PET)")
    p.add_argument("--steps", type=int, default=4, help="measured MD steps per run")
    p.add_argument("--warmup", type=int, default=3, help="MD steps dropped before measuring")
    p.add_argument("--threads", type=int, default=1, help="torch threads per client")
    p.add_argument("--keep", type=Path, help="keep the run directories here")
    p.add_argument(
        "--only", choices=["peer", "pimd", "overhead"], action="append", help="run only these"
    )
    args = p.parse_args(argv)
    parts = args.only or ["peer", "pimd", "overhead"]
    t_start = time.monotonic()
    root = Path(args.keep or tempfile.mkdtemp(prefix="sb_ipi_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    model = args.model or export_random_model(root / "random_pet.pt")
    describe(args, model)
    bench = Bench(args, root, model)
    w = args.warmup
    try:
        if "peer" in parts:
            rows = []
            for sys_name, atoms in (("gas, 1 H2O", gas_molecule()), ("liquid, 8 H2O", liquid8())):
                for mode, order, inv in GRIDS:
                    g = grid_name(mode, order, inv)
                    tag = f"{'gas' if 'gas' in sys_name else 'liq'}_{mode}{order}"
                    rot = bench.ffrotations(f"rot_{tag}", atoms, mode, order, inv)
                    own = bench.plain_socket(f"sb_{tag}", atoms, *average_args(mode, order, inv))
                    rows.append(
                        [
                            sys_name,
                            g,
                            rotations(mode, order, inv),
                            ms(rot.median_step(w)),
                            ms(rot.median_model(w)),
                            ms(own.median_step(w)),
                            ms(own.median_model(w)),
                            f"{rot.median_step(w) / own.median_step(w):.2f}",
                            f"{abs(rot.potential[0] - own.potential[0]):.1e}",
                        ]
                    )
            agree = bench.agreement64(liquid8())
            table(
                "1. Peer comparison: i-PI <ffrotations> (batch_size = K) around a plain "
                "client vs symbreak's own averaging",
                [
                    "system",
                    "grid",
                    "K",
                    "ffrot step ms",
                    "ffrot model ms",
                    "symbreak step ms",
                    "symbreak model ms",
                    "ratio ffrot/sb",
                    "|dE| step 0 f32 (eV)",
                ],
                rows,
                "   float64 copy of the model, 8 H2O, step 0: |E_ffrotations - E_symbreak| = "
                + ", ".join(f"{k}: {v:.1e} eV" for k, v in agree.items())
                + f" ({'agree' if max(agree.values()) < 1e-8 else 'DISAGREE'} to 1e-8 eV)",
            )
        if "pimd" in parts:
            atoms = water(192)
            one = bench.plain_socket("pimd_b1", atoms, nbeads=8, batch=1)
            eight = bench.plain_socket("pimd_b8", atoms, nbeads=8, batch=8)
            rows = [
                [label, ms(r.median_step(w)), ms(r.median_model(w)), int(r.calls_per_step[-1])]
                for label, r in (("unbatched (8 requests)", one), ("batched (batch_size 8)", eight))
            ]
            table(
                "2. PIMD, 8 beads, 64 H2O (192 atoms), plain model",
                ["requests", "step ms", "model ms", "model calls/step"],
                rows,
                f"   unbatched/batched step time: {one.median_step(w) / eight.median_step(w):.2f}"
                f"; |dE| step 0: {abs(one.potential[0] - eight.potential[0]):.1e} eV",
            )
        if "overhead" in parts:
            rows = []
            for n in (64, 512):
                r = bench.plain_socket(f"nve_{n}", water(3 * n))
                step, model_t = r.median_step(w), r.median_model(w)
                rows.append(
                    [
                        f"{n} H2O",
                        3 * n,
                        ms(step),
                        ms(model_t),
                        ms(step - model_t),
                        f"{100 * (step - model_t) / model_t:.1f} %",
                    ]
                )
            table(
                "3. Socket + i-PI overhead, classical NVE, plain model",
                ["system", "atoms", "step ms", "model ms", "overhead ms", "overhead/model"],
                rows,
                "   model = the client's call_seconds (neighbour list + model + unpacking)",
            )
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\ntotal wall time {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
