"""Convergence and exact-solution tests of the PDE reference solvers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import resample

from diffsci.domains.pde.simulate import (
    advection_1d,
    burgers_1d,
    grf_2d,
    navier_stokes_2d,
    periodic_grid,
    random_initial_conditions,
)


def rel_l2(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Relative L2 error per sample (axis 0), over all other axes."""
    n = ref.shape[0]
    return np.linalg.norm((a - ref).reshape(n, -1), axis=1) / np.linalg.norm(
        ref.reshape(n, -1), axis=1
    )


# ------------------------------------------------------------------------------------ Burgers


def cole_hopf(x: np.ndarray, t: np.ndarray, nu: float) -> np.ndarray:
    """Exact Burgers solution u = -2 nu phi_x / phi, phi a positive solution of the heat eq."""
    d1, d2 = np.exp(-4 * np.pi**2 * nu * t), np.exp(-16 * np.pi**2 * nu * t)
    phi = 2 + 1.2 * d1 * np.cos(2 * np.pi * x) + 0.6 * d2 * np.sin(4 * np.pi * x + 1)
    phi_x = -2.4 * np.pi * d1 * np.sin(2 * np.pi * x) + 2.4 * np.pi * d2 * np.cos(4 * np.pi * x + 1)
    return -2 * nu * phi_x / phi


def test_burgers_matches_cole_hopf_exact_solution():
    nu, x = 0.1, periodic_grid(64)
    u, t = burgers_1d(cole_hopf(x, 0.0, nu), nu=nu, t_end=1.0, nt=11, progress=False)
    assert u.shape == (11, 64) and np.allclose(t, np.linspace(0, 1, 11))
    exact = cole_hopf(x[None], t[:, None], nu)
    assert rel_l2(u[None], exact[None])[0] < 1e-6  # measured 2.8e-8


def test_burgers_64_grid_matches_512_reference():
    u0_64 = random_initial_conditions(4, 64, seed=1)
    u0_512 = random_initial_conditions(4, 512, seed=1)
    np.testing.assert_allclose(u0_512[:, ::8], u0_64, atol=1e-13)  # same continuous field
    u64, _ = burgers_1d(u0_64, nu=0.1, t_end=1.0, nt=11, progress=False)
    u512, _ = burgers_1d(u0_512, nu=0.1, t_end=1.0, nt=11, progress=False)
    err = rel_l2(u64, u512[:, :, ::8])
    assert err.max() < 1e-3, err  # measured max 6.3e-7


def test_burgers_etdrk4_is_fourth_order_in_time():
    u0 = random_initial_conditions(4, 64, seed=0)
    kw = dict(nu=0.1, t_end=1.0, nt=2, progress=False)
    ref, _ = burgers_1d(u0, dt=1 / 1280, **kw)
    e1 = rel_l2(burgers_1d(u0, dt=1 / 80, **kw)[0], ref)
    e2 = rel_l2(burgers_1d(u0, dt=1 / 160, **kw)[0], ref)
    assert e2.max() < 1e-4  # halving dt changes little
    assert (e1 / e2).min() > 8, e1 / e2  # measured 11.4 to 44, typically 16


def test_burgers_conserves_mass():
    u0 = random_initial_conditions(3, 128, seed=2) + 0.3
    u, _ = burgers_1d(u0, nu=0.05, t_end=1.0, nt=21, progress=False)
    drift = u.mean(axis=-1) - u0.mean(axis=-1)[:, None]
    assert np.abs(drift).max() < 1e-10


def test_burgers_viscous_limit_decays_exponentially():
    nu, eps = 0.1, 1e-7
    x = periodic_grid(64)
    u, t = burgers_1d(eps * np.sin(2 * np.pi * x), nu=nu, t_end=1.0, nt=6, progress=False)
    exact = eps * np.exp(-4 * np.pi**2 * nu * t)[:, None] * np.sin(2 * np.pi * x)[None]
    err = np.linalg.norm(u - exact, axis=-1) / np.linalg.norm(exact, axis=-1)
    assert err.max() < 1e-4


def test_burgers_batch_equals_single_runs():
    u0 = random_initial_conditions(3, 32, seed=3)
    batch, _ = burgers_1d(u0, nu=0.1, t_end=0.5, nt=3, dt=1e-2, progress=False)
    one, _ = burgers_1d(u0[1], nu=0.1, t_end=0.5, nt=3, dt=1e-2, progress=False)
    np.testing.assert_allclose(batch[1], one, rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(u0=np.full((2, 32), np.nan)), "u0"),
        (dict(u0=np.zeros((2, 3, 32))), "u0"),
        (dict(u0=np.zeros((2, 33))), "nx"),
        (dict(nu=0.0), "nu"),
        (dict(nu=-1.0), "nu"),
        (dict(t_end=0.0), "t_end"),
        (dict(nt=1), "nt"),
        (dict(dt=-1e-3), "dt"),
    ],
)
def test_burgers_rejects_bad_input(kwargs, name):
    args = dict(u0=np.zeros((2, 32)), nu=0.1, t_end=1.0, nt=3, progress=False) | kwargs
    with pytest.raises(ValueError, match=name):
        burgers_1d(**args)


