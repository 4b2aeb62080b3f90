"""MSD and D of analytic trajectories; C_1(t) of rotating and diffusing axes."""

import numpy as np
import pytest

from symbreak.analysis.diffusion import diffusion, msd
from symbreak.analysis.molecules import unwrap
from symbreak.analysis.reorientation import c1, reorientation


def _brute_msd(x, max_lag):
    return np.array(
        [np.mean(np.sum((x[m:] - x[: len(x) - m]) ** 2, axis=-1)) for m in range(max_lag + 1)]
    )


def test_fft_msd_equals_direct_average_over_origins():
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=(100, 4, 3)), axis=0) + 50.0
    np.testing.assert_allclose(msd(x, 60), _brute_msd(x, 60), rtol=1e-10, atol=1e-9)


def test_ballistic_msd_is_v2_t2():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(10, 3))
    t = np.arange(200) * 0.01
    x = t[:, None, None] * v[None] + rng.normal(size=(10, 3))
    np.testing.assert_allclose(msd(x, 100), np.mean(np.sum(v**2, -1)) * t[:101] ** 2, rtol=1e-9)


@pytest.mark.parametrize("wrapped", [False, True])
def test_random_walk_recovers_D_with_honest_error(wrapped):
    rng = np.random.default_rng(2)
    D, dt, T, M = 0.23, 0.01, 4000, 64  # Å²/ps, ps
    x = np.cumsum(rng.normal(0, np.sqrt(2 * D * dt), size=(T, M, 3)), axis=0)
    if wrapped:
        L = 6.0
        x = unwrap(np.mod(x, L), np.eye(3) * L, [True] * 3)
    res = diffusion(x, dt, n_blocks=8)
    assert abs(res.D - D) < 4 * res.D_err
    assert res.D_err < 0.05 * D
    # MSD = 6 D t on average
    np.testing.assert_allclose(res.msd[1:], 6 * D * res.time[1:], rtol=0.1)
    assert res.fit_window == pytest.approx((0.2 * res.time[-1], res.time[-1]), abs=dt)
    d = res.to_dict()
    assert d["D_1e-9_m2_per_s"] == pytest.approx(10 * res.D)


def test_diffusion_removes_collective_drift_and_honours_fit_window():
    rng = np.random.default_rng(3)
    D, dt = 0.1, 0.02
    x = np.cumsum(rng.normal(0, np.sqrt(2 * D * dt), size=(2000, 50, 3)), axis=0)
    x += np.arange(2000)[:, None, None] * dt * np.array([1.0, 0.0, 0.0])  # 1 Å/ps drift
    kept = diffusion(x, dt, n_blocks=4, remove_com=False)
    removed = diffusion(x, dt, n_blocks=4, fit_start=0.5, fit_end=2.0)
    assert kept.D > 2 * D
    assert abs(removed.D - D * (1 - 1 / 50)) < 4 * removed.D_err + 0.01 * D
    assert removed.fit_window == pytest.approx((0.5, 2.0))
    with pytest.raises(ValueError):
        diffusion(x, dt, fit_start=100.0)


def test_c1_of_uniform_rotation_is_cos_omega_t():
    w, dt = 3.0, 0.01
    t = np.arange(500) * dt
    phase = np.random.default_rng(4).uniform(0, 2 * np.pi, 7)
    ang = w * t[:, None] + phase
    u = np.stack([np.cos(ang), np.sin(ang), np.zeros_like(ang)], axis=-1)
    np.testing.assert_allclose(c1(u, 300), np.cos(w * t[:301]), atol=1e-10)


def test_c1_of_rotational_diffusion_is_exp_minus_2Dr_t():
    rng = np.random.default_rng(5)
    Dr, dt, T, M = 0.5, 0.005, 6000, 60
    u = np.empty((T, M, 3))
    u[0] = rng.normal(size=(M, 3))
    u[0] /= np.linalg.norm(u[0], axis=1, keepdims=True)
    for k in range(1, T):
        xi = rng.normal(0, np.sqrt(2 * Dr * dt), size=(M, 3))
        xi -= np.sum(xi * u[k - 1], axis=1, keepdims=True) * u[k - 1]
        v = u[k - 1] + xi
        u[k] = v / np.linalg.norm(v, axis=1, keepdims=True)
    res = reorientation(u, dt, n_blocks=5)
    assert res.tau_e == pytest.approx(1 / (2 * Dr), rel=0.1)
    assert abs(res.tau_e - 1 / (2 * Dr)) < 4 * res.tau_e_err + 0.02
    k = res.time < 2.0
    np.testing.assert_allclose(res.c1[k], np.exp(-2 * Dr * res.time[k]), atol=0.05)
