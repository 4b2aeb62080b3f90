"""Where a device's time goes: kernels against dispatch, for a served call and a training step.

On a GPU the model is fast only if its kernels are large enough to hide their launch
cost. This script counts, with ``torch.profiler``, the kernels launched and their summed
device time, next to the wall time, for

* one served energy + forces call (:class:`symbreak.evaluator.Evaluator`, the path of every
  engine) of liquid water at each ``--sizes``;
* one training step (``symbreak train``'s: predict, gas-phase term, backward, optimiser,
  EMA) of ``--batch`` frames of the training data, split into its phases.

A wall time far above the device time means the call is bound by dispatch (Python,
TorchScript and launch overhead), not by the device. On the CPU the device time column is
the operators' own CPU time under the profiler (approximate: it can exceed the wall time
measured without it).

Usage: ``python benchmarks/dispatch.py --device cuda [--model water-revpbe0d3]
[--sizes 1536,12288] [--batch 8] [--checkpoint training/water-revpbe0d3/checkpoint.pt]``
(``--checkpoint ''`` skips the training step).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import REPO, WATER_160, water


def profiled(fn, device_type: str) -> dict:
    """Wall seconds, summed kernel (or operator) seconds and kernel count of one ``fn()``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    activities = [ProfilerActivity.CPU]
    if device_type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        fn()
        sync()
    events = prof.key_averages()
    if device_type == "cuda":
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.self_device_time_total for e in kernels) / 1e6
        count = sum(e.count for e in kernels)
    else:
        busy = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::")) / 1e6
        count = sum(e.count for e in events if e.key.startswith("aten::"))
    return {"busy_s": busy, "kernels": count}


def timed(fn, device_type: str, repeats: int) -> float:
    import torch

    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def serve_rows(args, device) -> list[dict]:
    import torch

    from symbreak.evaluator import Evaluator, Structure
    from symbreak.export import load_model

    evaluator = Evaluator(load_model(args.model), dtype=torch.float32, device=device)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        structure = Structure.from_atoms(water(n))

        def call(structure=structure):
            return evaluator.compute(structure)

        for _ in range(2):
            call()
        wall = timed(call, device.type, args.repeats)
        rows.append({"what": f"serve {n} atoms", "wall_s": wall} | profiled(call, device.type))
    return rows


def training_rows(args, device) -> list[dict]:
    """One training step of the checkpoint's model, by phase, then profiled whole."""
    import numpy as np
    import torch

    from symbreak.rotations import random_rotations
    from symbreak.training import Trainer
    from symbreak.training_config import TrainConfig
    from symbreak.training_data import collate, predict

    saved = torch.load(args.checkpoint, weights_only=True, map_location="cpu")["train_config"]
    keep = ("energy_weight_end", "gas_weight", "gas_molecules", "gas_noise", "gas_dimers")
    cfg = TrainConfig(
        data=str(WATER_160),
        workdir=str(Path(args.workdir)),
        batch_size=args.batch,
        device=str(device),
        model=saved["model"],
        **{k: saved[k] for k in keep},
    )
    trainer = Trainer(cfg, progress=False, resuming=True)
    trainer.load_checkpoint(Path(args.checkpoint))
    trainer.place(device)
    rng = np.random.default_rng(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]

    def step(phases: dict | None = None) -> None:
        marks = [time.perf_counter()]

        def mark() -> None:
            sync()
            marks.append(time.perf_counter())

        chunk = [trainer.train[k] for k in rng.choice(len(trainer.train), args.batch, False)]
        batch = collate(chunk, random_rotations(rng, len(chunk))).to(device)
        mark()
        energy, forces = predict(trainer.model, batch, True)
        mark()
        gas = trainer._gas_force_msq(rng) if cfg.gas_weight > 0 else torch.zeros((), device=device)
        mark()
        loss = ((forces - batch.forces) ** 2).mean() + cfg.gas_weight * gas
        loss = (
            loss + cfg.energy_weight_end * (((energy - batch.energy) / batch.n_atoms) ** 2).mean()
        )
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        mark()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        trainer.optimizer.step()
        trainer._update_ema()
        mark()
        if phases is not None:
            names = ("collate", "predict", "gas", "backward", "optimiser+ema")
            for name, t0, t1 in zip(names, marks[:-1], marks[1:], strict=True):
                phases[name] = phases.get(name, 0.0) + (t1 - t0) / args.repeats

    for _ in range(2):
        step()
    phases: dict = {}
    wall = timed(lambda: step(phases), device.type, args.repeats)
    row = {"what": f"train step, batch {args.batch}", "wall_s": wall}
    row |= profiled(step, device.type)
    print("training step phases (s): " + json.dumps({k: round(v, 4) for k, v in phases.items()}))
    return [row]


def main() -> int:
    import torch

    from symbreak.evaluator import resolve_device

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--model", default="water-revpbe0d3", help="served model: name or file")
    p.add_argument("--sizes", default="1536,12288", help="atoms of the served calls")
    p.add_argument("--batch", type=int, default=8, help="frames per training step")
    p.add_argument(
        "--checkpoint",
        default=str(REPO / "training" / "water-revpbe0d3" / "checkpoint.pt"),
        help="training checkpoint whose model takes the step ('' to skip)",
    )
    p.add_argument("--workdir", default="/tmp/symbreak-dispatch", help="the Trainer's workdir")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = p.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, model {args.model}")
    rows = serve_rows(args, device)
    if args.checkpoint:
        rows += training_rows(args, device)
    busy = "kernel s" if device.type == "cuda" else "aten s"
    print(f"\n{'':28} {'wall s':>8} {busy:>9} {'busy/wall':>9} {'launches':>9}")
    for r in rows:
        ratio = r["busy_s"] / r["wall_s"]
        print(
            f"{r['what']:28} {r['wall_s']:8.4f} {r['busy_s']:9.4f} {ratio:9.2f} {r['kernels']:9d}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
