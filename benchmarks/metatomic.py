"""A metatomic model averaged over rotations: symbreak against metatomic's and i-PI's own
averaging, in one run, as ratios.

The same metatomic PET (by default the small metatrain PET of the repository,
``tests/data/metatrain-pet-water.pt``; any other with ``--model``), liquid water of 64 and 512
H2O, grids ``lebedev:3`` (K = 18) and ``lebedev:5`` (K = 70). One energy + forces evaluation
of the averaged model by

* **symbreak**: ``symbreak.evaluator.Evaluator(model).compute(structure, policy)`` (the K
  rotated copies in batched model calls, split over parallel workers as the evaluator
  chooses; its process keeps freed memory, :mod:`symbreak.allocator`, while the peers'
  processes run with glibc's defaults: ``SYMBREAK_KEEP_FREED_MEMORY=0`` measures symbreak
  without it),
* **SymmetrizedCalculator** (metatomic-ase): ``SymmetrizedCalculator(MetatomicCalculator(
  model), l_max=l, include_inversion=False)``, whose grid is a Lebedev rule of order ≥ l times
  2l+1 in-plane angles. ``l_max=1`` is symbreak's ``lebedev:3`` exactly (6 x 3 = 18); no
  ``l_max`` gives 70 (``l_max=3``: 6 x 7 = 42, ``l_max=4``: 14 x 9 = 126), so the closest K is
  taken and both Ks are printed. Its rotated copies go to the model in batches of
  ``batch_size`` (all at once unless that exceeds ``--max-batch-atoms``, 14,000 by default:
  memory grows by ~0.4 MB per rotated atom in one call); it also evaluates the unrotated
  structure once,
* **i-PI ``<ffrotations>``** (i-PI 3.3, the same Lebedev grid as symbreak) around i-PI's own
  metatomic driver ``i-pi-py_driver -m metatomic -o template=...,model=...`` with
  ``batch_size`` = K on the wrapped socket (all K rotated copies in one request, one batched
  model call; fewer where K x atoms exceeds ``--max-batch-atoms``). Its time is i-PI's own
  wall time per MD step (verbosity high, "Average timings at MD step N"), median over
  ``--ipi-steps`` steps after ``--ipi-warmup`` dropped ones, as ``benchmarks/ipi.py``
  measures it: it includes the socket and i-PI's step, a few ms here,

and, plain (no averaging), symbreak's route against ``MetatomicCalculator`` (goal: within
5 %).

Every case runs in its own Python process with the same ``--threads`` torch threads (i-PI's
driver too), first warmed up with three plain calls on a 24-atom structure and one untimed
call of the case itself (TorchScript profiles and optimises its first calls; a metatomic
model's first call at a new size was measured 8x slower than the next ones), then timed
``--repeats`` times (minimum: noise on a shared machine only adds time). The ratio is
symbreak's time over the faster peer's; where a peer's K differs from symbreak's, its time
is scaled to symbreak's K (time x K / K_peer) before comparing, and the row says so. Goal
of issue 20: ratio <= 0.5, never > 1.

Usage: ``python benchmarks/metatomic.py [--model PATH] [--extensions DIR] [--quick]
[--sizes 64,512] [--grids lebedev:3,lebedev:5] [--repeats 2] [--threads N]
[--no-ipi] [--json FILE]``; ``--quick``: 64 H2O, ``lebedev:3``, one repeat, 2 i-PI steps.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import REPO, machine, water

DEFAULT_MODEL = REPO / "tests" / "data" / "metatrain-pet-water.pt"


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _small(atoms):
    small = atoms[:24]
    small.set_cell([8.0, 8.0, 8.0])
    return small


# ======================================================================================
# One case, in its own process
# ======================================================================================
def worker(case: dict) -> dict:
    import torch

    torch.set_num_threads(case["threads"])
    atoms = water(3 * case["molecules"])
    route = case["route"]
    if route == "symbreak":
        return _time_symbreak(case, atoms)
    return _time_ase(case, atoms)


def _time_symbreak(case: dict, atoms) -> dict:
    from symbreak.evaluator import Evaluator, Structure

    try:
        ev = Evaluator(case["model"], extensions_directory=case["extensions"])
    except Exception as exc:  # noqa: BLE001 - reported in the table, not a crash
        return {"error": f"n/a (not loadable: {type(exc).__name__}: {str(exc)[:200]})"}
    structure = Structure.from_atoms(atoms)
    for _ in range(3):
        ev.compute(Structure.from_atoms(_small(atoms)), "none")
    rss0 = _maxrss_mb()
    ev.compute(structure, case["grid"])  # steady state: the first call of a size is slower
    wall = []
    for _ in range(case["repeats"]):
        t0 = time.perf_counter()
        res = ev.compute(structure, case["grid"])[0]
        wall.append(time.perf_counter() - t0)
    return {
        "wall": float(np.min(wall)),
        "k": int(res.diagnostics.get("n_rotations", 1)) if case["grid"] != "none" else 1,
        "energy": float(res.energy),
        "peak_mb": _maxrss_mb() - rss0,
    }


def _time_ase(case: dict, atoms) -> dict:
    from ase.calculators.calculator import all_changes
    from metatomic_ase import MetatomicCalculator, SymmetrizedCalculator

    base = MetatomicCalculator(case["model"], extensions_directory=case["extensions"])
    calc = base
    k = 1
    if case["route"] == "symmetrized":
        k = case["k_peer"]
        batch = max(1, min(k, case["max_batch_atoms"] // len(atoms)))
        calc = SymmetrizedCalculator(
            base, l_max=case["l_max"], include_inversion=False, batch_size=batch
        )
        assert len(calc.quadrature_rotations) == k, (len(calc.quadrature_rotations), k)
    small = _small(atoms)
    for _ in range(3):
        calc.calculate(small, ["energy", "forces"], all_changes)
    rss0 = _maxrss_mb()
    calc.calculate(atoms, ["energy", "forces"], all_changes)  # steady state, as symbreak's
    wall = []
    for _ in range(case["repeats"]):
        t0 = time.perf_counter()
        calc.calculate(atoms, ["energy", "forces"], all_changes)
        wall.append(time.perf_counter() - t0)
    return {
        "wall": float(np.min(wall)),
        "k": k,
        "energy": float(calc.results["energy"]),
        "peak_mb": _maxrss_mb() - rss0,
    }


def run_case(case: dict, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(case["threads"]))
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(case)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout ({timeout:.0f} s)"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"failed (exit {out.returncode}): {last[:200]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ======================================================================================
# i-PI <ffrotations> around i-PI's metatomic driver
# ======================================================================================
def _ipi_helpers():
    """benchmarks/ipi.py (run_ipi, simulation, write_ipi_xyz, STEP_RE), loaded by path: its
    module name would shadow the i-pi package."""
    spec = importlib.util.spec_from_file_location(
        "symbreak_bench_ipi", Path(__file__).resolve().parent / "ipi.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def time_ffrotations(args, root: Path, molecules: int, grid: str, k: int) -> dict:
    from symbreak.engines.sockets import IPI_DEFAULT_PREFIX

    ipi = _ipi_helpers()
    mode, order = grid.split(":")
    name = f"ffrot_{molecules}_{mode}{order}"
    workdir = root / name
    workdir.mkdir(parents=True)
    atoms = water(3 * molecules)
    ipi.write_ipi_xyz(workdir / "init.xyz", atoms)
    batch = max(1, min(k, args.max_batch_atoms // len(atoms)))
    address = f"sbm{os.getpid()}_{name}"  # nested sockets ignore sockets_prefix
    ff = f"""<ffrotations name='rot'>
      <grid_mode>{mode}</grid_mode><grid_order>{order}</grid_order>
      <inversion>false</inversion>
      <ffsocket name='inner' mode='unix'><address>{address}</address>
        <batch_size>{batch}</batch_size></ffsocket>
    </ffrotations>"""
    prefix = tempfile.mkdtemp(prefix="sbm", dir="/tmp") + "/"
    steps = args.ipi_warmup + args.ipi_steps
    xml = ipi.simulation(ff, "<force forcefield='rot'/>", "", prefix, steps)
    params = f"template=init.xyz,model={Path(args.model).resolve()}"
    if args.extensions:
        params += f",extensions={Path(args.extensions).resolve()}"
    driver = shutil.which("i-pi-py_driver", path=str(Path(sys.executable).parent))
    cmd = [driver or "i-pi-py_driver", "-u", "-a", address, "-m", "metatomic", "-o", params]
    try:
        log = ipi.run_ipi(
            workdir,
            xml,
            {"driver": cmd},
            [IPI_DEFAULT_PREFIX + address],
            args.threads,
            args.case_timeout,
        )
    except RuntimeError as exc:
        return {"error": f"failed: {str(exc).splitlines()[0][:200]}"}
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
    times = [float(t) for s, t in sorted(ipi.STEP_RE.findall(log), key=lambda m: int(m[0]))]
    measured = times[args.ipi_warmup :]
    if not measured:
        return {"error": f"no step times in i-PI's log ({len(times)} steps)"}
    return {"wall": float(np.median(measured)), "k": k, "batch": batch}


# ======================================================================================
# The table
# ======================================================================================
def lebedev_l_max(k: int) -> tuple[int, int]:
    """SymmetrizedCalculator's l_max whose K (Lebedev order >= l, 2l+1 in-plane angles, no
    inversion) is closest to k: (l_max, K)."""
    from scipy.integrate import lebedev_rule

    best = None
    for l_max in range(1, 12):
        order = min(o for o in (3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25) if o >= l_max)
        k_peer = lebedev_rule(order)[0].shape[1] * (2 * l_max + 1)
        if best is None or abs(k_peer - k) < abs(best[1] - k):
            best = (l_max, k_peer)
    return best


def fmt(res: dict | None, width: int = 9) -> str:
    if res is None:
        return "-".rjust(width)
    if "error" in res:  # details below the table
        return res["error"].split(" ")[0][:width].rjust(width)
    return f"{res['wall']:>{width}.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="metatomic model file")
    parser.add_argument("--extensions", help="the model's TorchScript extensions folder")
    parser.add_argument("--sizes", default="64,512", help="H2O molecules (64, 512 or 64·m³)")
    parser.add_argument("--grids", default="lebedev:3,lebedev:5", help="symbreak grids")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per case (min)")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads of every route (default: all cores)",
    )
    parser.add_argument("--no-ipi", action="store_true", help="skip i-PI's <ffrotations>")
    parser.add_argument("--ipi-steps", type=int, default=2, help="i-PI steps measured")
    parser.add_argument("--ipi-warmup", type=int, default=1, help="i-PI steps dropped first")
    parser.add_argument(
        "--max-batch-atoms",
        type=int,
        default=14_000,
        help="peers: at most this many rotated atoms per model call (memory guard: measured "
        "~0.43 MB per atom for the small metatrain PET, 11.8 GB for 18 x 1536 atoms)",
    )
    parser.add_argument(
        "--case-timeout",
        type=float,
        default=3600,
        help="seconds per case (512 H2O x 70 in i-PI: ~2000)",
    )
    parser.add_argument("--quick", action="store_true", help="64 H2O, lebedev:3, 1 repeat")
    parser.add_argument("--keep", type=Path, help="keep i-PI's run folders here")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.quick:
        args.sizes, args.grids, args.repeats, args.ipi_steps = "64", "lebedev:3", 1, 2
    if not Path(args.model).is_file():
        parser.error(f"no model file {args.model} (see training/metatrain-pet/README.md)")

    from symbreak.rotations import AveragingPolicy

    t_start = time.monotonic()
    root = Path(args.keep or tempfile.mkdtemp(prefix="sb_mta_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    base = {
        "model": str(Path(args.model).resolve()),
        "extensions": args.extensions,
        "threads": args.threads,
        "repeats": args.repeats,
        "max_batch_atoms": args.max_batch_atoms,
    }
    _describe(args)
    header = (
        f"{'H2O':>4} {'grid':>10} {'K':>3} | {'symbreak s':>10} | {'Symm. s':>9} {'K':>4} | "
        f"{'ffrot s':>9} {'K':>3} {'batch':>5} | {'ratio':>6} {'vs':>6} | {'peak MB sb/Sym':>14} "
        f"{'dE eV':>8}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    try:
        for molecules in [int(s) for s in args.sizes.split(",")]:
            case = base | {"molecules": molecules, "grid": "none"}
            sb = run_case(case | {"route": "symbreak"}, args.case_timeout)
            mta = run_case(case | {"route": "plain"}, args.case_timeout)
            ratio = (sb["wall"] / mta["wall"]) if "wall" in sb and "wall" in mta else None
            rows.append({"molecules": molecules, "grid": "none", "symbreak": sb, "ase": mta})
            print(
                f"{molecules:>4} {'plain':>10} {1:>3} | {fmt(sb, 10)} | {fmt(mta)} {1:>4} | "
                f"{'':>9} {'':>3} {'':>5} | "
                + (f"{ratio:>6.3f} {'MtCalc':>6}" if ratio else f"{'n/a':>6} {'':>6}")
                + f" | {_mb(sb, mta):>14} {_de(sb, mta):>8}",
                flush=True,
            )
            for grid in args.grids.split(","):
                k = AveragingPolicy.parse(grid).n_rotations
                l_max, k_peer = lebedev_l_max(k)
                case = base | {"molecules": molecules, "grid": grid}
                sb = run_case(case | {"route": "symbreak"}, args.case_timeout)
                sym = run_case(
                    case | {"route": "symmetrized", "l_max": l_max, "k_peer": k_peer},
                    args.case_timeout,
                )
                rot = (
                    None
                    if args.no_ipi or not grid.startswith(("lebedev", "legendre"))
                    else time_ffrotations(args, root, molecules, grid, k)
                )
                # the peers' times at symbreak's K
                peers = {}
                if "wall" in sym:
                    peers["Symm"] = sym["wall"] * k / k_peer
                if rot is not None and "wall" in rot:
                    peers["ffrot"] = rot["wall"]
                ratio, versus = None, ""
                if "wall" in sb and peers:
                    versus = min(peers, key=peers.get)
                    ratio = sb["wall"] / peers[versus]
                    if versus == "Symm" and k_peer != k:
                        versus = "Symm*"
                rows.append(
                    {
                        "molecules": molecules,
                        "grid": grid,
                        "k": k,
                        "symbreak": sb,
                        "symmetrized": sym | {"l_max": l_max, "k": k_peer},
                        "ffrotations": rot,
                        "ratio": ratio,
                        "versus": versus,
                    }
                )
                rot_k = f"{k:>3} {rot.get('batch', ''):>5}" if rot else f"{'':>3} {'':>5}"
                print(
                    f"{molecules:>4} {grid:>10} {k:>3} | {fmt(sb, 10)} | {fmt(sym)} "
                    f"{k_peer:>4} | {fmt(rot)} {rot_k} | "
                    + (f"{ratio:>6.3f} {versus:>6}" if ratio else f"{'n/a':>6} {'':>6}")
                    + f" | {_mb(sb, sym):>14} {_de(sb, sym) if k_peer == k else '':>8}",
                    flush=True,
                )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(
        "seconds: one energy + forces evaluation (minimum of the repeats; ffrot: median i-PI "
        "step time).\nratio = symbreak / the faster peer (plain: / MetatomicCalculator; goal "
        "<= 1.05; averaged: goal <= 0.5);\n'Symm*': SymmetrizedCalculator's time scaled to "
        "symbreak's K (x K / K_peer) before comparing. n/a:\nnot measured (see the error in "
        "the cell). peak MB: growth of the peak RSS over the full-size calls.\ndE: |E_symbreak - "
        "E_peer| in eV, same K (a float32 total of ~3e4 eV varies by ~0.05 eV with rounding)."
    )
    for row in rows:
        for key in ("symbreak", "ase", "symmetrized", "ffrotations"):
            res = row.get(key)
            if res and "error" in res:
                print(f"  {row['molecules']} H2O {row['grid']} {key}: {res['error']}")
    print(f"total wall time {time.monotonic() - t_start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def _de(a: dict, b: dict) -> str:
    if "energy" not in a or "energy" not in b:
        return "-"
    return f"{abs(a['energy'] - b['energy']):.1e}"


def _mb(a: dict, b: dict) -> str:
    fa = f"{a['peak_mb']:.0f}" if "peak_mb" in a else "-"
    fb = f"{b['peak_mb']:.0f}" if "peak_mb" in b else "-"
    return f"{fa}/{fb}"


def _describe(args) -> None:
    from importlib.metadata import version

    import torch

    cpu, load = machine()
    info = ""
    with contextlib.suppress(Exception):
        import metatomic.torch as mta

        model = mta.load_atomistic_model(args.model, extensions_directory=args.extensions)
        params = sum(p.numel() for p in model.parameters())
        caps = model.capabilities()
        info = f" ({params} parameters, {caps.dtype}, range {caps.interaction_range:.2f} Å)"
    print("metatomic model averaged over rotations: symbreak vs metatomic-ase vs i-PI")
    print(f"  model: {args.model}{info}")
    print(
        f"  {cpu}, {os.cpu_count()} cores, load average {load}; {args.threads} torch "
        f"thread(s) per route; torch {torch.__version__}, metatomic-torch "
        f"{version('metatomic-torch')}, metatomic-ase {version('metatomic-ase')}, "
        f"i-PI {version('ipi')}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
