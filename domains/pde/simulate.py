"""Reference solvers for periodic PDEs: 1-D Burgers, 1-D advection, 2-D Navier-Stokes.

Everything is numpy float64 and vectorised over a batch of initial conditions, so hundreds of
trajectories are generated in one call.

- :func:`burgers_1d`: ``u_t + (u^2/2)_x = nu u_xx`` on the periodic unit interval,
  Fourier pseudo-spectral in space, ETDRK4 in time (Cox & Matthews 2002) with the phi functions
  evaluated by the contour integrals of Kassam & Trefethen (2005), 2/3-rule dealiasing.
- :func:`advection_1d`: ``u_t + beta u_x = 0``, exact solution by a spectral shift.
- :func:`navier_stokes_2d`: vorticity form on the periodic unit square, pseudo-spectral with
  2/3 dealiasing, Crank-Nicolson for diffusion and Heun (explicit trapezoid) for advection and
  forcing: second order in time. Default forcing and initial-condition law follow the FNO
  paper's data (Li et al. 2021): ``f = 0.1 (sin 2pi(x+y) + cos 2pi(x+y))``,
  ``w0 ~ GRF(alpha=2.5, tau=7)``.

The grids are ``x_i = i / n`` (``i = 0..n-1``, see :func:`periodic_grid`); outputs hold ``nt``
frames at ``np.linspace(0, t_end, nt)``, the first being the initial condition. Internal steps
are shortened so that an integer number of them fills each output interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "advection_1d",
    "burgers_1d",
    "burgers_dataset",
    "grf_2d",
    "navier_stokes_2d",
    "periodic_grid",
    "random_initial_conditions",
    "solver_grid",
]

_CFL = 0.5  # safety factor of the automatic step: dt = _CFL * dx / max|u|
_N_CONTOUR = 32  # points on the Kassam-Trefethen contour


# --------------------------------------------------------------------------------------------
# validation helpers


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_nt(nt: int) -> int:
    if int(nt) != nt or nt < 2:
        raise ValueError(f"nt must be an integer >= 2 (frames including t=0), got {nt}")
    return int(nt)


def _check_n(name: str, n: int) -> int:
    if int(n) != n or n < 4 or n % 2:
        raise ValueError(f"{name} must be an even integer >= 4, got {n}")
    return int(n)


def _as_batch(name: str, u: np.ndarray, ndim: int) -> tuple[np.ndarray, bool]:
    """Return ``u`` as float64 with a leading batch axis, and whether one was added."""
    arr = np.asarray(u, dtype=np.float64)
    if arr.ndim == ndim:
        arr, added = arr[None], True
    elif arr.ndim == ndim + 1:
        added = False
    else:
        raise ValueError(
            f"{name} must have shape {'(N, nx)' if ndim == 1 else '(N, s, s)'} or without the "
            f"batch axis, got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1))
        raise ValueError(f"{name} has non-finite values (samples {bad[:10].tolist()})")
    return arr, added


def _substeps(dt_out: float, dt_max: float) -> int:
    return max(1, math.ceil(dt_out / dt_max * (1.0 - 1e-12)))


def periodic_grid(n: int) -> np.ndarray:
    """Grid ``x_i = i / n``, ``i = 0..n-1``, of the periodic unit interval used by every solver."""
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    return np.arange(n, dtype=np.float64) / n


# --------------------------------------------------------------------------------------------
# initial conditions


def random_initial_conditions(
    n: int,
    nx: int,
    *,
    kind: Literal["sines", "grf"] = "sines",
    seed: int | np.random.Generator | None = None,
    k_max: int = 4,
    n_waves: int = 2,
    alpha: float = 2.0,
    tau: float = 5.0,
    n_modes: int = 16,
) -> np.ndarray:
    """Smooth random periodic fields on :func:`periodic_grid` ``(nx)``.

    The random draws do not depend on ``nx``: one seed gives the same continuous field at every
    resolution (so fine and coarse solutions can be compared pointwise).

    Parameters
    ----------
    n, nx
        Number of fields and grid size.
    kind
        ``"sines"``: PDEBench's superposition ``sum_j A_j sin(2 pi k_j x + phi_j)`` of
        ``n_waves`` distinct wavenumbers drawn from ``1..k_max``, ``A_j ~ U[0, 1)``,
        ``phi_j ~ U[0, 2 pi)`` (PDEBench also takes ``|u|`` or a sharp window for 10 % of the
        samples each; those non-smooth variants are left out).
        ``"grf"``: Gaussian random field, modes ``1..n_modes`` with standard deviation
        proportional to ``(4 pi^2 k^2 + tau^2)^(-alpha/2)``, scaled to unit variance.
    seed
        Integer seed or a ``numpy.random.Generator``.

    Returns
    -------
    np.ndarray
        ``(n, nx)`` float64.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    if int(nx) != nx or nx < 2:
        raise ValueError(f"nx must be an integer >= 2, got {nx}")
    rng = _rng(seed)
    x = periodic_grid(nx)
    if kind == "sines":
        if not 1 <= n_waves <= k_max:
            raise ValueError(f"n_waves must lie in [1, k_max={k_max}], got {n_waves}")
        if 2 * k_max >= nx:
            raise ValueError(f"nx={nx} cannot resolve k_max={k_max}: need nx > 2 k_max")
        k = np.stack(
            [rng.choice(np.arange(1, k_max + 1), n_waves, replace=False) for _ in range(n)]
        )
        amp = rng.uniform(0.0, 1.0, (n, n_waves))
        phase = rng.uniform(0.0, 2 * np.pi, (n, n_waves))
        arg = 2 * np.pi * k[:, :, None] * x[None, None, :] + phase[:, :, None]
        return np.einsum("nw,nwx->nx", amp, np.sin(arg))
    if kind == "grf":
        if 2 * n_modes >= nx:
            raise ValueError(f"nx={nx} cannot resolve n_modes={n_modes}: need nx > 2 n_modes")
        _positive("tau", tau)
        _positive("alpha", alpha)
        k = np.arange(1, n_modes + 1)
        std = (4 * np.pi**2 * k**2 + tau**2) ** (-alpha / 2)
        std = std / np.sqrt(np.sum(std**2))  # pointwise Var u = sum_k std_k^2 = 1
        a, b = rng.standard_normal((2, n, n_modes)) * std
        arg = 2 * np.pi * k[:, None] * x[None, :]
        return a @ np.cos(arg) + b @ np.sin(arg)
    raise ValueError(f"kind must be 'sines' or 'grf', got {kind!r}")


