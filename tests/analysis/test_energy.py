"""Conserved-quantity drift, averaged − plain component differences, ice energies."""

import json

import numpy as np
import pytest

from symbreak.analysis.components import energy_difference, force_difference
from symbreak.analysis.drift import conserved_drift
from symbreak.analysis.ice import read_ice_energies, relative_energies
from symbreak.analysis.io import read_properties

from .synthetic import IPI_RUN


def test_drift_of_a_linear_signal_is_recovered():
    rng = np.random.default_rng(0)
    t = np.arange(5000) * 0.001  # ps
    n_mol, slope = 32, 0.004  # eV/ps total
    e = -500.0 + slope * t + rng.normal(0, 0.01, t.size)
    res = conserved_drift(t, e, n_mol, n_blocks=10)
    assert abs(res.slope - slope / n_mol) < 4 * res.slope_err
    assert res.slope_err < 0.1 * slope / n_mol
    assert res.rms_fluctuation == pytest.approx(0.01 / n_mol, rel=0.05)
    d = res.to_dict()
    assert d["drift_meV_per_molecule_per_ps"] == pytest.approx(1e3 * res.slope)
    flat = conserved_drift(t, e - slope * t, n_mol, n_blocks=10)
    assert abs(flat.slope) < 4 * flat.slope_err


def test_component_energy_difference_from_real_ipi_mts_run():
    """The fixture's 'averaged' force field is the plain one scaled by 1.01: ΔE = 0.01 E."""
    p = read_properties(IPI_RUN / "sim.out")
    e = energy_difference(
        p.time_ps(), p["pot_component_raw(1)"], p["pot_component_raw(0)"], 2, n_blocks=2
    )
    np.testing.assert_allclose(e.dE, 0.01 * p["pot_component_raw(1)"] / 2, rtol=2e-5, atol=1e-12)
    d = e.to_dict()
    assert d["mean"] == pytest.approx(1e3 * e.dE.mean())
    assert d["units"] == "meV/molecule"


def test_force_difference_statistics():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(20, 9, 3))
    delta = np.where(rng.uniform(size=f.shape) < 0.5, -0.002, 0.002)
    r = force_difference(f, f + delta, n_blocks=5)
    assert r.mae == pytest.approx(0.002)
    assert r.rms == pytest.approx(0.002)
    assert r.mae_err == pytest.approx(0.0, abs=1e-15)
    assert r.to_dict()["mae"] == pytest.approx(2.0)


def test_ice_relative_energies(tmp_path):
    n = np.array([96, 96, 128, 96])
    e_plain = np.array([-10.0, -10.05, -10.02, -9.98]) * n
    # averaged = plain + constant per molecule: relative energies identical
    data = {
        "structures": [
            {
                "name": f"ih-{i}",
                "n_molecules": int(n[i]),
                "plain": e_plain[i],
                "averaged": e_plain[i] + 0.003 * n[i],
            }
            for i in range(4)
        ]
    }
    f = tmp_path / "e.json"
    f.write_text(json.dumps(data))
    d = relative_energies(read_ice_energies(f)).to_dict()
    assert d["rms_difference_rel_mean"] == pytest.approx(0.0, abs=1e-9)
    assert d["kendall_tau"] == pytest.approx(1.0)
    assert d["absolute_difference_mean"] == pytest.approx(3.0)
    assert d["structures"][1]["rel_lowest_plain"] == pytest.approx(0.0)
    # a known perturbation of ±1 meV/molecule on alternate structures (mean zero)
    pert = np.array([1.0, -1.0, 1.0, -1.0]) * 1e-3
    mapping = {
        f"s{i}": {
            "n_molecules": int(n[i]),
            "plain": e_plain[i] / n[i],
            "averaged": e_plain[i] / n[i] + pert[i],
        }
        for i in range(4)
    }
    d2 = relative_energies(read_ice_energies({**mapping, "per_molecule": True})).to_dict()
    assert d2["rms_difference_rel_mean"] == pytest.approx(1.0)
    assert d2["max_abs_difference_rel_mean"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        read_ice_energies({"a": {"plain": 1.0, "averaged": 2.0}})
