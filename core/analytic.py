"""Distributions with exact denoisers: the ground truth of the statistical test harness.

For a Gaussian mixture ``p(x0) = sum_k w_k N(mu_k, S_k)`` the noisy marginal is
``sum_k w_k N(mu_k, S_k + s^2 I)`` and the exact denoiser is

``E[x0 | x] = sum_k r_k(x) (mu_k + S_k (S_k + s^2 I)^-1 (x - mu_k))``

with ``r_k`` the component responsibilities under the noisy marginal. Plugging it into a
sampler isolates the sampler's own error from any learning error.

:class:`LinearGaussianProblem` gives the closed-form posterior of ``y = A x + n`` under a
Gaussian prior, and the exact likelihood ``p(y | x_sigma)`` for guidance.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["GaussianMixture", "LinearGaussianProblem"]


class GaussianMixture:
    """A mixture of full-covariance Gaussians in ``d`` dimensions, computed in float64.

    Parameters
    ----------
    weights
        (K,) mixture weights (normalised here).
    means
        (K, d) component means.
    covs
        (K, d, d) covariances (symmetric positive definite).
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        cov = torch.as_tensor(covs, dtype=torch.float64)
        if (
            mu.dim() != 2
            or cov.shape != (mu.shape[0], mu.shape[1], mu.shape[1])
            or w.shape != (mu.shape[0],)
        ):
            raise ValueError("need weights (K,), means (K, d), covs (K, d, d)")
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        torch.linalg.cholesky(cov)  # raises if not positive definite
        self.weights, self.means, self.covs = w / w.sum(), mu, cov
        self.dim = mu.shape[1]

    @classmethod
    def example_1d(cls) -> GaussianMixture:
        """Three well-separated unequal components in 1-D."""
        return cls(
            torch.tensor([0.3, 0.5, 0.2]),
            torch.tensor([[-2.0], [0.5], [2.5]]),
            torch.tensor([0.25, 0.09, 0.36]).reshape(3, 1, 1),
        )

    @classmethod
    def example_8d(cls, seed: int = 0) -> GaussianMixture:
        """Four components in 8-D with random means and correlated covariances."""
        g = torch.Generator().manual_seed(seed)
        means = 2.0 * torch.randn(4, 8, generator=g, dtype=torch.float64)
        a = 0.4 * torch.randn(4, 8, 8, generator=g, dtype=torch.float64)
        covs = a @ a.transpose(1, 2) + 0.05 * torch.eye(8, dtype=torch.float64)
        return cls(torch.tensor([0.1, 0.2, 0.3, 0.4]), means, covs)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples, float64 (n, d)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covs)
        return self.means[k] + (chol[k] @ z.unsqueeze(-1)).squeeze(-1)

    def _noisy(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.dim, dtype=torch.float64)
        c = self.covs.unsqueeze(0) + sigma.reshape(-1, 1, 1, 1) ** 2 * eye  # (B, K, d, d)
        return c, torch.linalg.cholesky(c)

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """Log density of the noisy marginal at level ``sigma`` (B,)."""
        x = x.to(torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        _, chol = self._noisy(sigma)
        diff = (x.unsqueeze(1) - self.means).unsqueeze(-1)  # (B, K, d, 1)
        sol = torch.linalg.solve_triangular(chol, diff, upper=False).squeeze(-1)
        logdet = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
        lp = -0.5 * (sol**2).sum(-1) - 0.5 * logdet - 0.5 * self.dim * math.log(2 * math.pi)
        return torch.logsumexp(lp + self.weights.log(), dim=1)

    def denoise(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Exact ``E[x0 | x0 + sigma n = x]``; returns ``x``'s dtype."""
        dtype = x.dtype
        x = x.to(torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0])
        c, chol = self._noisy(sigma)
        diff = (x.unsqueeze(1) - self.means).unsqueeze(-1)
        sol = torch.cholesky_solve(diff, chol)  # (S + s^2 I)^-1 (x - mu)
        post = self.means + (self.covs.unsqueeze(0) @ sol).squeeze(-1)  # (B, K, d)
        half = torch.linalg.solve_triangular(chol, diff, upper=False).squeeze(-1)
        logdet = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
        logr = -0.5 * (half**2).sum(-1) - 0.5 * logdet + self.weights.log()
        r = torch.softmax(logr, dim=1)
        return (r.unsqueeze(-1) * post).sum(1).to(dtype)

    def denoiser(self):
        """The exact denoiser as a callable ``D(x, sigma, cond=None)``."""

        def d(x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
            return self.denoise(x, sigma)

        return d


class LinearGaussianProblem:
    """Prior ``x ~ N(m, P)``, observation ``y = A x + n``, ``n ~ N(0, s^2 I)``.

    Parameters
    ----------
    mean, cov
        Prior mean (d,) and covariance (d, d).
    A
        Forward matrix (m, d).
    noise_std
        Observation noise ``s`` (may be 0 for exact constraints if ``A P A^T`` is invertible).
    """

    def __init__(self, mean: Tensor, cov: Tensor, A: Tensor, noise_std: float) -> None:
        self.m = torch.as_tensor(mean, dtype=torch.float64)
        self.P = torch.as_tensor(cov, dtype=torch.float64)
        self.A = torch.as_tensor(A, dtype=torch.float64)
        self.s = float(noise_std)
        self.prior = GaussianMixture(torch.ones(1), self.m[None], self.P[None])

    @classmethod
    def example(cls, d: int = 8, m: int = 3, noise_std: float = 0.3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
        cov = a @ a.T + 0.2 * torch.eye(d, dtype=torch.float64)
        A = torch.randn(m, d, generator=g, dtype=torch.float64) / math.sqrt(d)
        return cls(torch.randn(d, generator=g, dtype=torch.float64), cov, A, noise_std)

    def observe(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        x = x.to(torch.float64)
        y = x @ self.A.T
        return y + self.s * torch.randn(y.shape, generator=generator, dtype=torch.float64)

    def posterior(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Closed-form posterior mean (d,) and covariance (d, d) for one observation ``y`` (m,)."""
        y = torch.as_tensor(y, dtype=torch.float64)
        S = self.A @ self.P @ self.A.T + self.s**2 * torch.eye(len(y), dtype=torch.float64)
        K = torch.linalg.solve(S, self.A @ self.P).T  # P A^T S^-1
        return self.m + K @ (y - self.A @ self.m), self.P - K @ self.A @ self.P

    def log_likelihood(self, x: Tensor, sigma: Tensor | float, y: Tensor) -> Tensor:
        """Exact ``log p(y | x_sigma)`` (B,), differentiable in ``x``.

        ``x0 | x_sigma ~ N(mu(x), C)`` with ``C = P - P (P + s^2 I)^-1 P``, so
        ``y | x_sigma ~ N(A mu(x), A C A^T + s^2 I)``.
        """
        sig = float(torch.as_tensor(sigma).reshape(-1)[0])
        eye = torch.eye(len(self.m), dtype=torch.float64)
        G = torch.linalg.solve(self.P + sig**2 * eye, self.P)  # (P + s^2 I)^-1 P
        C = self.P - self.P @ G
        mu = self.m + (x.to(torch.float64) - self.m) @ G  # G symmetric-compatible: P(P+s2)^-1
        S = self.A @ C @ self.A.T + self.s**2 * torch.eye(len(y), dtype=torch.float64)
        r = torch.as_tensor(y, dtype=torch.float64) - mu @ self.A.T
        return -0.5 * (r @ torch.linalg.inv(S) * r).sum(-1)