def grf_2d(
    n: int,
    s: int,
    *,
    alpha: float = 2.5,
    tau: float = 7.0,
    sigma: float | None = None,
    seed: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Periodic Gaussian random fields ``N(0, sigma^2 (-Delta + tau^2)^(-alpha))`` on ``s x s``.

    The FNO paper's law for the initial vorticity of its Navier-Stokes data; the default
    ``sigma = tau^(alpha - 1)`` is theirs. The mean (k = 0) mode is zero.

    Returns
    -------
    np.ndarray
        ``(n, s, s)`` float64; axis 1 is x, axis 2 is y (``x_i = i / s``).
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    s = _check_n("s", s)
    alpha = _positive("alpha", alpha)
    tau = _positive("tau", tau)
    sigma = tau ** (alpha - 1.0) if sigma is None else _positive("sigma", sigma)
    rng = _rng(seed)
    k = np.fft.fftfreq(s, d=1.0 / s)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    sqrt_eig = s**2 * math.sqrt(2.0) * sigma * (4 * np.pi**2 * k2 + tau**2) ** (-alpha / 2)
    sqrt_eig[0, 0] = 0.0
    xi = rng.standard_normal((n, s, s)) + 1j * rng.standard_normal((n, s, s))
    return np.fft.ifft2(sqrt_eig * xi).real


# --------------------------------------------------------------------------------------------
# 1-D Burgers


def _etdrk4_coefficients(lin: np.ndarray, h: float) -> tuple[np.ndarray, ...]:
    """ETDRK4 coefficients for the diagonal linear operator ``lin`` (Kassam & Trefethen 2005).

    The phi functions are means over ``_N_CONTOUR`` points of a unit circle around each ``h L``,
    which avoids the cancellation of their closed forms near ``h L = 0``.
    """
    roots = np.exp(1j * np.pi * (np.arange(1, _N_CONTOUR + 1) - 0.5) / _N_CONTOUR)
    hl = h * lin
    lr = hl[:, None] + roots[None, :]
    elr = np.exp(lr)
    q = h * np.mean((np.exp(lr / 2) - 1) / lr, axis=1).real
    f1 = h * np.mean((-4 - lr + elr * (4 - 3 * lr + lr**2)) / lr**3, axis=1).real
    f2 = h * np.mean((2 + lr + elr * (-2 + lr)) / lr**3, axis=1).real
    f3 = h * np.mean((-4 - 3 * lr - lr**2 + elr * (4 - lr)) / lr**3, axis=1).real
    return np.exp(hl), np.exp(hl / 2), q, f1, f2, f3


def burgers_1d(
    u0: np.ndarray,
    *,
    nu: float,
    t_end: float,
    nt: int,
    dt: float | None = None,
    dealias: bool = True,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve viscous Burgers ``u_t + (u^2/2)_x = nu u_xx`` on the periodic unit interval.

    Fourier pseudo-spectral in space; ETDRK4 in time (the diffusion is integrated exactly, so
    the step is limited by the advection only). The mean of ``u`` is conserved exactly.
    Resolution guide (sines initial data, t = 1, against a 2048 grid): ``nu=0.1`` is converged
    at ``nx=128``, ``nu=0.01`` at ``nx=256``; ``nu=0.001`` needs ``nx=1024``.

    Parameters
    ----------
    u0
        Initial conditions ``(N, nx)`` (or ``(nx,)``) on :func:`periodic_grid` ``(nx)``,
        ``nx`` even.
    nu
        Viscosity, > 0.
    t_end, nt
        Final time and number of output frames (``np.linspace(0, t_end, nt)``).
    dt
        Largest internal step; shortened to divide the output interval. Default
        ``0.5 dx / max|u0|`` (``max|u|`` cannot grow for Burgers).
    dealias
        Zero the modes ``m >= nx/3`` of the nonlinear term (Orszag's 2/3 rule).
    progress
        Show a tqdm progress bar over the time steps.

    Returns
    -------
    u : np.ndarray
        ``(N, nt, nx)`` float64 (``(nt, nx)`` for a 1-D ``u0``).
    t : np.ndarray
        ``(nt,)`` output times.
    """
    u0, squeeze = _as_batch("u0", u0, 1)
    nx = _check_n("nx (u0.shape[-1])", u0.shape[-1])
    nu = _positive("nu", nu)
    t_end = _positive("t_end", t_end)
    nt = _check_nt(nt)
    t = np.linspace(0.0, t_end, nt)
    dt_out = t_end / (nt - 1)
    if dt is None:
        umax = float(np.abs(u0).max())
        dt = dt_out if umax == 0 else min(dt_out, _CFL / (nx * umax))
    dt = _positive("dt", dt)
    n_sub = _substeps(dt_out, dt)
    h = dt_out / n_sub

    m = np.arange(nx // 2 + 1)
    k = 2 * np.pi * m
    lin = -nu * k**2
    g = -0.5j * k  # N(v) = g * FFT(u^2), with the dealiasing mask folded in
    g[-1] = 0.0  # Nyquist derivative of a real field
    if dealias:
        g[m > (nx - 1) // 3] = 0.0
    e, e2, q, f1, f2, f3 = _etdrk4_coefficients(lin, h)
    f2x2 = 2 * f2

    def nonlinear(v: np.ndarray) -> np.ndarray:
        u = np.fft.irfft(v, n=nx)
        np.square(u, out=u)
        out = np.fft.rfft(u)
        out *= g
        return out

    out = np.empty((u0.shape[0], nt, nx))
    out[:, 0] = u0
    v = np.fft.rfft(u0)
    with tqdm(total=(nt - 1) * n_sub, desc="burgers_1d", disable=not progress, leave=False) as bar:
        for i in range(1, nt):
            for _ in range(n_sub):
                nv = nonlinear(v)
                e2v = e2 * v
                a = e2v + q * nv
                na = nonlinear(a)
                b = e2v + q * na
                nb = nonlinear(b)
                c = e2 * a + q * (2 * nb - nv)
                nc = nonlinear(c)
                na += nb
                v *= e
                v += f1 * nv + f2x2 * na + f3 * nc
            out[:, i] = np.fft.irfft(v, n=nx)
            if not np.isfinite(out[:, i]).all():
                raise FloatingPointError(
                    f"burgers_1d blew up before t={t[i]:.4g}: reduce dt (was {h:.3g}) or nu is "
                    f"too small for nx={nx}"
                )
            bar.update(n_sub)
    return (out[0] if squeeze else out), t


def solver_grid(grids: Sequence[int], solver_nx: int) -> int:
    """The grid to solve on so that every grid in ``grids`` is a subsampling of it: the finest
    of ``grids`` and ``solver_nx`` (see :func:`burgers_1d`'s resolution guide)."""
    fine = max(max(grids), solver_nx)
    for g in grids:
        if fine % g:
            raise ValueError(f"data.solver_nx={fine} must be a multiple of every grid ({g})")
    return fine


def burgers_dataset(
    n: int,
    nx: int,
    *,
    seed: int,
    nu: float,
    t_end: float,
    nt: int,
    initial: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` random Burgers trajectories: initial states ``(n, nx)`` drawn by
    :func:`random_initial_conditions` (``initial`` its keyword arguments), the solutions
    ``(n, nt, nx)`` of :func:`burgers_1d` and their times ``(nt,)``."""
    u0 = random_initial_conditions(n, nx, seed=seed, **initial)
    u, t = burgers_1d(u0, nu=nu, t_end=t_end, nt=nt, progress=False)
    if not np.isfinite(u).all():
        raise FloatingPointError("the Burgers solver produced non-finite values")
    return u0, u, t


# --------------------------------------------------------------------------------------------
# 1-D advection


def advection_1d(
    u0: np.ndarray, *, beta: float, t_end: float, nt: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact solution ``u(x, t) = u0(x - beta t)`` of ``u_t + beta u_x = 0``, periodic.

    The shift is applied to the trigonometric interpolant of ``u0`` (exact for band-limited
    data); the Nyquist mode is shifted as ``cos``, i.e. its real part is kept.

    Parameters
    ----------
    u0
        ``(N, nx)`` (or ``(nx,)``) on :func:`periodic_grid` ``(nx)``, ``nx`` even.
    beta
        Advection speed (any finite real).
    t_end, nt
        Final time and number of frames (``np.linspace(0, t_end, nt)``).

    Returns
    -------
    u : np.ndarray
        ``(N, nt, nx)`` (``(nt, nx)`` for a 1-D ``u0``).
    t : np.ndarray
        ``(nt,)``.
    """
    u0, squeeze = _as_batch("u0", u0, 1)
    nx = _check_n("nx (u0.shape[-1])", u0.shape[-1])
    beta = _finite("beta", beta)
    t_end = _positive("t_end", t_end)
    nt = _check_nt(nt)
    t = np.linspace(0.0, t_end, nt)
    m = np.arange(nx // 2 + 1)
    # exp(-2 pi i m beta t), with the phase m * beta * t reduced mod 1 for accuracy
    phase = np.mod(np.outer(beta * t, m), 1.0)
    shift = np.exp(-2j * np.pi * phase)
    u = np.fft.irfft(np.fft.rfft(u0)[:, None, :] * shift[None], n=nx, axis=-1)
    return (u[0] if squeeze else u), t


# --------------------------------------------------------------------------------------------
# 2-D Navier-Stokes (vorticity form)


def _fno_forcing(s: int) -> np.ndarray:
    x = periodic_grid(s)
    xy = x[:, None] + x[None, :]
    return 0.1 * (np.sin(2 * np.pi * xy) + np.cos(2 * np.pi * xy))


def navier_stokes_2d(
    w0: np.ndarray,
    *,
    nu: float,
    forcing: np.ndarray | Literal["fno"] | None = "fno",
    t_end: float,
    nt: int,
    dt: float | None = None,
    dealias: bool = True,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve 2-D incompressible Navier-Stokes in vorticity form on the periodic unit square.

    ``w_t + u . grad w = nu lap w + f``, ``u = (psi_y, -psi_x)``, ``-lap psi = w``. Fourier
    pseudo-spectral; per step ``w* = CN(w^n; N(w^n))``, ``w^{n+1} = CN(w^n; (N(w^n) +
    N(w*)) / 2)`` where ``CN`` treats the diffusion by Crank-Nicolson and ``N = f - u . grad w``
    explicitly (Heun): second order in time.

    Parameters
    ----------
    w0
        Initial vorticity ``(N, s, s)`` (or ``(s, s)``); axis -2 is x, axis -1 is y, on
        :func:`periodic_grid` ``(s)``; ``s`` even.
    nu
        Viscosity, > 0.
    forcing
        ``"fno"``: ``0.1 (sin 2 pi (x+y) + cos 2 pi (x+y))``; ``None``: unforced; or an array
        ``(s, s)`` or ``(N, s, s)``, constant in time.
    t_end, nt
        Final time and number of frames (``np.linspace(0, t_end, nt)``).
    dt
        Largest internal step, shortened to divide the output interval. Default: per output
        interval, ``0.5 dx / max|u|`` of the velocity at its start.
    dealias
        2/3-rule dealiasing of the advection term.
    progress
        Show a tqdm progress bar over the output frames.

    Returns
    -------
    w : np.ndarray
        ``(N, nt, s, s)`` float64 (``(nt, s, s)`` for a 2-D ``w0``).
    t : np.ndarray
        ``(nt,)``.
    """
    w0, squeeze = _as_batch("w0", w0, 2)
    s = _check_n("s (w0.shape[-1])", w0.shape[-1])
    if w0.shape[-2] != s:
        raise ValueError(f"w0 must be square (N, s, s), got shape {w0.shape}")
    nu = _positive("nu", nu)
    t_end = _positive("t_end", t_end)
    nt = _check_nt(nt)
    if dt is not None:
        dt = _positive("dt", dt)
    if isinstance(forcing, str):
        if forcing != "fno":
            raise ValueError(f"forcing must be 'fno', None or an array, got {forcing!r}")
        f = _fno_forcing(s)
    elif forcing is None:
        f = np.zeros((s, s))
    else:
        f = np.asarray(forcing, dtype=np.float64)
        if f.shape not in ((s, s), (w0.shape[0], s, s)):
            raise ValueError(f"forcing must have shape {(s, s)} or {w0.shape}, got {f.shape}")
        if not np.isfinite(f).all():
            raise ValueError("forcing has non-finite values")
    t = np.linspace(0.0, t_end, nt)
    dt_out = t_end / (nt - 1)

    kx = 2 * np.pi * np.fft.fftfreq(s, d=1.0 / s)[:, None]
    ky = 2 * np.pi * np.fft.rfftfreq(s, d=1.0 / s)[None, :]
    lam = kx**2 + ky**2  # -lap in Fourier
    inv_lam = np.zeros_like(lam)
    inv_lam[lam > 0] = 1.0 / lam[lam > 0]
    # derivative wavenumbers, zero at the Nyquist modes (odd derivative of a real field)
    dx_k = np.where(np.abs(kx) == np.pi * s, 0.0, kx) * np.ones_like(ky)
    dy_k = np.where(np.abs(ky) == np.pi * s, 0.0, ky) * np.ones_like(kx)
    mask = np.ones_like(lam)
    if dealias:
        kmax = 2 * np.pi * ((s - 1) // 3)
        mask[(np.abs(kx) > kmax) | (np.abs(ky) > kmax)] = 0.0
    f_hat = np.fft.rfft2(f)

    def velocity(w_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        psi = w_hat * inv_lam
        return np.fft.irfft2(1j * dy_k * psi, s=(s, s)), np.fft.irfft2(-1j * dx_k * psi, s=(s, s))

    def rhs(w_hat: np.ndarray) -> np.ndarray:
        """Fourier transform of ``f - u . grad w``."""
        u, v = velocity(w_hat)
        wx = np.fft.irfft2(1j * dx_k * w_hat, s=(s, s))
        wy = np.fft.irfft2(1j * dy_k * w_hat, s=(s, s))
        return f_hat - mask * np.fft.rfft2(u * wx + v * wy)

    out = np.empty((w0.shape[0], nt, s, s))
    out[:, 0] = w0
    w_hat = np.fft.rfft2(w0)
    for i in tqdm(range(1, nt), desc="navier_stokes_2d", disable=not progress, leave=False):
        if dt is None:
            u, v = velocity(w_hat)
            umax = float(np.sqrt(u**2 + v**2).max())
            h_max = dt_out if umax == 0 else min(dt_out, _CFL / (s * umax))
        else:
            h_max = dt
        n_sub = _substeps(dt_out, h_max)
        h = dt_out / n_sub
        a = 1.0 - 0.5 * h * nu * lam
        b = 1.0 / (1.0 + 0.5 * h * nu * lam)
        for _ in range(n_sub):
            r0 = rhs(w_hat)
            w_star = b * (a * w_hat + h * r0)
            w_hat = b * (a * w_hat + 0.5 * h * (r0 + rhs(w_star)))
        out[:, i] = np.fft.irfft2(w_hat, s=(s, s))
        if not np.isfinite(out[:, i]).all():
            raise FloatingPointError(
                f"navier_stokes_2d blew up before t={t[i]:.4g}: reduce dt (was {h:.3g})"
            )
    return (out[0] if squeeze else out), t
