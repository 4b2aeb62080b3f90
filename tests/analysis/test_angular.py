"""Angular momentum of rigid rotors and torques of central forces."""

import numpy as np
import pytest

from symbreak.analysis.angular import (
    analyse_angular_momentum,
    angular_momentum,
    centre_of_mass,
    inertia_tensor,
    make_whole,
    mean_torque,
    torques,
)
from symbreak.analysis.io import load_trajectory

from .synthetic import IPI_RUN, water_local


def _rotation(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def _rotor(omega_axis_body, w, t, v_com=(0.3, -0.2, 0.1)):
    m = np.array([15.999, 1.008, 1.008])
    x0 = water_local()
    x0 = x0 - centre_of_mass(x0, m)
    R0 = _rotation([1.0, 2.0, 3.0], 0.7)  # arbitrary lab orientation
    x0 = x0 @ R0.T
    axis = R0 @ np.asarray(omega_axis_body, float)
    omega = w * axis / np.linalg.norm(axis)
    Rt = np.stack([_rotation(omega, w * tt) for tt in t])
    x = np.einsum("fij,nj->fni", Rt, x0) + np.asarray(v_com) * t[:, None, None] + 5.0
    v = np.cross(omega, x - centre_of_mass(x, m)[:, None, :]) + np.asarray(v_com)
    return x, v, m, omega


def test_free_rotor_about_principal_axis_has_constant_L_equal_I_omega():
    t = np.arange(400) * 0.002  # ps
    x0 = water_local()
    m = np.array([15.999, 1.008, 1.008])
    evals, evecs = np.linalg.eigh(inertia_tensor(x0, m))
    w = 15.0  # rad/ps
    x, v, m, omega = _rotor(evecs[:, 0], w, t)
    L, source = angular_momentum(x, m, v)
    assert source == "velocities"
    I_omega = inertia_tensor(x[0], m) @ omega
    np.testing.assert_allclose(L, np.broadcast_to(I_omega, L.shape), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(L[0]), evals[0] * w, rtol=1e-10)
    res = analyse_angular_momentum(t, x, m, v, n_blocks=5)
    for d in res.drift:
        assert abs(d.slope) < 1e-8
    # finite differences from positions: second-order accurate
    Lfd, src = angular_momentum(x, m, None, 0.002)
    assert "finite differences" in src
    np.testing.assert_allclose(Lfd[1:-1], L[1:-1], rtol=3e-4 * (w * 0.002 / 0.03) ** 2 + 1e-6)


def test_general_rotation_L_is_I_omega_at_every_time():
    t = np.arange(50) * 0.003
    x, v, m, omega = _rotor([0.3, -1.0, 0.4], 20.0, t)
    L, _ = angular_momentum(x, m, v)
    np.testing.assert_allclose(L, inertia_tensor(x, m) @ omega, rtol=1e-10)
    # not about a principal axis: L precesses, so it is not constant here
    assert np.ptp(L, axis=0).max() > 0.1 * np.abs(L).max()


def test_torque_of_central_forces_is_zero_and_of_a_couple_is_not():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 7, 3)) * 2
    m = rng.uniform(1, 16, size=7)
    d = x[:, None, :, :] - x[:, :, None, :]  # x_j - x_i
    r = np.linalg.norm(d, axis=-1) + np.eye(7)
    mag = np.exp(-r) * (1 - np.eye(7))  # central pair magnitudes
    f = -(mag[..., None] * d / r[..., None]).sum(axis=2)  # repulsion along x_i - x_j
    np.testing.assert_allclose(f.sum(axis=1), 0, atol=1e-12)
    tau = torques(x, f, m)
    np.testing.assert_allclose(tau, 0, atol=1e-12)
    res = mean_torque(x, f, m, n_blocks=4)
    assert res.mean_norm < 1e-12
    # a couple: ±F perpendicular to the separation of two atoms
    y = np.array([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]] * 10)
    F = np.array([[[0.0, -0.5, 0.0], [0.0, 0.5, 0.0]]] * 10)
    tq = mean_torque(y, F, np.array([1.0, 3.0]), n_blocks=5)
    assert tq.mean_norm == pytest.approx(0.5)
    np.testing.assert_allclose(tq.mean_vector, [0, 0, 0.5])
    # a net force does not contribute (torque is about the COM)
    np.testing.assert_allclose(torques(y, F + 1.0, np.array([1.0, 1.0])), [[0, 0, 0.5]] * 10)


def test_real_ipi_forces_of_an_invariant_potential_give_no_torque():
    traj = load_trajectory(IPI_RUN / "sim.pos_0.xyz", forces=IPI_RUN / "sim.frc_0.xyz")
    for k in range(2):  # per molecule; the test potential is intramolecular and isotropic
        a = slice(3 * k, 3 * k + 3)
        x = make_whole(traj.positions[:, a], traj.cells, traj.pbc)
        tau = torques(x, traj.forces[:, a], traj.masses[a])
        scale = np.abs(traj.forces[:, a]).max() * 1.0
        assert np.abs(tau).max() < 1e-4 * scale
