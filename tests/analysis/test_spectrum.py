"""Power spectra: a sine peaks at its frequency; normalisation (Parseval)."""

import numpy as np
import pytest

from symbreak.analysis.spectrum import power_spectrum
from symbreak.analysis.units import THZ_TO_CM1


@pytest.mark.parametrize("method", ["welch", "periodogram"])
def test_sine_peaks_at_its_frequency_in_thz_and_cm1(method):
    rng = np.random.default_rng(0)
    dt, f0, A = 0.004, 13.7, 0.2  # ps, THz, eV
    t = np.arange(8192) * dt
    x = A * np.sin(2 * np.pi * f0 * t + 0.3) + rng.normal(0, 0.05, t.size) + 5.0
    s = power_spectrum(x, dt, method=method, value_unit="eV")
    res = s.freq[1] - s.freq[0]
    assert abs(s.peak - f0) <= res
    assert s.freq[-1] == pytest.approx(0.5 / dt)
    # Parseval: the PSD integrates to the variance (A²/2 + noise)
    assert np.trapezoid(s.psd, s.freq) == pytest.approx(x.var(), rel=0.05)
    c = power_spectrum(x, dt, method=method, freq_unit="cm-1")
    assert abs(c.peak - f0 * THZ_TO_CM1) <= res * THZ_TO_CM1
    assert np.trapezoid(c.psd, c.freq) == pytest.approx(x.var(), rel=0.05)
    d = s.to_dict()
    assert d["top_peaks"][0]["freq"] == s.peak
    assert d["psd_unit"] == "(eV)^2/THz"


def test_welch_error_and_white_noise_level():
    rng = np.random.default_rng(1)
    dt, sigma = 0.01, 1.0
    x = rng.normal(0, sigma, 2**15)
    s = power_spectrum(x, dt, segment_length=256)
    assert s.n_segments == 255
    # white noise: flat one-sided PSD = 2 σ² dt, scattered by ~1/sqrt(K)
    inner = s.psd[5:-5]
    assert np.mean(inner) == pytest.approx(2 * sigma**2 * dt, rel=0.03)
    assert np.std(inner) / np.mean(inner) == pytest.approx(1 / np.sqrt(s.n_segments), rel=0.5)
    np.testing.assert_allclose(s.psd_err, s.psd / np.sqrt(255))
    with pytest.raises(ValueError):
        power_spectrum(x, dt, freq_unit="Hz")
