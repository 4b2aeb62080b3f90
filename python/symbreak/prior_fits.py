"""Least-squares fits of a trained model's invariant priors (:mod:`symbreak.pair`,
:mod:`symbreak.threebody`) to what the rest of the model misses, and the short-range
guards (:mod:`symbreak.short_range`) set from the data's shortest contacts.

Used at the start of training and when a resumed run refits its priors
(``symbreak train --resume --fit-three-body | --guard-short-range``).
"""

from __future__ import annotations

import numpy as np
import torch

from .model import PET
from .pair import fit_pair_prior
from .short_range import short_range_bounds
from .threebody import fit_three_body
from .training_data import Sample, collate, predict


def residual_targets(model: PET, samples: list[Sample]) -> list[tuple[float, np.ndarray]]:
    """What ``model`` misses on each sample: energy (eV) and forces [N, 3] (eV/Å)."""
    targets = []
    for sample in samples:
        energy, force = predict(model, collate([sample], None), create_graph=False)
        targets.append(
            (
                sample.energy - float(energy[0].detach()),
                sample.forces - force.detach().double().numpy(),
            )
        )
    return targets


def fit_three_body_to_residual(model: PET, samples: list[Sample], ridge: float = 1e-3) -> dict:
    """Fit ``model.three_body`` and a shift of the per-species baseline by least squares
    to what the rest of the model (term set to zero first) misses on ``samples``; returns
    the fit's force errors (eV/Å)."""
    with torch.no_grad():
        model.three_body.coefficients.zero_()
    energies, forces = zip(*residual_targets(model, samples), strict=True)
    shift, stats = fit_three_body(
        model.three_body,
        [s.graph for s in samples],
        list(energies),
        list(forces),
        len(model.species),
        ridge=ridge,
    )
    with torch.no_grad():
        model.baseline.add_(torch.from_numpy(shift))
    return stats


def set_short_range(model: PET, shortest: np.ndarray) -> None:
    """Floors and pair walls of ``model`` at the distances ``shortest`` [S, S] (Å)."""
    with torch.no_grad():
        model.short_range.floor.copy_(torch.from_numpy(shortest))
        model.pair.set_walls(torch.from_numpy(shortest))


def guard_short_range(
    model: PET, samples: list[Sample], smoothing: float, monotone_quantile: float
) -> dict:
    """Make a trained ``model`` physical below its data (:mod:`symbreak.short_range`):
    floors and pair walls at the shortest distance of each species pair in ``samples``,
    the pair prior refitted to what the rest of the model misses (non-increasing below the
    ``monotone_quantile`` quantile of each pair's distances, curvature penalty
    ``smoothing``), then the three-body prior (if any) refitted to the new residual.
    Returns the distances used (Å) and the fits' train force errors (eV/Å)."""
    shortest, monotone = short_range_bounds(
        [s.graph for s in samples], len(model.species), monotone_quantile
    )
    set_short_range(model, shortest)
    with torch.no_grad():
        model.pair.coefficients.zero_()
        model.baseline.zero_()
    targets = residual_targets(model, samples)  # learned part and three-body prior only
    baseline, pair_fit = fit_pair_prior(
        model.pair,
        samples,
        len(model.species),
        monotone_below=monotone,
        smoothing=smoothing,
        targets=targets,
    )
    with torch.no_grad():
        model.baseline.copy_(torch.from_numpy(baseline))
    report = {
        "shortest_A": shortest.tolist(),
        "monotone_below_A": monotone.tolist(),
        "pair_fit": pair_fit,
    }
    if model.use_three_body:
        report["three_body_fit"] = fit_three_body_to_residual(model, samples)
    return report
