"""Training a PET model on energies and forces (extended XYZ read with ASE).

Recipe (the study's, sized for a CPU): a fresh random O(3) rotation per structure per
step (half improper; switchable off), forces from the gradient of the energy (the
loss differentiates through it), per-species energy baseline from a composition
regression, energy weight ramped up over the first part of training, Adam with warm-up
and cosine decay, an exponential moving average (EMA) of the weights that is what gets
validated and exported. Checkpoints after every epoch; ``resume`` continues exactly (the
randomness of epoch e is drawn from (seed, e)), so training can span several sittings.

The data and batches are :mod:`symbreak.training_data`, the priors' least-squares fits
:mod:`symbreak.prior_fits`; this module is the loop, its schedule and its checkpoints.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .analysis.molecules import WATER_FRAME_CLASSES
from .direct_forces import DirectForceHead
from .evaluator import resolve_device
from .gas_phase import cut_molecules, dimer_graphs, distorted_graphs, learned_force_msq
from .growth import grow_state
from .model import OPTIONAL_BUFFERS, PET, PETConfig, count_parameters
from .pair import fit_pair_prior
from .prior_fits import fit_three_body_to_residual, guard_short_range, set_short_range
from .rotations import random_rotations
from .short_range import short_range_bounds
from .training_config import TrainConfig
from .training_data import (
    Sample,
    collate,
    composition_baseline,
    evaluate,
    file_fingerprint,
    make_samples,
    predict,
    read_labelled,
    split_indices,
)


def _on_cpu(tree):
    """``tree`` (nested dicts, lists, tuples of tensors and plain values) with CPU tensors."""
    if isinstance(tree, torch.Tensor):
        return tree.cpu()
    if isinstance(tree, dict):
        return {k: _on_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_on_cpu(v) for v in tree)
    return tree


def force_loss(
    forces: torch.Tensor,
    reference: torch.Tensor,
    weight: torch.Tensor,
    kind: str = "mse",
    huber_delta: float = 0.1,
) -> torch.Tensor:
    """The force loss: per component the squared error ("mse") or twice the Huber loss
    ("huber": the same below ``huber_delta`` eV/Å, linear above), averaged over atoms with
    the per-atom ``weight`` [N] (all 1: the plain mean). forces, reference [N, 3] eV/Å."""
    if kind == "huber":
        per = 2.0 * torch.nn.functional.huber_loss(
            forces, reference, reduction="none", delta=huber_delta
        )
    else:
        per = (forces - reference) ** 2
    w = weight[:, None].to(per.dtype)
    return (per * w).sum() / (per.shape[1] * w.sum())


def by_kind(record: dict) -> str:
    """`` (intact 62.9, ions 56.1, H2 204.7)``: the validation force MAE (meV/Å) per
    chemistry of water frames, when the validation frames hold more than one."""
    parts = [
        f"{kind} {record[key]:.1f}"
        for kind in WATER_FRAME_CLASSES
        if (key := f"val_{kind}_force_mae_meV_A") in record
    ]
    return f" ({', '.join(parts)})" if len(parts) > 1 else ""


class Trainer:
    """Owns the model, optimiser, EMA, data and history; checkpoints to ``workdir``."""

    def __init__(self, cfg: TrainConfig, progress: bool = True, resuming: bool = False):
        """``resuming``: a checkpoint will be loaded (:meth:`load_checkpoint`), which holds
        the priors, baseline and scale: their least-squares fits are skipped here."""
        self.cfg = cfg
        self.progress = progress
        # The steps' device, refused here if unusable; the model is built, fitted, loaded
        # and exported on the CPU and moved there only for the steps (:meth:`fit`).
        self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        for name in ("defect_weight", "defect_radius"):
            value = getattr(cfg, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} {value}: must be a finite number > 0")
        frames = read_labelled(cfg.data)
        species = sorted({int(z) for a in frames for z in a.numbers})
        self.model_cfg = PETConfig(species=species, **cfg.model)
        samples = make_samples(
            frames, species, self.model_cfg.cutoff, cfg.defect_weight, cfg.defect_radius
        )
        self.split = split_indices(len(samples), cfg.n_test, cfg.n_val, cfg.seed)
        self.train = [samples[k] for k in self.split["train"]]
        self.val = [samples[k] for k in self.split["val"]]
        self.test = [samples[k] for k in self.split["test"]]
        if cfg.defect_weight != 1.0 and not any((s.force_weight != 1.0).any() for s in self.train):
            raise ValueError(
                f"{cfg.data}: --defect-weight {cfg.defect_weight}: no training frame has an "
                f"atom within {cfg.defect_radius} Å of a defect O of water (an O nearest to "
                "other than two H)"
            )
        self.gas_molecules = []
        if cfg.gas_weight > 0:
            self.gas_molecules = cut_molecules([frames[k] for k in self.split["train"]])
            if not self.gas_molecules:
                raise ValueError(
                    f"{cfg.data}: --gas-weight needs molecules, but no training frame has a "
                    "covalently bonded group of at most 12 atoms"
                )
        self.model = PET(self.model_cfg)
        forces = np.concatenate([s.forces for s in self.train])
        force_rms = float(np.sqrt((forces**2).mean()))
        shortest, monotone = short_range_bounds(
            [s.graph for s in self.train], len(species), cfg.pair_monotone_quantile
        )
        set_short_range(self.model, shortest)
        if resuming:
            baseline = np.zeros(len(species))
            self.pair_fit = {}
        elif self.model.use_pair:
            # The prior takes the radial part; the PET's output scale is what remains.
            baseline, stats = fit_pair_prior(
                self.model.pair,
                self.train,
                len(species),
                monotone_below=monotone,
                smoothing=cfg.pair_smoothing,
            )
            self.pair_fit = stats | {"force_rms": force_rms}
            force_rms = stats["force_rmse"]
        else:
            baseline = composition_baseline(self.train, len(species))
            self.pair_fit = {}
        self.model.baseline.copy_(torch.from_numpy(baseline))
        self.three_body_fit: dict = {}
        self.short_range_fit: dict = {}
        if self.model.use_three_body and not resuming:
            # The readouts start at zero: the residual is that of baseline + pair prior.
            self.three_body_fit = fit_three_body_to_residual(self.model, self.train)
            force_rms = self.three_body_fit["force_rmse"]
        self.model.energy_scale.fill_(force_rms)
        if not cfg.train_pair:
            self.model.pair.coefficients.requires_grad_(False)
            self.model.three_body.coefficients.requires_grad_(False)
        self.ema = copy.deepcopy(self.model)
        # The direct force head has its own optimiser: a checkpoint made with or without
        # it resumes either way.
        self.direct_head: DirectForceHead | None = None
        if cfg.direct_forces:
            self.direct_head = DirectForceHead(self.model_cfg.d_model)
        self._make_optimizers()
        self.epoch = 0
        self.step = 0
        self.loss_mean: float | None = None  # running mean of the loss, for the spike guard
        self.skipped = 0  # optimiser steps skipped as spikes
        # (step, epoch) where the current warmup + cosine schedule began: (0, 0) unless a
        # resumed run asked for a new schedule (``--new-schedule``).
        self.schedule_start = (0, 0)
        self.history: list[dict] = []
        self.fingerprint = file_fingerprint(cfg.data)
        self.workdir = Path(cfg.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def _make_optimizers(self) -> None:
        cfg = self.cfg
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.direct_optimizer: torch.optim.Optimizer | None = None
        if self.direct_head is not None:
            self.direct_optimizer = torch.optim.AdamW(
                self.direct_head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
            )

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.optimizer, self.direct_optimizer) if o is not None]

    def place(self, device: torch.device) -> None:
        """Move the model, EMA, direct head and optimiser moments to ``device``."""
        if self.model.baseline.device == device:
            return
        states = [o.state_dict() for o in self._optimizers()]
        for module in (self.model, self.ema, self.direct_head):
            if module is not None:
                module.to(device)
        # New optimisers over the moved parameters; loading casts the moments to them.
        self._make_optimizers()
        for optimizer, state in zip(self._optimizers(), states, strict=True):
            optimizer.load_state_dict(state)

    # -- schedule ----------------------------------------------------------------------

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train) / self.cfg.batch_size)

    def learning_rate(self, step: int) -> float:
        cfg = self.cfg
        start_step, start_epoch = self.schedule_start
        step -= start_step
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        total = max((cfg.epochs - start_epoch) * self.steps_per_epoch - cfg.warmup_steps, 1)
        t = min((step - cfg.warmup_steps) / total, 1.0)
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * t))

    def energy_weight(self, epoch: int) -> float:
        cfg = self.cfg
        t = min(epoch / max(cfg.energy_weight_ramp * cfg.epochs, 1), 1.0)
        return cfg.energy_weight_start * (cfg.energy_weight_end / cfg.energy_weight_start) ** t

    # -- one epoch ---------------------------------------------------------------------

    def run_epoch(self) -> dict:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.epoch])
        order = rng.permutation(len(self.train))
        w_energy = self.energy_weight(self.epoch)
        self.model.train()
        sums = {"loss": 0.0, "force_mse": 0.0, "energy_mse": 0.0, "gas_force_msq": 0.0}
        bar = tqdm(
            range(0, len(order), cfg.batch_size),
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            disable=not self.progress,
            leave=False,
        )
        for start in bar:
            chunk = [self.train[k] for k in order[start : start + cfg.batch_size]]
            rot = random_rotations(rng, len(chunk)) if cfg.augment else None
            batch = collate(chunk, rot).to(self.device)
            bf16 = cfg.autocast == "bf16"
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                energy, forces = predict(self.model, batch, True, head=self.direct_head)
                gas = self._gas_force_msq(rng) if cfg.gas_weight > 0 else torch.zeros(())
            forces = forces.float()  # the losses in float32 either way
            force_mse = ((forces - batch.forces) ** 2).mean()
            energy_mse = (((energy - batch.energy) / batch.n_atoms) ** 2).mean()
            f_loss = force_loss(
                forces, batch.forces, batch.force_weight, cfg.force_loss, cfg.huber_delta
            )
            data_loss = f_loss + w_energy * energy_mse
            loss = data_loss + cfg.gas_weight * gas.float()
            optimizers = self._optimizers()
            for optimizer in optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = self.learning_rate(self.step)
                optimizer.zero_grad(set_to_none=True)
            value, f_mse, e_mse = loss.item(), force_mse.item(), energy_mse.item()
            # The guard watches the data loss only: the gas term of a run resumed with it
            # starts large by design (the learned part's untrained gas-phase forces).
            data_value = data_loss.item()
            mean = self.loss_mean
            if cfg.spike_factor > 0 and mean is not None and data_value > cfg.spike_factor * mean:
                self.skipped += 1  # one huge gradient step can wreck a run: skip it, log it
            else:
                loss.backward()
                params = [p for o in optimizers for g in o.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, 10.0)
                for optimizer in optimizers:
                    optimizer.step()
                self._update_ema()
                self.loss_mean = data_value if mean is None else 0.98 * mean + 0.02 * data_value
            self.step += 1
            sums["loss"] += value
            sums["gas_force_msq"] += gas.item()
            sums["force_mse"] += f_mse
            sums["energy_mse"] += e_mse
            bar.set_postfix(
                F_rmse=f"{1e3 * f_mse**0.5:.0f}meV/A", E_rmse=f"{1e3 * e_mse**0.5:.1f}meV/at"
            )
        n = len(bar)
        self.epoch += 1
        return {k: v / n for k, v in sums.items()} | {
            "energy_weight": w_energy,
            "skipped_steps": self.skipped,
        }

    def _gas_force_msq(self, rng: np.random.Generator) -> torch.Tensor:
        """The gas-phase term before its weight: learned-part forces² on isolated molecules
        (drawn from the epoch's generator, so a resumed run draws the same ones)."""
        cfg, mc = self.cfg, self.model_cfg
        graphs = distorted_graphs(
            self.gas_molecules, rng, cfg.gas_molecules, cfg.gas_noise, mc.cutoff, mc.species
        )
        if cfg.gas_dimers:
            floor = self.model.short_range.floor.cpu().numpy()
            graphs += dimer_graphs(rng, cfg.gas_dimers, floor, mc.cutoff, mc.species)
        b = collate([Sample(g, 0.0, np.zeros((g.n_atoms, 3))) for g in graphs], None)
        b = b.to(self.device)
        return learned_force_msq(
            self.model, b.species, b.centers, b.neighbors, b.vectors, b.reverse
        )

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = self.cfg.ema_decay
        # Early on, follow the model closely (bias correction as in Adam).
        d = min(d, (1 + self.step) / (10 + self.step))
        for p_ema, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            p_ema.mul_(d).add_(p.detach(), alpha=1 - d)

    def refit_offset(self) -> None:
        """Re-fit the per-species baseline of the EMA model to its training residuals
        (the energy error of a force-dominated loss is mostly an offset per atom)."""
        n_species = len(self.model_cfg.species)
        counts, residuals = [], []
        for start in range(0, len(self.train), 4):
            chunk = self.train[start : start + 4]
            batch = collate(chunk, None)
            with torch.no_grad():
                eps = self.ema.atomic_energies(
                    batch.species, batch.centers, batch.neighbors, batch.vectors, batch.reverse
                )
                eps = eps.double() + self.ema.baseline_energies(batch.species)
                energy = torch.zeros(len(chunk), dtype=eps.dtype).index_add(0, batch.structure, eps)
            residuals.append((batch.energy - energy.double()).numpy())
            counts += [np.bincount(s.graph.species, minlength=n_species) for s in chunk]
        shift = np.linalg.lstsq(np.array(counts, float), np.concatenate(residuals), rcond=None)[0]
        self.ema.baseline.add_(torch.from_numpy(shift))

    # -- checkpoints -------------------------------------------------------------------

    def checkpoint_path(self) -> Path:
        return self.workdir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        """Everything to continue, as CPU tensors whatever the device."""
        state = {
            "train_config": asdict(self.cfg),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "schedule_start": list(self.schedule_start),
            "torch_rng": torch.get_rng_state(),
            "loss_mean": self.loss_mean,
            "skipped": self.skipped,
        }
        if self.direct_head is not None and self.direct_optimizer is not None:
            state["direct_head"] = self.direct_head.state_dict()
            state["direct_optimizer"] = self.direct_optimizer.state_dict()
        tmp = self.checkpoint_path().with_suffix(".tmp")
        torch.save(_on_cpu(state), tmp)
        tmp.replace(self.checkpoint_path())  # atomic: an interrupted save keeps the old one

    def load_checkpoint(self, path: Path | None = None) -> None:
        path = Path(path or self.checkpoint_path())
        try:
            # Tensors and plain containers only: a pickled object could run code on load.
            state = torch.load(path, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(
                f"checkpoint {path} holds more than tensors and plain containers, so it is "
                f"not loaded (unpickling it could run code): {first}"
            ) from None
        grown = False
        for module, key in ((self.model, "model"), (self.ema, "ema")):
            entries = dict(state[key])
            own = module.state_dict()
            if entries.get("three_body.coefficients", torch.zeros(0)).numel() and not (
                module.use_three_body
            ):
                raise ValueError(
                    f"checkpoint {path} has a three-body prior: "
                    """resume with --model-config '{"three_body": true, ...}'"""
                )
            # A checkpoint made without the three-body prior lacks its entries (or has
            # empty ones): they keep this model's (zeros, or the fit of a fresh start).
            for name in [k for k in entries if k.startswith("three_body.")]:
                if name in own and entries[name].shape != own[name].shape:
                    del entries[name]
            # Priors on another grid (e.g. a longer cutoff with the transformer's kept by
            # "learned_cutoff"): refitted by the guards below, so not loaded.
            pair, refitted = "pair.coefficients", []
            if pair in entries and entries[pair].shape != own[pair].shape:
                if not self.cfg.guard_short_range:
                    raise ValueError(
                        f"checkpoint {path} has a pair prior of {entries[pair].shape[1]} "
                        f"basis functions, this configuration {own[pair].shape[1]} (another "
                        "cutoff): add --guard-short-range to refit the priors"
                    )
                del entries[pair]
                refitted.append(pair)
            grown |= grow_state(entries, own)
            result = module.load_state_dict(entries, strict=False)
            missing = [
                k
                for k in result.missing_keys
                if not k.startswith("three_body.") and k not in (*OPTIONAL_BUFFERS, *refitted)
            ]
            unexpected = result.unexpected_keys
            if missing or unexpected:
                raise ValueError(
                    f"checkpoint {path} does not match the model "
                    f"configuration: missing {missing}, unexpected {unexpected}"
                )
        if not grown:  # else a fresh optimiser: its moments have the old shapes
            self.optimizer.load_state_dict(state["optimizer"])
        if self.direct_head is not None and "direct_head" in state:
            self.direct_head.load_state_dict(state["direct_head"])
            self.direct_optimizer.load_state_dict(state["direct_optimizer"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history = state["history"]
        self.schedule_start = tuple(state.get("schedule_start", (0, 0)))
        self.loss_mean, self.skipped = state.get("loss_mean"), state.get("skipped", 0)
        if self.cfg.new_schedule:  # continue the weights under a fresh warmup + cosine
            self.schedule_start = (self.step, self.epoch)
        torch.set_rng_state(state["torch_rng"])
        if self.cfg.fit_three_body:
            self.refit_three_body()
        if self.cfg.guard_short_range:
            self.guard_short_range()

    def guard_short_range(self) -> None:
        """Short-range guards for the EMA model (:func:`guard_short_range`), its priors and
        baseline then given to the model that trains on."""
        cfg = self.cfg
        self.short_range_fit = guard_short_range(
            self.ema, self.train, cfg.pair_smoothing, cfg.pair_monotone_quantile
        )
        own = self.ema.state_dict()
        names = [k for k in own if k.startswith(("pair.", "three_body.", "short_range."))]
        with torch.no_grad():
            for name in [*names, "baseline"]:
                self.model.state_dict()[name].copy_(own[name])
        fit = self.short_range_fit["pair_fit"]
        print(
            f"short-range guards set; pair prior refitted: train force MAE of the pair fit "
            f"{1e3 * fit['force_mae']:.1f} meV/Å",
            flush=True,
        )

    def refit_three_body(self) -> None:
        """Fit the three-body prior to the residual of the EMA model (the one that is
        validated and exported) and give the model the same coefficients."""
        if not self.model.use_three_body:
            raise ValueError('fitting the three-body prior needs model config "three_body": true')
        self.three_body_fit = fit_three_body_to_residual(self.ema, self.train)
        with torch.no_grad():
            self.model.three_body.coefficients.copy_(self.ema.three_body.coefficients)
            self.model.baseline.copy_(self.ema.baseline)
        fit = self.three_body_fit
        print(
            f"three-body prior fitted to the residual: train force MAE "
            f"{1e3 * fit['force_mae_before']:.1f} -> {1e3 * fit['force_mae']:.1f} meV/Å",
            flush=True,
        )

    # -- the whole run -----------------------------------------------------------------

    def fit(self) -> dict:
        cfg = self.cfg
        t0 = time.monotonic()
        print(
            f"PET: {count_parameters(self.model)} parameters; {len(self.train)} train / "
            f"{len(self.val)} val / {len(self.test)} test frames; starting at epoch {self.epoch}"
            f" on {self.device}",
            flush=True,
        )
        self.place(self.device)
        first_epoch = self.epoch
        while self.epoch < cfg.epochs:
            t_epoch = time.monotonic()
            record = self.run_epoch()
            record.update({f"val_{k}": v for k, v in evaluate(self.ema, self.val).items()})
            if self.direct_head is not None:
                direct = evaluate(self.model, self.val, head=self.direct_head)
                record["val_direct_force_mae_meV_A"] = direct["force_mae_meV_A"]
            record.update(epoch=self.epoch, step=self.step, seconds=time.monotonic() - t_epoch)
            record["lr"] = self.learning_rate(self.step)
            self.history.append(record)
            self.save_checkpoint()
            with open(self.workdir / "history.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            print(
                f"epoch {self.epoch:4d}  train F rmse {1e3 * record['force_mse'] ** 0.5:6.1f}  "
                f"val F mae {record['val_force_mae_meV_A']:6.1f} meV/Å{by_kind(record)}  "
                f"val E mae {record['val_energy_mae_meV_atom']:6.2f} meV/atom  "
                f"lr {record['lr']:.1e}  {record['seconds']:.0f}s"
                + (
                    f"  val direct F mae {record['val_direct_force_mae_meV_A']:.1f} meV/Å"
                    if self.direct_head is not None
                    else ""
                )
                + (
                    f"  gas learned F rms {1e3 * record['gas_force_msq'] ** 0.5:.0f} meV/Å"
                    if cfg.gas_weight > 0
                    else ""
                ),
                flush=True,
            )
            if cfg.schedule_minutes and self.epoch - first_epoch <= 3:
                self._fit_schedule(t0, record["seconds"])
            if cfg.max_minutes and (time.monotonic() - t0) / 60 > cfg.max_minutes:
                print(f"stopping after {cfg.max_minutes} minutes; resume to continue", flush=True)
                return {}
        return self.finish()

    def _fit_schedule(self, t0: float, epoch_seconds: float) -> None:
        """Set the last epoch so that the remaining epochs, at ``epoch_seconds`` each, end
        within ``schedule_minutes`` of ``t0`` (at least one more epoch is never promised)."""
        left = self.cfg.schedule_minutes * 60 - (time.monotonic() - t0)
        self.cfg.epochs = self.epoch + max(int(left // epoch_seconds), 0)
        print(
            f"schedule fitted to {self.cfg.schedule_minutes} min: {epoch_seconds:.1f} s per "
            f"epoch, last epoch {self.cfg.epochs}",
            flush=True,
        )

    def finish(self) -> dict:
        """Refit the offset, measure on the test frames, export the EMA model."""
        from .export import export_model

        self.place(torch.device("cpu"))
        self.save_checkpoint()  # holds a three-body fit made at resume even with no epochs
        self.refit_offset()
        metrics = {
            "val": evaluate(self.ema, self.val),
            "test": evaluate(self.ema, self.test),
            "train": evaluate(self.ema, self.train[:32]),
        }
        training = {
            "data": Path(self.cfg.data).name,
            "data_sha256": self.fingerprint,
            "split": self.split,
            "epochs": self.epoch,
            "steps": self.step,
            "augment": self.cfg.augment,
            "autocast": self.cfg.autocast,
            "seed": self.cfg.seed,
            "parameters": count_parameters(self.model),
            "metrics": metrics,
        }
        if self.three_body_fit:
            training["three_body_fit"] = self.three_body_fit
        if self.short_range_fit:
            training["short_range_fit"] = self.short_range_fit
        export_model(self.ema, self.cfg.output, self.model_cfg.to_dict(), training)
        out_json = Path(self.cfg.output).with_suffix(".metrics.json")
        out_json.write_text(json.dumps(training | {"history": self.history}, indent=1))
        print(json.dumps(metrics, indent=1))
        return training
