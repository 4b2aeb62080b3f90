"""Ring-polymer widths of a harmonic bond, and the tails of a bond-length sample."""

import numpy as np
import pytest

from symbreak.analysis.beads import harmonic_bead_std, tail_summary

HBAR, KB, AMU, C_CM = 1.054571817e-34, 1.380649e-23, 1.66053906660e-27, 2.99792458e10
MU_OH = 15.999 * 1.008 / (15.999 + 1.008)


def _limits(wavenumber, temperature, mass):
    m, w = mass * AMU, 2 * np.pi * C_CM * wavenumber
    classical = np.sqrt(KB * temperature / m) / w * 1e10
    x = HBAR * w / (2 * KB * temperature)
    quantum = np.sqrt(HBAR / (2 * m * w) / np.tanh(x)) * 1e10
    return classical, quantum


@pytest.mark.parametrize("wavenumber,temperature", [(3400, 300), (1600, 300), (3700, 150)])
def test_one_bead_is_classical_and_many_beads_are_quantum(wavenumber, temperature):
    classical, quantum = _limits(wavenumber, temperature, MU_OH)
    assert harmonic_bead_std(wavenumber, temperature, 1, MU_OH) == pytest.approx(classical)
    assert harmonic_bead_std(wavenumber, temperature, 4000, MU_OH) == pytest.approx(
        quantum, rel=1e-3
    )
    widths = [harmonic_bead_std(wavenumber, temperature, p, MU_OH) for p in (1, 2, 8, 32, 128)]
    assert np.all(np.diff(widths) > 0)  # more beads, more delocalised, up to the quantum width


def test_bead_width_matches_the_ring_polymer_covariance():
    """The normal-mode sum against the inverse of the ring polymer's Hessian: P beads at
    P T, springs m (P kT/ħ)² between neighbours, the harmonic well on each bead."""
    wavenumber, temperature, beads = 3400.0, 300.0, 8
    m, w = MU_OH * AMU, 2 * np.pi * C_CM * wavenumber
    wp = beads * KB * temperature / HBAR
    ring = 2 * np.eye(beads) - np.roll(np.eye(beads), 1, 0) - np.roll(np.eye(beads), -1, 0)
    hessian = m * wp**2 * ring + m * w**2 * np.eye(beads)
    covariance = beads * KB * temperature * np.linalg.inv(hessian)
    expected = np.sqrt(covariance[0, 0]) * 1e10
    assert harmonic_bead_std(wavenumber, temperature, beads, MU_OH) == pytest.approx(expected)


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="beads >= 1"):
        harmonic_bead_std(3400, 300, 0, MU_OH)
    with pytest.raises(ValueError, match="-3400"):
        harmonic_bead_std(-3400, 300, 8, MU_OH)


def test_tail_summary_of_a_normal_sample():
    rng = np.random.default_rng(3)
    x = rng.normal(0.98, 0.06, size=400_000)
    s = tail_summary(x, 0.80, 1.16)  # 3 standard deviations each side
    assert s["mean"] == pytest.approx(0.98, abs=1e-3) and s["std"] == pytest.approx(0.06, rel=1e-2)
    for count, expected in (
        ("below_low", "normal_expects_below_low"),
        ("above_high", "normal_expects_above_high"),
    ):
        assert s[expected] == pytest.approx(400_000 * 1.3499e-3, rel=0.03)
        assert abs(s[count] - s[expected]) < 4 * np.sqrt(s[expected])
    assert s["min_in_std"] < -4 and s["max_in_std"] > 4
    skewed = tail_summary(np.r_[x, [0.5]], 0.6, 1.4)  # 6-7 standard deviations out
    assert skewed["below_low"] == 1 and skewed["min_in_std"] == pytest.approx(
        (0.5 - 0.98) / 0.06, rel=0.02
    )
