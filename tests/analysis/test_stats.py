"""Block averaging and linear fits with errors."""

import numpy as np
import pytest

from symbreak.analysis.stats import block_average, block_sem_curve, linear_fit


def test_block_average_of_white_noise_matches_sigma_over_sqrt_n():
    rng = np.random.default_rng(1)
    sigma, N, n_rep = 2.0, 4000, 400
    x = rng.normal(3.0, sigma, size=(n_rep, N))
    means, sems = np.array([block_average(r, 20) for r in x]).T
    expected = sigma / np.sqrt(N)
    # the estimated error is right on average, and it is the actual scatter of the means
    assert np.mean(sems) == pytest.approx(expected, rel=0.05)
    assert np.std(means) == pytest.approx(expected, rel=0.1)
    # coverage of mean ± 2 sem (t with 19 dof: ~94 %)
    cover = np.mean(np.abs(means - 3.0) < 2 * sems)
    assert 0.9 < cover < 0.98


def test_block_average_shapes_and_truncation():
    x = np.arange(23.0)[:, None] * np.ones((1, 3))
    m, e = block_average(x, 5)  # 20 samples used
    assert m.shape == (3,) and e.shape == (3,)
    assert m[0] == pytest.approx(np.arange(20.0).mean())
    with pytest.raises(ValueError):
        block_average(np.arange(3.0), 5)
    with pytest.raises(ValueError):
        block_average(np.arange(30.0), 1)


def test_correlated_noise_needs_long_blocks():
    """AR(1) noise with correlation time ~50 samples: short blocks underestimate the
    error, the plateau of the block curve matches the true scatter."""
    rng = np.random.default_rng(2)
    phi, N, n_rep = 0.98, 20000, 60
    eps = rng.normal(size=(n_rep, N))
    x = np.empty_like(eps)
    x[:, 0] = eps[:, 0] / np.sqrt(1 - phi**2)
    for t in range(1, N):
        x[:, t] = phi * x[:, t - 1] + eps[:, t]
    true_sem = np.std(x.mean(axis=1))
    naive = np.mean([r.std() / np.sqrt(N) for r in x])
    blocked = np.mean([block_average(r, 10)[1] for r in x])
    assert naive < 0.3 * true_sem
    assert blocked == pytest.approx(true_sem, rel=0.3)
    lengths, sems = block_sem_curve(x[0])
    assert lengths[0] == 1 and sems[-3] > 4 * sems[0]


def test_linear_fit_recovers_slope_with_honest_errors():
    rng = np.random.default_rng(3)
    t = np.linspace(0, 10, 2001)
    hits_ols = hits_jk = 0
    slopes, jk_errs, ols_errs = [], [], []
    for _ in range(100):
        y = 0.7 * t - 2.0 + rng.normal(0, 0.5, t.size)
        ols = linear_fit(t, y)
        jk = linear_fit(t, y, n_blocks=10)
        assert ols.slope == jk.slope
        hits_ols += abs(ols.slope - 0.7) < 2 * ols.slope_err
        hits_jk += abs(jk.slope - 0.7) < 2 * jk.slope_err
        slopes.append(ols.slope)
        jk_errs.append(jk.slope_err)
        ols_errs.append(ols.slope_err)
    # both error estimates match the actual scatter of the slope on average
    assert np.mean(ols_errs) == pytest.approx(np.std(slopes), rel=0.2)
    assert np.mean(jk_errs) == pytest.approx(np.std(slopes), rel=0.2)
    assert hits_ols >= 88 and hits_jk >= 80
    assert ols.method == "ols" and jk.method == "jackknife-10"
    with pytest.raises(ValueError):
        linear_fit(np.ones(5), np.arange(5.0))
