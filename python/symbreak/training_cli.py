"""``symbreak train``: the command line of :class:`symbreak.training.Trainer`.

Every field of :class:`symbreak.training_config.TrainConfig` is an option
(``--energy-weight-start`` for ``energy_weight_start``); torch is imported only when a
run starts, so that ``symbreak --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from . import exit_codes
from .training_config import TrainConfig

_HELP = {
    "gas_weight": "weight of the gas-phase term: the mean square (eV/Å)^2 of the learned "
    "part's forces on isolated molecules cut from the training frames (0: off)",
    "gas_molecules": "isolated molecules per optimiser step for the gas-phase term",
    "gas_noise": "Gaussian displacement (Å per component) of those molecules' atoms",
    "gas_dimers": "isolated pairs of atoms per step for the gas-phase term (between the "
    "data's shortest distance of the pair and the cutoff)",
    "pair_monotone_quantile": "the pair prior is fitted non-increasing below this quantile "
    "of each species pair's distances in the data",
    "schedule_minutes": "set the last epoch from the measured epoch time so that the "
    "schedule ends and the model is exported within this many minutes (0: --epochs)",
    "defect_weight": "weight in the force loss of the atoms within --defect-radius Å of a "
    "defect O of water (an O nearest to other than two H), the other atoms 1 (1: off)",
    "defect_radius": "radius (Å) around a defect O for --defect-weight",
    "pair_smoothing": "curvature penalty of the pair prior's fit (eV^2/Å^3 per force component)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``symbreak train`` to the CLI (see :mod:`symbreak.cli`)."""
    p = subparsers.add_parser(
        "train",
        help="train a PET model on an extended XYZ file with energies and forces",
        description="Train a PET model; writes the exported model, a metrics JSON, and "
        "checkpoints (resume with --resume).",
    )
    defaults = TrainConfig()
    p.add_argument("--data", required=True, help="extended XYZ with energies and forces")
    p.add_argument("--output", default=defaults.output, help="exported model file")
    p.add_argument("--workdir", default=defaults.workdir, help="checkpoints and history")
    for name in (
        "seed", "n_test", "n_val", "epochs", "batch_size", "lr", "lr_min", "warmup_steps",
        "ema_decay", "energy_weight_start", "energy_weight_end", "energy_weight_ramp",
        "threads", "max_minutes", "schedule_minutes", "huber_delta", "spike_factor", "gas_weight",
        "gas_molecules", "gas_noise", "gas_dimers", "pair_monotone_quantile",
        "pair_smoothing", "defect_weight", "defect_radius",
    ):  # fmt: skip
        value = getattr(defaults, name)
        p.add_argument(
            f"--{name.replace('_', '-')}", type=type(value), default=value, help=_HELP.get(name)
        )
    p.add_argument(
        "--device",
        default=defaults.device,
        help="where the training steps run: cpu (default), cuda or cuda:N (the fits, "
        "checkpoints and export stay on the CPU)",
    )
    p.add_argument("--no-augment", action="store_true", help="train without random rotations")
    p.add_argument(
        "--train-pair",
        action="store_true",
        help="keep training the pair prior after its least-squares fit (default: frozen)",
    )
    p.add_argument(
        "--fit-three-body",
        action="store_true",
        help='with --resume: fit the three-body prior (--model-config \'{"three_body": '
        "true}') to the residual of the checkpoint's model, then continue",
    )
    p.add_argument(
        "--guard-short-range",
        action="store_true",
        help="with --resume: set the short-range floors and walls from the data and refit "
        "the priors of the checkpoint's model to them (symbreak.short_range), then continue",
    )
    p.add_argument(
        "--force-loss",
        choices=["mse", "huber"],
        default=defaults.force_loss,
        help="loss per force component (huber: linear beyond --huber-delta eV/Å)",
    )
    p.add_argument(
        "--autocast",
        choices=["none", "bf16"],
        default=defaults.autocast,
        help="bf16: training steps with bfloat16 matrix products (faster on CPUs with "
        "AVX-512 BF16 or AMX; metrics and the exported model stay float32)",
    )
    p.add_argument(
        "--direct-forces",
        action="store_true",
        help="train with a direct force head read from the last edge messages (cheaper "
        "steps; training only): resume without it for conservative fine-tuning",
    )
    p.add_argument(
        "--model-config",
        default="{}",
        help="JSON PETConfig overrides, e.g. '{\"d_model\": 64}'; with --resume, a larger "
        "d_ff, n_transformer_layers or n_mp_layers grows the checkpoint's model without "
        "changing its energies or forces (symbreak.growth), with a fresh optimiser",
    )
    p.add_argument("--resume", action="store_true", help="continue from workdir/checkpoint.pt")
    p.add_argument(
        "--new-schedule",
        action="store_true",
        help="with --resume: start a fresh warmup + cosine schedule (peak --lr) at the "
        "checkpoint's epoch, ending at --epochs (weights, optimiser and history are kept)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    problem = None
    if args.new_schedule and not args.resume:
        problem = "--new-schedule continues a run: use it with --resume"
    if args.fit_three_body and not args.resume:
        problem = "--fit-three-body refits a trained model: use it with --resume"
    if args.guard_short_range and not args.resume:
        problem = "--guard-short-range refits a trained model: use it with --resume"
    for name in ("defect_weight", "defect_radius"):
        if not (getattr(args, name) > 0 and math.isfinite(getattr(args, name))):
            problem = f"--{name.replace('_', '-')} {getattr(args, name)}: must be finite and > 0"
    for name in ("max_minutes", "schedule_minutes"):
        if getattr(args, name) < 0:
            problem = f"--{name.replace('_', '-')} {getattr(args, name)}: minutes must be >= 0"
    try:
        model = json.loads(args.model_config)
    except json.JSONDecodeError as err:
        problem = f"--model-config is not JSON: {err}"
    if problem:
        print(f"symbreak train: {problem}", file=sys.stderr)
        return exit_codes.USAGE

    from .evaluator import resolve_device  # torch: only once the options are known to be fine
    from .training import Trainer

    try:
        resolve_device(args.device)
    except ValueError as err:
        print(f"symbreak train: --device: {err}", file=sys.stderr)
        return exit_codes.USAGE

    cfg = TrainConfig(**fields, augment=not args.no_augment, model=model)
    trainer = Trainer(cfg, progress=not args.quiet, resuming=args.resume)
    if args.resume:
        trainer.load_checkpoint()
    trainer.fit()
    return exit_codes.OK
