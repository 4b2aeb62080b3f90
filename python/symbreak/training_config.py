"""Training hyperparameters (kept free of torch so the CLI starts fast).

:class:`TrainConfig` is what :class:`symbreak.training.Trainer` runs with; the
``symbreak train`` command line that fills it is :mod:`symbreak.training_cli`.
"""

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
    # Weight in the force loss of the atoms within defect_radius Å of a defect O of water
    # (an O nearest to other than two H: OH⁻, H₃O⁺, shared protons; symbreak.analysis.
    # molecules.near_defects), the other atoms 1; the loss is the weighted mean. 1: off.
    defect_weight: float = 1.0
    defect_radius: float = 3.0
    # "bf16": the training steps' matrix products in bfloat16 (torch.autocast on CPU; forces
    # ~10 meV/Å RMS from float32); validation, test metrics and the exported model stay
    # float32. Measured on Zen 4 (AVX-512 BF16): steps 1.38x faster on 1 thread, but epochs
    # slower on 2 threads (34-41 s against 31-32 s): time it before a long run.
    autocast: str = "none"
    # Train with a direct force head (symbreak.direct_forces): no second-order backward
    # pass per step; continue without it (--resume) for conservative fine-tuning. The
    # exported model is always conservative.
    direct_forces: bool = False
    threads: int = 0  # 0: torch's default
    # Where the training steps and validation run: "cpu", "cuda" or "cuda:N". The priors'
    # least-squares fits, the checkpoints and the export stay on the CPU, so a run can move
    # between machines with --resume.
    device: str = "cpu"
    new_schedule: bool = False  # on resume: a fresh warmup + cosine from here to `epochs`
    max_minutes: float = 0.0  # stop (after a checkpoint) when exceeded; 0: no limit
    # Fit the schedule into wall time: the last epoch is set from the time of this run's
    # epochs (re-estimated over its first three), so the cosine decay ends and the model is
    # exported within about this many minutes (e.g. a leased GPU); 0: `epochs` decides.
    schedule_minutes: float = 0.0
    # Gas-phase term (symbreak.gas_phase): each step adds gas_weight x the mean square
    # (eV/Å)² of the learned part's forces on gas_molecules isolated molecules cut from
    # the training frames, displaced by gas_noise Å (Gaussian, per component). 0: off.
    # Measured on water (sitting 7): weight 1 removes the learned part's 0.5 eV bump
    # along the isolated molecule's O–H stretch.
    gas_weight: float = 0.0
    gas_molecules: int = 8
    gas_noise: float = 0.05
    # ... and as many isolated pairs of atoms per step, at distances from the data's
    # shortest (symbreak.short_range) to the cutoff: each dimer curve is left to the pair
    # prior. 0: none.
    gas_dimers: int = 0
    # Short-range guards (symbreak.short_range): floors and pair walls at the training
    # data's shortest distance of each species pair, and the pair prior's fit made
    # non-increasing below the pair_monotone_quantile quantile of the pair's distances, with
    # curvature penalty pair_smoothing (eV²/Å³ per force component). Fresh runs always get
    # them; on resume, guard_short_range refits the priors of the checkpoint's model.
    pair_monotone_quantile: float = 0.01
    pair_smoothing: float = 1e-4
    guard_short_range: bool = False
    model: dict = field(default_factory=dict)  # PETConfig overrides