def test_random_initial_conditions():
    a = random_initial_conditions(5, 64, seed=7)
    assert a.shape == (5, 64) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, random_initial_conditions(5, 64, seed=7))
    assert not np.allclose(a, random_initial_conditions(5, 64, seed=8))
    np.testing.assert_allclose(np.abs(a.mean(axis=1)), 0, atol=1e-12)  # pure sines
    g = random_initial_conditions(2000, 64, kind="grf", seed=0)
    assert abs(g.var() - 1) < 0.1
    g256 = random_initial_conditions(3, 256, kind="grf", seed=4)
    np.testing.assert_allclose(g256[:, ::4], random_initial_conditions(3, 64, kind="grf", seed=4))
    with pytest.raises(ValueError, match="kind"):
        random_initial_conditions(2, 64, kind="nope")
    with pytest.raises(ValueError, match="k_max"):
        random_initial_conditions(2, 8, k_max=4)


# ---------------------------------------------------------------------------------- advection


def test_advection_returns_to_start_after_one_period():
    beta = 0.4
    u0 = random_initial_conditions(3, 128, kind="grf", seed=0)
    u, t = advection_1d(u0, beta=beta, t_end=1 / beta, nt=5)
    assert u.shape == (3, 5, 128)
    np.testing.assert_allclose(u[:, -1], u0, rtol=0, atol=1e-10)


def test_advection_matches_exact_shift():
    beta, x = -1.3, periodic_grid(64)
    u, t = advection_1d(np.sin(2 * np.pi * 3 * x) + 0.5, beta=beta, t_end=0.77, nt=8)
    exact = np.sin(2 * np.pi * 3 * (x[None] - beta * t[:, None])) + 0.5
    np.testing.assert_allclose(u, exact, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="beta"):
        advection_1d(np.zeros(8), beta=np.inf, t_end=1.0, nt=2)


# ----------------------------------------------------------------------------- Navier-Stokes


def band_limited_vorticity(n: int, s: int, k_max: int, *, scale: float, seed: int) -> np.ndarray:
    w_hat = np.fft.rfft2(grf_2d(n, s, seed=seed))
    kx = np.fft.fftfreq(s, 1 / s)[:, None]
    ky = np.fft.rfftfreq(s, 1 / s)[None, :]
    w_hat[:, (np.abs(kx) > k_max) | (ky > k_max)] = 0
    return scale * np.fft.irfft2(w_hat, s=(s, s))


def upsample(w: np.ndarray, s: int) -> np.ndarray:
    return resample(resample(w, s, axis=-2), s, axis=-1)


