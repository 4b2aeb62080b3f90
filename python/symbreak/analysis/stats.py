"""Error bars: block averaging, and linear fits with block-jackknife errors.

Time series from MD are correlated; the standard error of a mean is estimated from the
scatter of means over ``n_blocks`` contiguous blocks (Flyvbjerg–Petersen): valid when a
block is much longer than the correlation time, which :func:`block_sem_curve` lets one
check (the error must plateau as blocks grow).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _blocks(x: np.ndarray, n_blocks: int) -> np.ndarray:
    """Reshape x (T, ...) into (n_blocks, T // n_blocks, ...), dropping the last
    T mod n_blocks samples."""
    x = np.asarray(x, dtype=np.float64)
    if n_blocks < 2:
        raise ValueError(f"need at least 2 blocks, got {n_blocks}")
    b = x.shape[0] // n_blocks
    if b < 1:
        raise ValueError(f"{x.shape[0]} samples cannot fill {n_blocks} blocks")
    return x[: b * n_blocks].reshape((n_blocks, b) + x.shape[1:])


def block_average(x, n_blocks: int = 10) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Mean and standard error of the mean of x (T, ...) along axis 0 from ``n_blocks``
    contiguous blocks: sem = std(block means, ddof=1) / sqrt(n_blocks).

    Samples beyond the last full block are dropped. Returns floats for 1D input, arrays
    of shape x.shape[1:] otherwise. Units: those of x.
    """
    means = _blocks(x, n_blocks).mean(axis=1)
    mean = means.mean(axis=0)
    sem = means.std(axis=0, ddof=1) / np.sqrt(n_blocks)
    if np.ndim(mean) == 0:
        return float(mean), float(sem)
    return mean, sem


def block_sem_curve(x, min_blocks: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Standard error of the mean of a 1D series against block length (powers of two,
    up to T // min_blocks): (block lengths (K,), sem (K,)). A plateau means the blocks
    are longer than the correlation time."""
    x = np.asarray(x, dtype=np.float64).ravel()
    lengths, sems = [], []
    b = 1
    while x.size // b >= min_blocks:
        n = x.size // b
        means = x[: n * b].reshape(n, b).mean(axis=1)
        lengths.append(b)
        sems.append(means.std(ddof=1) / np.sqrt(n))
        b *= 2
    return np.asarray(lengths), np.asarray(sems)


@dataclass
class LinearFit:
    """y = slope · x + intercept, with standard errors; ``method`` says how they were
    estimated ("ols": ordinary least squares, residuals assumed independent;
    "jackknife-N": delete-one-block jackknife over N contiguous blocks, which accounts
    for correlated residuals)."""

    slope: float
    slope_err: float
    intercept: float
    intercept_err: float
    method: str
    n_points: int

    def to_dict(self) -> dict:
        return asdict(self)


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    xm = x.mean()
    sxx = np.sum((x - xm) ** 2)
    if sxx == 0:
        raise ValueError("linear fit needs at least two distinct x values")
    slope = np.sum((x - xm) * (y - y.mean())) / sxx
    return float(slope), float(y.mean() - slope * xm)


def linear_fit(x, y, n_blocks: int | None = None) -> LinearFit:
    """Least-squares line through (x, y), both (T,).

    With ``n_blocks`` (≥ 2), errors come from a delete-one-block jackknife over
    contiguous blocks of the points (robust to correlated noise, e.g. a drifting
    conserved quantity); otherwise from the OLS formulas with independent residuals.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x {x.shape} and y {y.shape} differ")
    slope, intercept = _ols(x, y)
    n = x.size
    if n_blocks is None:
        if n < 3:
            return LinearFit(slope, float("nan"), intercept, float("nan"), "ols", n)
        res = y - (slope * x + intercept)
        s2 = np.sum(res**2) / (n - 2)
        sxx = np.sum((x - x.mean()) ** 2)
        se_slope = np.sqrt(s2 / sxx)
        se_icpt = np.sqrt(s2 * (1.0 / n + x.mean() ** 2 / sxx))
        return LinearFit(slope, float(se_slope), intercept, float(se_icpt), "ols", n)
    if n_blocks < 2:
        raise ValueError("n_blocks must be >= 2")
    edges = np.linspace(0, n, n_blocks + 1).astype(int)
    est = []
    for k in range(n_blocks):
        keep = np.ones(n, dtype=bool)
        keep[edges[k] : edges[k + 1]] = False
        est.append(_ols(x[keep], y[keep]))
    est = np.asarray(est)
    var = (n_blocks - 1) / n_blocks * np.sum((est - est.mean(axis=0)) ** 2, axis=0)
    err = np.sqrt(var)
    return LinearFit(slope, float(err[0]), intercept, float(err[1]), f"jackknife-{n_blocks}", n)


def mean_and_error(x: np.ndarray, n_blocks: int) -> tuple[float, float]:
    """Mean over all samples; standard error from ``n_blocks`` blocks (NaN if the series
    is shorter than two samples per block)."""
    err = block_average(x, n_blocks)[1] if len(x) >= 2 * n_blocks else float("nan")
    return float(np.mean(x)), float(err)
