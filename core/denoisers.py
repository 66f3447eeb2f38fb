"""Denoisers: everything in sigma space, ``D(x, sigma, cond) -> x0_hat`` with ``x = x0 + sigma * n``.

Networks trained in other parameterisations (eps, v, x0, flow velocity, discrete-time DDPM) are
wrapped by adapters that translate sigma and the state into the network's own variables, so
every sampler, guidance wrapper and posterior sampler in the core works with every model.
Tensors may have any rank: the first dimension is the batch, sigma broadcasts over the rest.

Network calling convention: ``net(x, noise_level, cond) -> Tensor`` with ``noise_level`` a float
tensor of shape ``(B,)`` (see :mod:`diffsci.core.networks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "Denoiser",
    "KarrasDenoiser",
    "EpsDenoiser",
    "X0Denoiser",
    "VPDenoiser",
    "FlowDenoiser",
    "as_sigma",
    "edm_loss",
]


@runtime_checkable
class Denoiser(Protocol):
    """Anything callable as ``D(x, sigma, cond=None) -> x0_hat``."""

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor: ...


def as_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Return sigma as a ``(B,)`` tensor on ``x``'s device, validating its values.

    Parameters
    ----------
    sigma
        A scalar, a 0-d tensor, or a ``(B,)`` tensor of noise levels.
    x
        The state, batch first.
    """
    if x.dim() < 1:
        raise ValueError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    if sigma.dim() == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(
            f"sigma must be a scalar or have shape (batch,)=({x.shape[0]},), got {tuple(sigma.shape)}"
        )
    return sigma


