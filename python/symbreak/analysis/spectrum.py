"""Power spectral density of a scalar time series (e.g. the potential energy, or the
difference averaged − plain from i-PI's per-component potentials).

One-sided PSD by Welch's method (Hann windows, 50 % overlap, mean removed per segment)
or a single periodogram; the frequency axis in THz (1/ps) or cm⁻¹ (ν̃ = f / c,
1 THz = 33.356 cm⁻¹). Normalisation: ∫ PSD df = variance of the series, so the PSD has
units of [x]²/THz (or [x]²/cm⁻¹). The relative statistical error of a Welch estimate
is about 1/sqrt(K) for K (roughly independent) segments, reported per point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .report import new_figure, save_figure
from .units import THZ_TO_CM1


@dataclass
class Spectrum:
    """freq (K,) in ``freq_unit``; psd (K,) in [x]²/``freq_unit``; psd_err (K,);
    n_segments averaged; peak frequency (largest PSD above the lowest non-zero bin)."""

    freq: np.ndarray
    psd: np.ndarray
    psd_err: np.ndarray
    freq_unit: str
    value_unit: str
    n_segments: int
    method: str
    variance: float

    @property
    def peak(self) -> float:
        k = 1 + int(np.argmax(self.psd[1:])) if len(self.psd) > 1 else 0
        return float(self.freq[k])

    def to_dict(self, n_peaks: int = 5) -> dict:
        order = np.argsort(self.psd[1:])[::-1][:n_peaks] + 1 if len(self.psd) > 1 else []
        return {
            "method": self.method,
            "freq_unit": self.freq_unit,
            "psd_unit": f"({self.value_unit})^2/{self.freq_unit}",
            "n_segments": self.n_segments,
            "resolution": float(self.freq[1] - self.freq[0]) if len(self.freq) > 1 else None,
            "nyquist": float(self.freq[-1]),
            "variance": self.variance,
            "integrated_psd": float(np.trapezoid(self.psd, self.freq)),
            "peak_frequency": self.peak,
            "top_peaks": [{"freq": self.freq[k], "psd": self.psd[k]} for k in order],
        }


def power_spectrum(
    x,
    dt_ps: float,
    method: str = "welch",
    segment_length: int | None = None,
    freq_unit: str = "THz",
    value_unit: str = "",
) -> Spectrum:
    """PSD of x (T,) sampled every ``dt_ps`` ps.

    ``method``: ``"welch"`` (segments of ``segment_length`` samples, default T // 8,
    50 % overlap, Hann window) or ``"periodogram"`` (one Hann-windowed segment, best
    resolution, ~100 % relative error per bin). ``freq_unit``: ``"THz"`` or ``"cm-1"``.
    """
    from scipy import signal

    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size < 4:
        raise ValueError("power spectrum needs at least 4 samples")
    fs = 1.0 / dt_ps  # THz
    if method == "welch":
        nper = int(segment_length or max(4, x.size // 8))
        nper = min(nper, x.size)
        f, p = signal.welch(
            x,
            fs=fs,
            window="hann",
            nperseg=nper,
            noverlap=nper // 2,
            detrend="constant",
            scaling="density",
        )
        nseg = 1 + (x.size - nper) // (nper - nper // 2)
    elif method == "periodogram":
        f, p = signal.periodogram(x, fs=fs, window="hann", detrend="constant", scaling="density")
        nseg = 1
    else:
        raise ValueError(f"unknown method {method!r} (welch, periodogram)")
    if freq_unit in ("cm-1", "cm^-1", "1/cm"):
        f = f * THZ_TO_CM1
        p = p / THZ_TO_CM1
        freq_unit = "cm-1"
    elif freq_unit != "THz":
        raise ValueError(f"unknown frequency unit {freq_unit!r} (THz, cm-1)")
    return Spectrum(f, p, p / np.sqrt(nseg), freq_unit, value_unit, nseg, method, float(x.var()))


def plot_spectrum(spectra: dict[str, Spectrum], path, title: str = "", logy: bool = True):
    """Several labelled spectra on one log-scale plot → PNG."""
    fig, ax = new_figure(size=(6.0, 3.8))
    unit = ""
    for label, s in spectra.items():
        ax.plot(s.freq[1:], s.psd[1:], lw=0.9, label=label)
        unit = s.freq_unit
        vunit = s.value_unit
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(f"frequency ({unit})")
    ax.set_ylabel(f"PSD (({vunit})$^2$/{unit})" if vunit else f"PSD (1/{unit})")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
