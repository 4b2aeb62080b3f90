"""Cost of the model itself: energy + forces, ns/day, and achieved FLOP rate.

For liquid water of 192, 1536 and 12288 atoms this times one plain energy + forces + virial
evaluation through :class:`symbreak.evaluator.Evaluator` (neighbour list, graph, the
exported TorchScript model, one backward pass: what every engine pays per MD step), and
reports

* the median wall time of ``--repeats`` calls after two warm-up calls, split into the
  graph (neighbour list + bookkeeping) and the model;
* ns/day at a 0.5 fs time step (64 H2O = 192 atoms, 512 H2O = 1536 atoms, 4096 H2O);
* the time per atom against the first size (linear scaling: 1.0) and the peak resident
  memory of the process so far (sizes run in increasing order, so it is each size's own);
* the floating-point work of one evaluation, counted by ``torch.utils.flop_counter`` on the
  eager copy of the same model (matrix products of the forward and backward passes of the
  whole graph, not the recomputed forward of chunked gradients; the elementwise work is not
  counted, so the rate is a lower bound; a box of 192·m³ atoms, frame 0 repeated, counts
  m³ times frame 0), divided by the time:
  the model's achieved GFLOP/s, next to two plain ``torch.mm`` peers measured in the same
  run with the same threads: a large square float32 GEMM (the machine's practical limit)
  and a GEMM of the model's own shape ([tokens, d_model] x [d_model, 3 d_model]).

Usage: ``python benchmarks/model.py [--model water-revpbe0d3] [--sizes 192,1536,12288]
[--threads 1] [--repeats 5] [--warmup 2]``; ``--model random`` uses a default-size random
PET. Bounded memory at scale: ``--sizes 192,12288,98304 --repeats 1 --warmup 1``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

from common import export_random_model, water

TIMESTEP_FS = 0.5


def ns_per_day(seconds_per_step: float, timestep_fs: float = TIMESTEP_FS) -> float:
    return timestep_fs * 1e-6 * 86400.0 / seconds_per_step


def matmul_gflops(m: int, k: int, n: int, repeats: int = 5) -> float:
    """Best-of GFLOP/s of a float32 [m, k] x [k, n] product."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * m * k * n / best / 1e9


def model_flops(loaded, graph) -> float:
    """Matrix-product FLOPs of one energy + forces evaluation of ``graph`` (eager copy)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from symbreak.export import rebuild_pet

    eager = rebuild_pet(loaded.path, loaded.module, loaded.metadata)  # the file's PET, eager
    vectors = torch.from_numpy(graph.vectors).float().requires_grad_(True)
    args = [torch.from_numpy(getattr(graph, k)).long() for k in ("species", "centers", "neighbors")]
    reverse = torch.from_numpy(graph.reverse).long()
    with FlopCounterMode(display=False) as counter:
        energy = eager.atomic_energies(*args, vectors, reverse).sum()
        torch.autograd.grad(energy, vectors)
    return float(counter.get_total_flops())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="water-revpbe0d3", help="name, file, or 'random'")
    p.add_argument("--sizes", default="192,1536,12288")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="calls before timing")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from symbreak.evaluator import Evaluator, Structure
    from symbreak.export import load_model

    model = args.model
    if model == "random":
        model = export_random_model(Path(tempfile.mkdtemp()) / "random.pt")
    loaded = load_model(model)
    ev = Evaluator(loaded, dtype=torch.float32, device=args.device)
    d = int(loaded.metadata.config["d_model"])
    square = matmul_gflops(2048, 2048, 2048)
    print(
        f"model {args.model}: {sum(p.numel() for p in loaded.module.parameters())} parameters, "
        f"float32, {args.threads} thread(s), device {args.device}, torch {torch.__version__}"
    )
    print(f"peer: torch.mm 2048x2048x2048 float32: {square:.0f} GFLOP/s\n")
    header = (
        f"{'atoms':>6} {'edges':>7} {'E+F (s)':>9} {'graph (s)':>9} {'ns/day':>7} "
        f"{'us/atom':>8} {'vs first':>8} {'peak GB':>7} "
        f"{'GFLOP':>7} {'GFLOP/s':>8} {'mm same shape':>13} {'vs shape':>8} {'vs square':>9}"
    )
    print(header)
    print("-" * len(header))
    first_per_atom = None
    for n in [int(s) for s in args.sizes.split(",")]:
        s = Structure.from_atoms(water(n))
        graph = ev.graph(s)
        times, graph_times = [], []
        for k in range(args.repeats + args.warmup):
            t0 = time.perf_counter()
            ev.graph(s)
            t1 = time.perf_counter()
            ev.compute(s)
            t2 = time.perf_counter()
            if k >= args.warmup:
                graph_times.append(t1 - t0)
                times.append(t2 - t1)
        t_graph = statistics.median(graph_times)
        t_total = statistics.median(times)  # compute() builds its own graph: total per step
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
        repeat = round((n / 192) ** (1 / 3))
        if n != 1536 and repeat > 1 and 192 * repeat**3 == n:  # frame 0 repeated m³ times
            flops = repeat**3 * model_flops(loaded, ev.graph(Structure.from_atoms(water(192))))
        else:
            flops = model_flops(loaded, graph)
        per_atom = t_total / n
        first_per_atom = first_per_atom or per_atom
        rate = flops / max(t_total - t_graph, 1e-12) / 1e9
        tokens = n + len(graph.centers)
        shaped = matmul_gflops(tokens, d, 3 * d)
        print(
            f"{n:>6} {len(graph.centers):>7} {t_total:>9.4f} {t_graph:>9.4f} "
            f"{ns_per_day(t_total):>7.3f} {1e6 * per_atom:>8.0f} {per_atom / first_per_atom:>8.2f} "
            f"{peak_gb:>7.2f} {flops / 1e9:>7.2f} {rate:>8.1f} {shaped:>13.1f} "
            f"{rate / shaped:>8.2f} {rate / square:>9.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