def _bc(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a ``(B,)`` tensor to broadcast against ``x`` of any rank."""
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1)))


class KarrasDenoiser(nn.Module):
    """EDM preconditioning (Karras et al. 2022) around a network ``F``.

    ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` with
    ``c_skip = sd^2/(s^2+sd^2)``, ``c_out = s sd / sqrt(s^2+sd^2)``, ``c_in = 1/sqrt(s^2+sd^2)``,
    ``c_noise = ln(s)/4``.

    Parameters
    ----------
    net
        Network called as ``net(x, noise_level, cond)``.
    sigma_data
        Standard deviation of the (normalised) data.
    train_sigma
        Training-sigma sampler ``(n, rng, device=) -> sigma`` that :func:`edm_loss` uses unless
        given another; default log-normal(-1.2, 1.2) as EDM. Conditional tasks whose target is
        nearly determined by the condition gain from more weight on large sigma (where the
        denoiser learns the conditional mean), e.g. ``LogNormalSigma(0.0, 1.2)``.
    regression_sigma
        PDE-Refiner's regression step (Lippe et al. 2023): at ``sigma >= regression_sigma`` the
        noisy input carries no information about the data, so ``F`` gets zeros instead of
        ``c_in x`` (standard-normal noise there) and the skip path is dropped:
        ``D = c_out F(0, c_noise)``, a deterministic regression on the condition. Without it
        the input noise enters the output twice: through ``c_skip x`` (``sd^2/sigma`` per
        value) and through whatever ``F`` fails to ignore. ``None`` (default): plain EDM.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        sigma_data: float = 0.5,
        train_sigma: Callable | None = None,
        regression_sigma: float | None = None,
    ) -> None:
        super().__init__()
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        if regression_sigma is not None and regression_sigma <= 0:
            raise ValueError(f"regression_sigma must be > 0 or None, got {regression_sigma}")
        self.net = net
        self.sigma_data = float(sigma_data)
        self.train_sigma = train_sigma
        self.regression_sigma = regression_sigma

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return ``(c_skip, c_out, c_in, c_noise)`` for a ``(B,)`` sigma."""
        sd2 = self.sigma_data**2
        s2 = sigma**2
        c_skip = sd2 / (s2 + sd2)
        c_out = sigma * self.sigma_data / (s2 + sd2).sqrt()
        c_in = 1.0 / (s2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        sigma = as_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        if self.regression_sigma is not None:
            keep = (sigma < self.regression_sigma).to(c_in.dtype)
            c_skip, c_in = c_skip * keep, c_in * keep
        f = self.net(_bc(c_in, x) * x, c_noise, cond)
        return _bc(c_skip, x) * x + _bc(c_out, x) * f.to(x.dtype)

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """EDM loss weight ``(s^2+sd^2)/(s sd)^2``: unit-variance targets for ``F``."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


class EpsDenoiser(nn.Module):
    """Adapter for a variance-exploding noise-prediction network ``eps(x, sigma)``.

    ``D(x, sigma) = x - sigma * eps``. The network receives ``noise_level = sigma`` scaled by
    ``noise_level_fn`` (default: identity).
    """

    def __init__(self, net: nn.Module, *, noise_level_fn: Callable[[Tensor], Tensor] | None = None):
        super().__init__()
        self.net = net
        self.noise_level_fn = noise_level_fn or (lambda s: s)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        sigma = as_sigma(sigma, x)
        eps = self.net(x, self.noise_level_fn(sigma), cond)
        return x - _bc(sigma, x) * eps.to(x.dtype)


class X0Denoiser(nn.Module):
    """Adapter for a network that predicts the clean sample directly: ``D = net(x, sigma)``."""

    def __init__(self, net: nn.Module, *, noise_level_fn: Callable[[Tensor], Tensor] | None = None):
        super().__init__()
        self.net = net
        self.noise_level_fn = noise_level_fn or (lambda s: s)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        sigma = as_sigma(sigma, x)
        return self.net(x, self.noise_level_fn(sigma), cond).to(x.dtype)


class VPDenoiser(nn.Module):
    """Adapter for variance-preserving models, discrete-time (DDPM) or continuous.

    A VP model sees ``x_t = sqrt(ab) x0 + sqrt(1-ab) eps``; in sigma space
    ``sigma = sqrt((1-ab)/ab)`` and ``x = x_t / sqrt(ab)``.

    Parameters
    ----------
    net
        Network called as ``net(x_t, t, cond)``.
    prediction
        What the network outputs: ``"eps"``, ``"v"`` (``sqrt(ab) eps - sqrt(1-ab) x0``) or ``"x0"``.
    alphas_cumprod
        Discrete-time table (length T, e.g. 1000): the network's timestep ``t`` for a given sigma
        is found by linear interpolation in log-sigma between table entries (fractional ``t``
        when the sigma is not on the grid; exact integers on it). If None, ``sigma_to_t`` must
        be given (continuous-time model).
    sigma_to_t
        Map from sigma to the network's continuous time variable.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        prediction: str = "eps",
        alphas_cumprod: Tensor | None = None,
        sigma_to_t: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if prediction not in ("eps", "v", "x0"):
            raise ValueError(f"prediction must be 'eps', 'v' or 'x0', got {prediction!r}")
        if (alphas_cumprod is None) == (sigma_to_t is None):
            raise ValueError("give exactly one of alphas_cumprod (discrete) or sigma_to_t")
        self.net = net
        self.prediction = prediction
        self.sigma_to_t = sigma_to_t
        if alphas_cumprod is not None:
            ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
            if ac.dim() != 1 or not bool(((ac > 0) & (ac < 1)).all()):
                raise ValueError("alphas_cumprod must be a 1-D table with values in (0, 1)")
            sig = ((1 - ac) / ac).sqrt()
            if not bool((sig[1:] > sig[:-1]).all()):
                raise ValueError("alphas_cumprod must be strictly decreasing")
            self.register_buffer("log_sigmas", sig.log(), persistent=False)
        else:
            self.log_sigmas = None

    @property
    def sigma_min(self) -> float:
        return float(self.log_sigmas[0].exp()) if self.log_sigmas is not None else 0.0

    @property
    def sigma_max(self) -> float:
        return float(self.log_sigmas[-1].exp()) if self.log_sigmas is not None else math.inf

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        """Network time for a ``(B,)`` sigma (fractional index into the discrete table)."""
        if self.sigma_to_t is not None:
            return self.sigma_to_t(sigma)
        ls = self.log_sigmas
        log_s = sigma.to(torch.float64).log().clamp(ls[0], ls[-1])
        hi = torch.searchsorted(ls, log_s).clamp(1, len(ls) - 1)
        lo = hi - 1
        w = (log_s - ls[lo]) / (ls[hi] - ls[lo])
        return (lo + w).to(sigma.dtype)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        sigma = as_sigma(sigma, x)
        sqrt_ab = _bc((1 + sigma**2).rsqrt(), x)  # sqrt(alpha_bar)
        x_t = x * sqrt_ab
        out = self.net(x_t, self.t_of_sigma(sigma), cond).to(x.dtype)
        if self.prediction == "eps":
            return torch.addcmul(x, _bc(sigma, x), out, value=-1)
        if self.prediction == "v":
            return sqrt_ab * x_t - _bc(sigma, x) * sqrt_ab * out  # sqrt(1-ab) = sigma sqrt(ab)
        return out


class FlowDenoiser(nn.Module):
    """Adapter for a flow-matching / rectified-flow velocity network.

    The model sees ``x_t = (1-t) x0 + t eps`` and predicts ``v = eps - x0``. In sigma space
    ``sigma = t/(1-t)`` and ``x = x_t/(1-t)``, so ``D = x_t - t v``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        sigma = as_sigma(sigma, x)
        t = sigma / (1 + sigma)
        x_t = x / _bc(1 + sigma, x)
        v = self.net(x_t, t, cond).to(x.dtype)
        return x_t - _bc(t, x) * v


def edm_loss(
    denoiser: KarrasDenoiser,
    x0: Tensor,
    rng,
    *,
    cond: Any = None,
    sigma_sampler: Callable | None = None,
) -> Tensor:
    """EDM denoising loss ``E[lambda(s) |D(x0 + s n, s) - x0|^2]``, mean over elements.

    Parameters
    ----------
    denoiser
        The preconditioned model (its ``loss_weight`` is used).
    x0
        Clean batch.
    rng
        A :class:`~diffsci.core.rng.ShardedRNG`; all randomness is drawn through it.
    sigma_sampler
        Callable ``(n, rng, device) -> sigma``; default the denoiser's ``train_sigma`` if it
        has one, else log-normal(-1.2, 1.2) as EDM.
    """
    from .schedules import LogNormalSigma

    if not torch.isfinite(x0).all():
        raise ValueError("x0 batch contains NaN or inf")
    sampler = sigma_sampler or getattr(denoiser, "train_sigma", None) or LogNormalSigma()
    sigma = sampler(x0.shape[0], rng, device=x0.device).to(x0.dtype)
    noise = rng.randn(x0.shape, device=x0.device, dtype=x0.dtype)
    x = x0 + _bc(sigma, x0) * noise
    d = denoiser(x, sigma, cond)
    w = denoiser.loss_weight(sigma)
    per_sample = ((d - x0) ** 2).flatten(1).mean(1)
    return (w * per_sample).mean()
