"""Guidance as denoiser wrappers: every sampler works unchanged with every kind of guidance.

- :class:`ClassifierFreeGuidance`: ``D_null + w (D_cond - D_null)``.
- :class:`GradientGuidance`: ``D + scale * sigma^2 * grad_x log p(y | x_sigma)`` (Tweedie: the
  posterior denoiser equals the prior one plus ``sigma^2`` times the likelihood score).
- :func:`drop_condition`: condition dropout at training time for classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .denoisers import Denoiser, _bc, as_sigma

__all__ = ["ClassifierFreeGuidance", "GradientGuidance", "drop_condition"]


class ClassifierFreeGuidance(nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022) in x0 space.

    Parameters
    ----------
    denoiser
        Conditional denoiser ``D(x, sigma, cond)``.
    scale
        Guidance weight ``w``: 0 = unconditional, 1 = conditional, > 1 = guided.
    null_cond
        The "no condition" value the model was trained with under dropout (or a callable
        ``cond -> null_cond``, e.g. to build a batch of null class labels).
    """

    def __init__(self, denoiser: Denoiser, *, scale: float, null_cond: Any) -> None:
        super().__init__()
        self.denoiser, self.scale, self.null_cond = denoiser, float(scale), null_cond

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        if cond is None:
            raise ValueError("ClassifierFreeGuidance needs a condition (cond=None given)")
        null = self.null_cond(cond) if callable(self.null_cond) else self.null_cond
        sigma = as_sigma(sigma, x)
        if isinstance(cond, Tensor) and isinstance(null, Tensor) and null.shape == cond.shape:
            # one batched network call for both branches
            both = self.denoiser(
                torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, null])
            )
            d_c, d_u = both.chunk(2)
        else:
            d_c = self.denoiser(x, sigma, cond)
            d_u = self.denoiser(x, sigma, null)
        return d_u + self.scale * (d_c - d_u)


class GradientGuidance(nn.Module):
    """``D'(x, s) = D(x, s) + scale * s^2 * grad_x log p(y | x)``.

    Parameters
    ----------
    denoiser
        Prior denoiser.
    log_likelihood
        ``(x, sigma, cond) -> (B,)`` log-likelihood of the observation given the noisy state,
        differentiable in ``x`` (e.g. a noise-aware classifier, or an exact Gaussian likelihood).
    scale
        Guidance strength (1 = Bayes' rule).
    """

    def __init__(
        self, denoiser: Denoiser, log_likelihood: Callable[..., Tensor], *, scale: float = 1.0
    ) -> None:
        super().__init__()
        self.denoiser, self.log_likelihood, self.scale = denoiser, log_likelihood, float(scale)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        sigma = as_sigma(sigma, x)
        d = self.denoiser(x, sigma, cond)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            ll = self.log_likelihood(xg, sigma, cond)
            (grad,) = torch.autograd.grad(ll.sum(), xg)
        return d + self.scale * _bc(sigma**2, x) * grad.to(x.dtype)


def drop_condition(cond: Tensor, null: Tensor | float | int, p: float, rng) -> Tensor:
    """Replace each sample's condition by ``null`` with probability ``p`` (CFG training).

    ``rng`` is a :class:`~diffsci.core.rng.ShardedRNG` so the dropout pattern is reproducible
    and identical between single-process and data-parallel runs.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1], got {p}")
    keep = rng.rand((cond.shape[0],), device=cond.device) >= p
    null_t = torch.as_tensor(null, device=cond.device, dtype=cond.dtype).expand_as(cond)
    return torch.where(_bc(keep, cond), cond, null_t)