def energy_enstrophy(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kinetic energy 0.5 <|u|^2> and enstrophy 0.5 <w^2> through Parseval (full FFT)."""
    s = w.shape[-1]
    k = np.fft.fftfreq(s, 1 / s)
    lam = 4 * np.pi**2 * (k[:, None] ** 2 + k[None, :] ** 2)
    lam[0, 0] = np.inf
    p = np.abs(np.fft.fft2(w)) ** 2 / s**4
    return 0.5 * (p / lam).sum(axis=(-2, -1)), 0.5 * p.sum(axis=(-2, -1))


def test_navier_stokes_64_grid_matches_128_grid():
    w64 = band_limited_vorticity(2, 64, 16, scale=10.0, seed=0)
    kw = dict(nu=1e-3, t_end=0.5, nt=3, dt=1e-2, progress=False)
    a, t = navier_stokes_2d(w64, **kw)
    b, _ = navier_stokes_2d(upsample(w64, 128), **kw)
    assert a.shape == (2, 3, 64, 64) and b.shape == (2, 3, 128, 128)
    err = rel_l2(a[:, -1], b[:, -1, ::2, ::2])
    assert err.max() < 1e-3, err  # measured 1.8e-5


def test_navier_stokes_is_second_order_in_time():
    w0 = band_limited_vorticity(2, 32, 10, scale=10.0, seed=1)
    kw = dict(nu=1e-3, t_end=0.5, nt=2, progress=False)
    ref, _ = navier_stokes_2d(w0, dt=1e-2 / 4, **kw)
    e1 = rel_l2(navier_stokes_2d(w0, dt=1e-2, **kw)[0], ref)
    e2 = rel_l2(navier_stokes_2d(w0, dt=1e-2 / 2, **kw)[0], ref)
    # vs the dt/4 reference: 5 for a second-order scheme, 3 for a first-order one
    assert (e1 / e2).min() > 4, e1 / e2


def test_navier_stokes_unforced_energy_budget():
    nu = 1e-2
    w0 = band_limited_vorticity(2, 64, 16, scale=10.0, seed=2)
    w, t = navier_stokes_2d(w0, nu=nu, forcing=None, t_end=0.5, nt=51, dt=2e-3, progress=False)
    energy, enstrophy = energy_enstrophy(w)
    assert (np.diff(energy, axis=1) < 0).all() and (np.diff(enstrophy, axis=1) < 0).all()
    # dE/dt = -nu <w^2> = -2 nu Z, integrated with the trapezoid rule
    dissipated = np.trapezoid(2 * nu * enstrophy, t, axis=1)
    np.testing.assert_allclose(energy[:, 0] - energy[:, -1], dissipated, rtol=1e-3)
    np.testing.assert_allclose(w.mean(axis=(-2, -1)), 0, atol=1e-12)


def test_navier_stokes_exact_single_shell_solutions():
    s, nu = 32, 1e-2
    x = periodic_grid(s)
    xx, yy = np.meshgrid(x, x, indexing="ij")
    # cos 2pi x cos 2pi y: u . grad w = 0, pure decay at rate nu * 8 pi^2
    w0 = np.cos(2 * np.pi * xx) * np.cos(2 * np.pi * yy)
    w, t = navier_stokes_2d(w0, nu=nu, forcing=None, t_end=1.0, nt=3, dt=1e-2, progress=False)
    exact = np.exp(-8 * np.pi**2 * nu * t)[:, None, None] * w0
    np.testing.assert_allclose(w, exact, rtol=0, atol=1e-5)  # Crank-Nicolson error 2e-6
    hl = 1e-2 * 8 * np.pi**2 * nu  # and exactly the Crank-Nicolson amplification factor
    cn = ((1 - hl / 2) / (1 + hl / 2)) ** np.array([0, 50, 100])
    np.testing.assert_allclose(w, cn[:, None, None] * w0, rtol=0, atol=1e-13)
    # FNO forcing f on the |k|^2 = 2 shell: steady state w = f / (8 pi^2 nu)
    f = 0.1 * (np.sin(2 * np.pi * (xx + yy)) + np.cos(2 * np.pi * (xx + yy)))
    w_ss = f / (8 * np.pi**2 * nu)
    w, _ = navier_stokes_2d(w_ss, nu=nu, t_end=1.0, nt=2, dt=1e-2, progress=False)
    np.testing.assert_allclose(w[-1], w_ss, rtol=0, atol=1e-12)


def test_navier_stokes_initial_tendency_matches_hand_computation():
    # w0 = cos 2pi x + cos 4pi y: psi = cos 2pi x / 4pi^2 + cos 4pi y / 16pi^2,
    # u = psi_y = -sin 4pi y / 4pi, v = -psi_x = sin 2pi x / 2pi, so
    # u . grad w = -1.5 sin 2pi x sin 4pi y and w_t = 1.5 sin sin + nu lap w + f.
    s, nu, h = 32, 1e-2, 1e-4
    x = periodic_grid(s)
    xx, yy = np.meshgrid(x, x, indexing="ij")
    w0 = np.cos(2 * np.pi * xx) + np.cos(4 * np.pi * yy)
    f = 0.1 * (np.sin(2 * np.pi * (xx + yy)) + np.cos(2 * np.pi * (xx + yy)))
    w, _ = navier_stokes_2d(w0, nu=nu, t_end=h, nt=2, dt=h / 10, progress=False)
    lap = -4 * np.pi**2 * np.cos(2 * np.pi * xx) - 16 * np.pi**2 * np.cos(4 * np.pi * yy)
    expected = 1.5 * np.sin(2 * np.pi * xx) * np.sin(4 * np.pi * yy) + nu * lap + f
    np.testing.assert_allclose((w[1] - w0) / h, expected, rtol=0, atol=1e-3)


def test_navier_stokes_default_step_and_forcing_run():
    w0 = grf_2d(3, 32, seed=0)
    w, t = navier_stokes_2d(w0, nu=1e-3, t_end=1.0, nt=5)  # with its progress bar
    assert w.shape == (3, 5, 32, 32) and np.isfinite(w).all()
    np.testing.assert_array_equal(w[:, 0], w0)


def test_grf_2d():
    w = grf_2d(4, 64, seed=3)
    assert w.shape == (4, 64, 64)
    np.testing.assert_array_equal(w, grf_2d(4, 64, seed=3))
    np.testing.assert_allclose(w.mean(axis=(-2, -1)), 0, atol=1e-12)
    with pytest.raises(ValueError, match="s must"):
        grf_2d(1, 63)
    with pytest.raises(ValueError, match="tau"):
        grf_2d(1, 64, tau=0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(w0=np.zeros((2, 16, 18))), "square"),
        (dict(w0=np.zeros((2, 15, 15))), "s "),
        (dict(w0=np.full((16, 16), np.inf)), "w0"),
        (dict(nu=0), "nu"),
        (dict(dt=0), "dt"),
        (dict(forcing=np.zeros((8, 8))), "forcing"),
        (dict(forcing="kolmogorov"), "forcing"),
    ],
)
def test_navier_stokes_rejects_bad_input(kwargs, name):
    args = dict(w0=np.zeros((2, 16, 16)), nu=1e-3, t_end=1.0, nt=2, progress=False) | kwargs
    with pytest.raises(ValueError, match=name):
        navier_stokes_2d(**args)


def test_package_reexports_lazily():
    import diffsci.domains.pde as pde

    assert pde.burgers_1d is burgers_1d and "navier_stokes_2d" in pde.__all__
    with pytest.raises(AttributeError):
        pde.nope  # noqa: B018
