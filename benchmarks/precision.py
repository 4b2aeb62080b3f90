"""Reduced precision and compilers for the model: speed and force error against float32.

Energy + forces of liquid water through the shipped model's PET (1 torch thread by
default), by four routes:

* ``torchscript fp32``: the exported file, as every engine runs it (the reference speed);
* ``eager fp32``: the same PET rebuilt as a Python module (the reference numbers);
* ``eager bf16 autocast``: ``torch.autocast("cpu", bfloat16)`` around the eager PET: the
  matrix products in bfloat16 (AVX-512 BF16 / AMX where the CPU has them), energies and
  forces returned in float32;
* ``torch.compile``: Inductor on the eager PET's energy function (``--compile``).
  ``torch.compile`` of a module wraps only its ``forward``, which the engines never call:
  ``atomic_energies`` itself is compiled. Shapes as in MD: compiled first on two held-out
  frames whose edge counts differ, so that the edge dimension is symbolic (it changes at
  every MD step); the seconds this takes are printed.

For each route: the median time of ``--repeats`` calls after warm-up calls at each size,
its ratio to TorchScript, and on the held-out (test) frames of the training data the force
error against eager float32 (MAE and largest component, meV/Å) and the energy error
(meV/atom).

Usage: ``python benchmarks/precision.py [--sizes 192,1536] [--threads 1] [--repeats 5]
[--compile]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

from common import WATER_160, water


def energy_and_forces(pet, graph, dtype):
    """Interaction energy (eV, float64) and forces [N, 3] (eV/Å, float64) of one graph."""
    import torch

    from symbreak.model import atom_forces

    species, centers, neighbors, reverse = (
        torch.from_numpy(getattr(graph, k)).long()
        for k in ("species", "centers", "neighbors", "reverse")
    )
    vectors = torch.from_numpy(graph.vectors).to(dtype).requires_grad_(True)
    energy = pet.atomic_energies(species, centers, neighbors, vectors, reverse).sum()
    (grad,) = torch.autograd.grad(energy, vectors)
    forces = atom_forces(grad.float(), centers, neighbors, species.shape[0])
    return float(energy.detach()), forces.double().numpy()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="water-revpbe0d3")
    p.add_argument("--sizes", default="192,1536")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also torch.compile (Inductor)")
    args = p.parse_args()

    import ase.io
    import numpy as np
    import torch

    from symbreak.evaluator import JIT_OPTIMIZE
    from symbreak.export import load_model, rebuild_pet
    from symbreak.graph import build_graph

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    eager = rebuild_pet(loaded.path, loaded.module, loaded.metadata).float().eval()
    for parameter in eager.parameters():  # forces only: no weight products in a backward
        parameter.requires_grad_(False)
    scripted = loaded.module.inner.float()
    cutoff, species = float(loaded.metadata.cutoff), list(loaded.metadata.species)

    def bf16(pet):
        def run(graph):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return energy_and_forces(pet, graph, torch.float32)

        return run

    def script(graph):
        with torch.jit.optimized_execution(JIT_OPTIMIZE):  # as the engines run it
            return energy_and_forces(scripted, graph, torch.float32)

    routes = {
        "torchscript fp32": script,
        "eager fp32": lambda g: energy_and_forces(eager, g, torch.float32),
        "eager bf16 autocast": bf16(eager),
    }
    if args.compile:
        compiled = SimpleNamespace(atomic_energies=torch.compile(eager.atomic_energies))
        routes["torch.compile (Inductor)"] = lambda g: energy_and_forces(compiled, g, torch.float32)

    def graph_of(atoms):
        return build_graph(
            atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, cutoff, species
        )

    # accuracy against eager float32 on the held-out frames of the model's split (its metadata)
    split = loaded.metadata.training["split"]
    frames = ase.io.read(WATER_160, ":")
    test = [graph_of(frames[i]) for i in split["test"]]
    reference = [energy_and_forces(eager, g, torch.float32) for g in test]
    if args.compile:
        t0 = time.perf_counter()
        for g in test[:2]:
            routes["torch.compile (Inductor)"](g)
        print(f"torch.compile: {time.perf_counter() - t0:.0f} s to compile (two shapes)")
    print(
        f"model {args.model}, {args.threads} thread(s), torch {torch.__version__}; "
        f"errors against eager float32 on {len(test)} held-out frames"
    )
    header = (
        f"{'route':<26} {'atoms':>6} {'E+F (s)':>9} {'vs script':>9} "
        f"{'F MAE meV/A':>11} {'F max meV/A':>11} {'E meV/atom':>10}"
    )
    print(header)
    print("-" * len(header))
    for n in [int(s) for s in args.sizes.split(",")]:
        graph = graph_of(water(n))
        base = None
        for name, run in routes.items():
            for _ in range(2):
                run(graph)  # warm-up (and compilation)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                run(graph)
                times.append(time.perf_counter() - t0)
            t = statistics.median(times)
            base = base or t
            f_err, e_err = [], []
            for g, (e_ref, f_ref) in zip(test, reference, strict=True):
                e, f = run(g)
                f_err.append(np.abs(f - f_ref).ravel())
                e_err.append(abs(e - e_ref) / len(g.species))
            f_err = np.concatenate(f_err) * 1e3
            print(
                f"{name:<26} {n:>6} {t:>9.4f} {t / base:>9.2f} {f_err.mean():>11.3f} "
                f"{f_err.max():>11.2f} {1e3 * np.mean(e_err):>10.4f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
