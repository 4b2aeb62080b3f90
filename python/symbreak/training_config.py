"""Training hyperparameters (kept free of torch so the CLI starts fast)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    data: str = ""
    output: str = "model.pt"
    workdir: str = "training"
    seed: int = 0
    n_test: int = 16
    n_val: int = 8
    epochs: int = 200
    batch_size: int = 2  # structures per optimiser step
    lr: float = 2e-3
    lr_min: float = 2e-5
    warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    # (eV/atom)^-2 relative to (eV/Å)^-2 for forces, ramped geometrically from start to end
    # over the first `energy_weight_ramp` of the epochs: a large weight from the start
    # stalls the learning of forces (measured: 300 from the start, forces stuck for 600 steps)
    energy_weight_start: float = 10.0
    energy_weight_end: float = 100.0
    energy_weight_ramp: float = 0.5
    augment: bool = True  # random O(3) rotation per structure per step
    # Keep training the pair prior's spline after its least-squares fit (off: it stays the
    # fit; the PET's spline readout still corrects it per environment). Measured: trained at
    # lr 2e-3, the run diverged at epoch 17 (train force RMSE 0.35 -> 40 eV/Å).
    train_pair: bool = False  # also the three-body prior's coefficients, if it has one
    # On resume: fit the three-body prior (model config "three_body": true) by least
    # squares to the residual of the checkpoint's model before training on.
    fit_three_body: bool = False
    # Skip an optimiser step whose loss exceeds spike_factor x its running mean (0: never).
    spike_factor: float = 20.0
    # Force loss per component: "mse", or "huber" (quadratic below huber_delta eV/Å,
    # linear above: large errors of rare stretched bonds weigh less; the goal is an MAE).
    force_loss: str = "mse"
    huber_delta: float = 0.1
    # "bf16": the training steps' matrix products in bfloat16 (torch.autocast on CPU; forces
    # ~10 meV/Å RMS from float32); validation, test metrics and the exported model stay
    # float32. Measured on Zen 4 (AVX-512 BF16): steps 1.38x faster on 1 thread, but epochs
    # slower on 2 threads (34-41 s against 31-32 s): time it before a long run.
    autocast: str = "none"
    threads: int = 0  # 0: torch's default
    new_schedule: bool = False  # on resume: a fresh warmup + cosine from here to `epochs`
    max_minutes: float = 0.0  # stop (after a checkpoint) when exceeded; 0: no limit
    # Gas-phase term (symbreak.gas_phase): each step adds gas_weight x the mean square
    # (eV/Å)² of the learned part's forces on gas_molecules isolated molecules cut from
    # the training frames, displaced by gas_noise Å (Gaussian, per component). 0: off.
    # Measured on water (sitting 7): weight 1 removes the learned part's 0.5 eV bump
    # along the isolated molecule's O–H stretch.
    gas_weight: float = 0.0
    gas_molecules: int = 8
    gas_noise: float = 0.05
    model: dict = field(default_factory=dict)  # PETConfig overrides


_HELP = {
    "gas_weight": "weight of the gas-phase term: the mean square (eV/Å)^2 of the learned "
    "part's forces on isolated molecules cut from the training frames (0: off)",
    "gas_molecules": "isolated molecules per optimiser step for the gas-phase term",
    "gas_noise": "Gaussian displacement (Å per component) of those molecules' atoms",
}


def register(subparsers) -> None:
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
        "threads", "max_minutes", "huber_delta", "spike_factor", "gas_weight",
        "gas_molecules", "gas_noise",
    ):  # fmt: skip
        value = getattr(defaults, name)
        p.add_argument(
            f"--{name.replace('_', '-')}", type=type(value), default=value, help=_HELP.get(name)
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
        "--model-config", default="{}", help="JSON PETConfig overrides, e.g. '{\"d_model\": 64}'"
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


def _main(args) -> int:
    import json

    from .training import Trainer

    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    if args.new_schedule and not args.resume:
        raise SystemExit("--new-schedule continues a run: use it with --resume")
    if args.fit_three_body and not args.resume:
        raise SystemExit("--fit-three-body refits a trained model: use it with --resume")
    cfg = TrainConfig(**fields, augment=not args.no_augment, model=json.loads(args.model_config))
    trainer = Trainer(cfg, progress=not args.quiet)
    if args.resume:
        trainer.load_checkpoint()
    trainer.fit()
    return 0
