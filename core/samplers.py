"""Samplers: small pure functions over a descending sigma array (k-diffusion style).

Every sampler has the signature::

    sample_<name>(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, ...) -> Tensor

``x`` is the initial state at ``sigmas[0]`` (for generation: ``randn * sigmas[0]``; for warm
starts: a noised estimate). Sigma arithmetic is done once, up front, in float64 on the host, so
the loop never synchronises with the device. ``callback`` receives a dict with ``i``, ``x``,
``sigma``, ``sigma_next`` and ``denoised`` after every step (the CLI turns it into a progress
bar). Randomness comes only from ``generator``.

Lower-order final steps: the step to ``sigma = 0`` is always first order (``x = D(x)``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .denoisers import Denoiser
from .schedules import check_sigmas, default_sigmas, denoiser_sigma_info, start_std

__all__ = [
    "sample_euler",
    "sample_heun",
    "sample_ddim",
    "sample_euler_ancestral",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m",
    "sample_dpmpp_3m_sde",
    "sample_unipc",
    "sample_ipndm",
    "sample_dpm_solver_v3",
    "SAMPLERS",
    "get_sampler",
    "sample",
    "nfe",
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "ProgressBar",
]

Callback = Callable[[dict], Any] | None


def _prepare(x: Tensor, sigmas: Tensor) -> list[float]:
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise ValueError("x must be a tensor with a leading batch dimension")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("initial state x contains NaN or inf")
    return check_sigmas(sigmas).tolist()


def _call(denoiser: Denoiser, x: Tensor, s: float, cond: Any) -> Tensor:
    return denoiser(x, x.new_full((x.shape[0],), s), cond)


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    # Draw on the generator's device, then move: keeps CPU generators usable with CUDA states.
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)


def _cb(callback: Callback, i: int, x: Tensor, s: float, s_next: float, d: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": s, "sigma_next": s_next, "denoised": d})


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> Tensor:
    """Euler method for the probability-flow ODE (Karras et al. 2022, Alg. 1 without churn)."""
    s = _prepare(x, sigmas)
    for i in range(len(s) - 1):
        d = _call(denoiser, x, s[i], cond)
        # x + (x - d) (s' - s)/s as one fused kernel
        x = d if s[i + 1] == 0 else torch.lerp(x, d, (s[i] - s[i + 1]) / s[i])
        _cb(callback, i, x, s[i], s[i + 1], d)
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    callback: Callback = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """Heun's second-order method (EDM Alg. 2; ``s_churn > 0`` adds EDM's stochastic churn)."""
    s = _prepare(x, sigmas)
    n = len(s) - 1
    for i in range(n):
        sig, sig_next = s[i], s[i + 1]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= sig <= s_tmax else 0.0
        if gamma > 0:
            sig_hat = sig * (1 + gamma)
            x = x + _noise(x, generator) * (s_noise * math.sqrt(sig_hat**2 - sig**2))
            sig = sig_hat
        d = _call(denoiser, x, sig, cond)
        dx = (x - d) / sig
        x_next = x + dx * (sig_next - sig)
        if sig_next > 0:
            d2 = _call(denoiser, x_next, sig_next, cond)
            dx2 = (x_next - d2) / sig_next
            x_next = x + (dx + dx2) * (0.5 * (sig_next - sig))
        x = x_next
        _cb(callback, i, x, sig, sig_next, d)
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    callback: Callback = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021) in sigma space.

    With ``sigma_up = eta * sqrt(s'^2 (s^2 - s'^2) / s^2)`` (DDIM's ``sigma_t`` divided by
    ``sqrt(alpha_bar_prev)``) the update is ``x' = D + sqrt(s'^2 - sigma_up^2) (x - D)/s +
    sigma_up z``. ``eta=0`` is deterministic DDIM (= Euler on the ODE in this variable);
    ``eta=1`` is ancestral sampling (DDPM posterior variance).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    s = _prepare(x, sigmas)
    for i in range(len(s) - 1):
        sig, sig_next = s[i], s[i + 1]
        d = _call(denoiser, x, sig, cond)
        if sig_next == 0:
            x = d
        else:
            up = min(sig_next, eta * math.sqrt(sig_next**2 * (sig**2 - sig_next**2) / sig**2))
            down = math.sqrt(sig_next**2 - up**2)
            x = torch.lerp(d, x, down / sig)  # d + (x - d) down/sig
            if up > 0:
                x = x + _noise(x, generator) * up
        _cb(callback, i, x, sig, sig_next, d)
    return x


def sample_euler_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    callback: Callback = None,
    eta: float = 1.0,
) -> Tensor:
    """Euler ancestral (k-diffusion): identical to :func:`sample_ddim` with ``eta`` (default 1)."""
    return sample_ddim(
        denoiser, x, sigmas, cond=cond, generator=generator, callback=callback, eta=eta
    )


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), multistep, data prediction, first order at the ends."""
    s = _prepare(x, sigmas)
    old_d = None
    h_last = 0.0
    for i in range(len(s) - 1):
        sig, sig_next = s[i], s[i + 1]
        d = _call(denoiser, x, sig, cond)
        if sig_next == 0:
            x = d
        else:
            h = math.log(sig) - math.log(sig_next)  # lambda_next - lambda, lambda = -log sigma
            if old_d is None:
                d_hat = d
            else:
                r = h_last / h
                d_hat = torch.lerp(d, old_d, -1 / (2 * r))  # (1 + 1/2r) d - old_d / 2r
            x = torch.add(x * (sig_next / sig), d_hat, alpha=-math.expm1(-h))
            h_last = h
        old_d = d
        _cb(callback, i, x, sig, sig_next, d)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    callback: Callback = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(2M) SDE variant (midpoint), Gaussian noise from ``generator``."""
    s = _prepare(x, sigmas)
    old_d = None
    h_last = 0.0
    for i in range(len(s) - 1):
        sig, sig_next = s[i], s[i + 1]
        d = _call(denoiser, x, sig, cond)
        if sig_next == 0:
            x = d
        else:
            h = math.log(sig) - math.log(sig_next)
            eta_h = eta * h
            coef = -math.expm1(-h - eta_h)
            x = x * (sig_next / sig * math.exp(-eta_h)) + d * coef
            if old_d is not None:
                r = h_last / h
                x = x + (d - old_d) * (0.5 * coef / r)
            if eta > 0:
                x = x + _noise(x, generator) * (
                    sig_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
                )
            h_last = h
        old_d = d
        _cb(callback, i, x, sig, sig_next, d)
    return x


def _combine(x: Tensor, a: float, terms: Sequence[tuple[float, Tensor]]) -> Tensor:
    """``a x + sum_k c_k m_k`` with host-side float coefficients."""
    out = x * a
    for c, m in terms:
        out = out.add(m, alpha=c)
    return out


def _order_at(i: int, n: int, order: int, history: int, lower_order_final: bool) -> int:
    """Order of step ``i`` of ``n``: warm-up by ``history`` values, lowered at the end."""
    k = min(order, history)
    return min(k, n - i) if lower_order_final else k


@torch.no_grad()
def sample_dpmpp_3m_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    callback: Callback = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    lower_order_final: bool = True,
    compat: bool = False,
) -> Tensor:
    """DPM-Solver++(3M) SDE (Lu et al. 2022; k-diffusion's ``sample_dpmpp_3m_sde``).

    Third-order multistep in ``lambda = -log sigma`` with data prediction; ``eta`` scales the
    injected noise (``eta=0`` is the ODE solver :func:`sample_dpmpp_3m`). Warm-up: first
    order on the first step, second order on the second. ``lower_order_final`` lowers the
    order to ``min(3, steps left)`` at the end (as diffusers' ``lower_order_final``), and the
    step to ``sigma = 0`` is ``x = D(x)``.

    The third-order term uses the Taylor-exact weight: the second difference
    ``(d1_0 - d1_1) / (r0 + r1)`` estimates ``h^2 D''/2``, so it enters with ``2 phi_3``.
    k-diffusion's ``sample_dpmpp_3m_sde`` and diffusers' ``multistep_dpm_solver_third_order_
    update`` weight it by ``phi_3``, which leaves a second-order method;
    ``compat=True`` reproduces that update.

    References
    ----------
    C. Lu, Y. Zhou, F. Bao, J. Chen, C. Li, J. Zhu, "DPM-Solver++: Fast Solver for Guided
    Sampling of Diffusion Probabilistic Models", arXiv:2211.01095, 2022.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    s = _prepare(x, sigmas)
    n = len(s) - 1
    d1 = d2 = None  # the previous two denoised values
    h1 = h2 = 0.0  # and their step sizes in lambda
    for i in range(n):
        sig, sig_next = s[i], s[i + 1]
        d = _call(denoiser, x, sig, cond)
        if sig_next == 0:
            x = d
        else:
            h = math.log(sig) - math.log(sig_next)
            h_eta = h * (eta + 1)
            x = torch.add(x * math.exp(-h_eta), d, alpha=-math.expm1(-h_eta))
            k = _order_at(i, n, 3, 1 + (d1 is not None) + (d2 is not None), lower_order_final)
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if k == 3:
                r0, r1 = h1 / h, h2 / h
                d1_0 = (d - d1) / r0
                d1_1 = (d1 - d2) / r1
                dd = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                # x += phi_2 (d1_0 + r0 dd) - c phi_3 dd; dd ~ h^2 D''/2, so c = 2 is exact
                x = x + d1_0 * phi_2 + dd * (phi_2 * r0 - (1 if compat else 2) * phi_3)
            elif k == 2:
                x = x + (d - d1) * (phi_2 * h / h1)
            if eta > 0:
                x = x + _noise(x, generator) * (
                    sig_next * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
                )
            h1, h2 = h, h1
        d1, d2 = d, d1
        _cb(callback, i, x, sig, sig_next, d)
    return x


def sample_dpmpp_3m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    callback: Callback = None,
    lower_order_final: bool = True,
    compat: bool = False,
) -> Tensor:
    """DPM-Solver++(3M) for the probability-flow ODE (Lu et al. 2022), data prediction.

    :func:`sample_dpmpp_3m_sde` with ``eta=0``: deterministic, one network evaluation per
    step, first and second order on the first two steps (warm-up).

    References
    ----------
    C. Lu, Y. Zhou, F. Bao, J. Chen, C. Li, J. Zhu, "DPM-Solver++: Fast Solver for Guided
    Sampling of Diffusion Probabilistic Models", arXiv:2211.01095, 2022.
    """
    return sample_dpmpp_3m_sde(
        denoiser,
        x,
        sigmas,
        cond=cond,
        generator=generator,
        callback=callback,
        eta=0.0,
        lower_order_final=lower_order_final,
        compat=compat,
    )


def _unipc_coeffs(
    lam: Sequence[float], j: int, order: int, variant: str, corrector: bool
) -> tuple[float, list[float]]:
    """UniP (``corrector=False``) or UniC coefficients for the step ``j -> j + 1``.

    Returns ``(a, c)`` with ``x_{j+1} = a x_j + c[0] m_j + c[1] m_{j-1} + ... (+ c[-1] m_{j+1}
    for the corrector)``, ``m`` the data predictions, ``lam = -log sigma``. Follows
    ``multistep_uni_p_bh_update`` / ``multistep_uni_c_bh_update`` of diffusers (data
    prediction), in float64 on the host.
    """
    h = lam[j + 1] - lam[j]
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    rks = [(lam[j - k] - lam[j]) / h for k in range(1, order)] + [1.0]
    rows, b = [], []
    h_phi_k, fact = h_phi_1 / hh - 1, 1
    for i in range(1, order + 1):
        rows.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    if corrector:
        rhos = [0.5] if order == 1 else _solve(rows, b)
    elif order == 1:
        rhos = []
    else:
        rhos = [0.5] if order == 2 else _solve([r[:-1] for r in rows[:-1]], b[:-1])
    # D1_k = (m_{j-k} - m_j) / r_k for the history, D1_t = m_{j+1} - m_j for the corrector
    c_hist = [-b_h * rhos[k - 1] / rks[k - 1] for k in range(1, order)]
    c0 = -h_phi_1 - sum(c_hist)
    c = [c0, *c_hist]
    if corrector:
        c[0] += b_h * rhos[-1]
        c.append(-b_h * rhos[-1])
    return math.exp(hh), c


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Solve a small dense system in float64 on the host."""
    sol = torch.linalg.solve(
        torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    )
    return sol.tolist()


@torch.no_grad()
def sample_unipc(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    callback: Callback = None,
    order: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
) -> Tensor:
    """UniPC (Zhao et al. 2023): multistep predictor-corrector, data prediction.

    Each step evaluates the network once at the predictor's point; that evaluation also
    drives the corrector (UniC), which refines the state before the next predictor (UniP)
    step, so the corrector costs no extra evaluation. It is skipped at the last step (no
    evaluation at ``sigma = 0``, whose step is ``x = D(x)``), as in diffusers'
    ``UniPCMultistepScheduler``. ``order`` (1-3) is the predictor's order, reached after
    ``order - 1`` warm-up steps and lowered to the number of steps left when
    ``lower_order_final``; ``variant`` is ``"bh2"`` (``B(h) = e^h - 1``) or ``"bh1"``
    (``B(h) = h``). With ``corrector=False`` this is UniP alone.

    References
    ----------
    W. Zhao, L. Bai, Y. Rao, J. Zhou, J. Lu, "UniPC: A Unified Predictor-Corrector Framework
    for Fast Sampling of Diffusion Models", NeurIPS 2023, arXiv:2302.04867.
    """
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    s = _prepare(x, sigmas)
    n = len(s) - 1
    lam = [-math.log(v) if v > 0 else math.inf for v in s]
    ms: list[Tensor] = []  # data predictions, newest first
    x_prev, k_prev = x, 0
    for i in range(n):
        sig, sig_next = s[i], s[i + 1]
        d = _call(denoiser, x, sig, cond)
        if corrector and k_prev > 0:
            a, c = _unipc_coeffs(lam, i - 1, k_prev, variant, corrector=True)
            x = _combine(x_prev, a, [*zip(c[:-1], ms, strict=False), (c[-1], d)])
        ms = [d, *ms[: order - 1]]
        if sig_next == 0:
            x = d
        else:
            k_prev = _order_at(i, n, order, len(ms), lower_order_final)
            a, c = _unipc_coeffs(lam, i, k_prev, variant, corrector=False)
            x_prev, x = x, _combine(x, a, list(zip(c, ms, strict=False)))
        _cb(callback, i, x, sig, sig_next, d)
    return x


def _adams_bashforth(nodes: Sequence[float], t0: float, t1: float) -> list[float]:
    """``int_{t0}^{t1} L_k(t) dt`` for the Lagrange basis ``L_k`` over ``nodes`` (float64)."""
    out = []
    for k, tk in enumerate(nodes):
        poly = [1.0]  # coefficients of prod_{j != k} (t - t_j) / (t_k - t_j), lowest first
        for j, tj in enumerate(nodes):
            if j != k:
                scale = 1.0 / (tk - tj)
                poly = [
                    scale
                    * ((poly[m - 1] if m > 0 else 0.0) - tj * (poly[m] if m < len(poly) else 0.0))
                    for m in range(len(poly) + 1)
                ]
        out.append(sum(p * (t1 ** (m + 1) - t0 ** (m + 1)) / (m + 1) for m, p in enumerate(poly)))
    return out


@torch.no_grad()
def sample_ipndm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    callback: Callback = None,
    max_order: int = 4,
    lower_order_final: bool = True,
) -> Tensor:
    """iPNDM: multistep Adams-Bashforth on the probability-flow ODE ``dx/dsigma = (x - D)/sigma``.

    Zhang & Chen's improved pseudo numerical method (iPNDM, after Liu et al.'s PNDM) reuses
    the last ``max_order`` (1-4) slopes ``(x - D)/sigma``, with lower orders while the
    history fills up (warm-up). The coefficients are the variable-step Adams-Bashforth
    weights (integrals of the Lagrange basis over the step, computed on the host in
    float64), so any sigma grid keeps the order; on a uniform grid they are iPNDM's fixed
    weights ``(3, -1)/2``, ``(23, -16, 5)/12``, ``(55, -59, 37, -9)/24``. The step to
    ``sigma = 0`` is ``x = D(x)``; ``lower_order_final`` also caps the order by the number of
    steps left.

    References
    ----------
    Q. Zhang, Y. Chen, "Fast Sampling of Diffusion Models with Exponential Integrator", ICLR
    2023, arXiv:2204.13902. L. Liu, Y. Ren, Z. Lin, Z. Zhao, "Pseudo Numerical Methods for
    Diffusion Models on Manifolds", ICLR 2022, arXiv:2202.09778.
    """
    if max_order not in (1, 2, 3, 4):
        raise ValueError(f"max_order must be 1-4, got {max_order}")
    s = _prepare(x, sigmas)
    n = len(s) - 1
    eps: list[Tensor] = []  # slopes, newest first
    for i in range(n):
        sig, sig_next = s[i], s[i + 1]
        d = _call(denoiser, x, sig, cond)
        if sig_next == 0:
            x = d
        else:
            eps = [(x - d) / sig, *eps[: max_order - 1]]
            k = _order_at(i, n, max_order, len(eps), lower_order_final)
            w = _adams_bashforth(s[i::-1][:k], sig, sig_next)
            x = _combine(x, 1.0, list(zip(w, eps, strict=False)))
        _cb(callback, i, x, sig, sig_next, d)
    return x


def _v3_step(x: Tensor, i_s: int, i_t: int, points: Sequence[tuple[int, Tensor]], tab) -> Tensor:
    """DPM-Solver-v3's update from ``x`` at grid index ``i_s`` to ``i_t``.

    ``points`` are ``(grid index, f)`` with the first at ``i_s``; the others give the Taylor
    derivatives of ``g`` at ``lambda_s`` (a Vandermonde solve, the paper's non-pseudo order).
    """
    (_, g0), rest = points[0], points[1:]  # g = f at the expansion point
    out = tab.coef_x(i_s, i_t) * x - tab.coef_g0(i_s, i_t) * g0 - tab.coef_b(i_s, i_t)
    if rest:
        gs = [tab.g(f, i_s, j) for j, f in rest]
        dl = [tab.lam[j] - tab.lam[i_s] for j, _ in rest]
        n = len(rest)
        vander = torch.tensor(
            [[d**k / math.factorial(k) for k in range(1, n + 1)] for d in dl], dtype=torch.float64
        )
        inv = torch.linalg.inv(vander).tolist()
        for k in range(n):
            deriv = sum(inv[k][m] * (gs[m] - g0) for m in range(n))
            out = out - tab.coef_high(i_s, i_t, k + 1) * deriv
    return out


@torch.no_grad()
def sample_dpm_solver_v3(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    callback: Callback = None,
    ems: Any = None,
    order: int = 2,
    corrector: bool = True,
    lower_order_final: bool = True,
) -> Tensor:
    """DPM-Solver-v3 (Zheng et al. 2023): multistep predictor-corrector with the model's EMS.

    The ODE is solved for ``g``, the part of the network output that the empirical model
    statistics ``ems`` (:class:`~diffsci.core.ems.ModelStatistics`, from
    :func:`~diffsci.core.ems.compute_statistics`) leave to vary along the trajectory; the
    rest is integrated exactly. Each step evaluates the network once; with ``corrector``
    that evaluation first corrects the state it was made at (keeping the network's
    non-linear part ``f`` fixed, as the reference code does), then the predictor of
    ``order`` (1-3; lowered during warm-up and, with ``lower_order_final``, at the end)
    takes the step. The step to ``sigma = 0`` returns the (corrected) data prediction.
    ``ems=None`` uses ``l = 1, s = b = 0`` (the paper's degenerate case, DPM-Solver++ with
    exact exponential-integrator weights). The positive sigmas must lie inside the
    statistics' range (``ems.sigma_range``).

    References
    ----------
    K. Zheng, C. Lu, J. Chen, J. Zhu, "DPM-Solver-v3: Improved Diffusion ODE Solver with
    Empirical Model Statistics", NeurIPS 2023, arXiv:2310.13268 (code thu-ml/DPM-Solver-v3).
    """
    from .ems import V3Tables, degenerate_statistics

    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    s = _prepare(x, sigmas)
    pos = [v for v in s if v > 0]
    if ems is None:  # (a one-level schedule still needs a range to build the tables on)
        ems = degenerate_statistics(min(pos) / (1 + (len(pos) < 2)), max(pos))
    tab = V3Tables(ems, pos, x.device, x.dtype)
    n = len(s) - 1
    hist: list[tuple[int, Tensor]] = []  # (grid index, f), newest first
    x_prev, k_prev = x, 0
    for i in range(n):
        sig, sig_next = s[i], s[i + 1]
        j = tab.index[i]
        d = _call(denoiser, x, sig, cond)
        f = tab.one_minus_l(j) * x - d
        if corrector and k_prev > 0:
            pts = [hist[0], (j, f), *hist[1:k_prev]]
            x_new = _v3_step(x_prev, hist[0][0], j, pts, tab).to(x.dtype)
            d = d + tab.one_minus_l(j) * (x_new - x)  # f kept, state corrected
            x = x_new
        hist = [(j, f), *hist[: order - 1]]
        if sig_next == 0:
            x = d
        else:
            k_prev = _order_at(i, n, order, len(hist), lower_order_final)
            x_prev, x = x, _v3_step(x, j, tab.index[i + 1], hist[:k_prev], tab).to(x.dtype)
        _cb(callback, i, x, sig, sig_next, d)
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "ddim": sample_ddim,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m": sample_dpmpp_3m,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "unipc": sample_unipc,
    "ipndm": sample_ipndm,
    "dpm_solver_v3": sample_dpm_solver_v3,
}


def get_sampler(name: str) -> Callable[..., Tensor]:
    """Sampler function by name (see :data:`SAMPLERS`)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def nfe(name: str, steps: int) -> int:
    """Network evaluations used by sampler ``name`` with ``steps`` sigma intervals (last to 0)."""
    get_sampler(name)
    return 2 * steps - 1 if name == "heun" else steps


class ProgressBar:
    """A sampler ``callback`` that advances a tqdm bar once per step.

    Use as ``with ProgressBar(len(sigmas) - 1) as cb: sample_euler(..., callback=cb)``.
    """

    def __init__(self, total: int, *, desc: str = "sampling", disable: bool = False) -> None:
        self.bar = tqdm(total=total, desc=desc, disable=disable, unit="step")

    def __call__(self, info: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix(sigma=f"{info['sigma']:.3g}", refresh=False)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


DEFAULT_SAMPLER = "unipc"
DEFAULT_STEPS = 10


def sample(
    denoiser: Denoiser,
    shape: Sequence[int],
    sigmas: Tensor | None = None,
    *,
    steps: int | None = None,
    sampler: str | None = None,
    cond: Any = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    callback: Callback = None,
    progress: bool = False,
    optimize: bool = False,
    schedule_cache: str | os.PathLike | None = None,
    **options: Any,
) -> Tensor:
    """Draw an initial state from ``generator`` and run sampler ``sampler`` over ``sigmas``.

    With ``sigmas`` given, the start is ``randn(shape) * sigmas[0]`` and the sampler defaults
    to ``"dpmpp_2m"``. Without them, the defaults are tuned for few steps: ``steps``
    (default :data:`DEFAULT_STEPS`) network evaluations of :data:`DEFAULT_SAMPLER` (UniPC,
    Zhao et al. 2023) over :func:`~diffsci.core.schedules.default_sigmas`, whose range
    follows the denoiser's ``sigma_data`` and training range, and the start is drawn with
    the noisy marginal's variance, ``randn * sqrt(sigma_max^2 + sigma_data^2)`` (a
    ``sigma_max`` a few ``sigma_data`` up is no longer much larger than the data's scale).
    ``optimize=True`` (without sigmas) replaces that schedule by
    :func:`~diffsci.core.schedule_opt.optimize_sigmas` for this denoiser, sampler and NFE
    (an optimisation of a few hundred short runs the first time, cached per denoiser, and on
    disk in ``schedule_cache`` per network weights when given).
    ``progress=True`` shows a progress bar (chained with any ``callback``).
    """
    sd = None
    if sigmas is None:
        n = DEFAULT_STEPS if steps is None else steps
        sampler = DEFAULT_SAMPLER if sampler is None else sampler
        if schedule_cache is not None and not optimize:
            raise ValueError("schedule_cache keeps optimised schedules: pass optimize=True too")
        if optimize:
            from .schedule_opt import optimize_sigmas

            sig = optimize_sigmas(
                denoiser,
                n,
                tuple(shape[1:]),
                sampler=sampler,
                dtype=dtype,
                device=device,
                cache_dir=schedule_cache,
            )
        else:
            sig = default_sigmas(denoiser, n, sampler=sampler)
        sd = denoiser_sigma_info(denoiser)["sigma_data"]
    elif steps is not None or optimize or schedule_cache is not None:
        raise ValueError("give either sigmas or steps/optimize/schedule_cache, not both")
    else:
        sampler = "dpmpp_2m" if sampler is None else sampler
        sig = check_sigmas(sigmas)
    fn = get_sampler(sampler)
    scale = start_std(sig, sd)
    gdev = generator.device if generator is not None else device
    x = torch.randn(tuple(shape), generator=generator, device=gdev, dtype=dtype)
    x = x.to(device) * scale if device is not None else x * scale
    with ProgressBar(len(sig) - 1, desc=sampler, disable=not progress) as bar:

        def cb(info: dict) -> None:
            bar(info)
            if callback is not None:
                callback(info)

        return fn(denoiser, x, sig, cond=cond, generator=generator, callback=cb, **options)
