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
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .denoisers import Denoiser
from .schedules import check_sigmas

__all__ = [
    "sample_euler",
    "sample_heun",
    "sample_ddim",
    "sample_euler_ancestral",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "SAMPLERS",
    "get_sampler",
    "sample",
    "nfe",
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


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "ddim": sample_ddim,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
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


def sample(
    denoiser: Denoiser,
    shape: Sequence[int],
    sigmas: Tensor,
    *,
    sampler: str = "dpmpp_2m",
    cond: Any = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    callback: Callback = None,
    progress: bool = False,
    **options: Any,
) -> Tensor:
    """Draw ``randn(shape) * sigmas[0]`` from ``generator`` and run sampler ``sampler``.

    ``progress=True`` shows a progress bar (chained with any ``callback``).
    """
    sig = check_sigmas(sigmas)
    gdev = generator.device if generator is not None else device
    x = torch.randn(tuple(shape), generator=generator, device=gdev, dtype=dtype)
    x = x.to(device) * float(sig[0]) if device is not None else x * float(sig[0])
    fn = get_sampler(sampler)
    with ProgressBar(len(sig) - 1, desc=sampler, disable=not progress) as bar:

        def cb(info: dict) -> None:
            bar(info)
            if callback is not None:
                callback(info)

        return fn(denoiser, x, sig, cond=cond, generator=generator, callback=cb, **options)
