"""Posterior sampling for inverse problems ``y = A(x) + n`` from a diffusion prior.

The pieces are denoiser wrappers (so any sampler drives them) plus two loops that are not
sampler steps (RED-Diff's optimisation and warm starts):

- :class:`DPS`: likelihood score by a vector-Jacobian product through ``D`` (Chung et al. 2023),
  with the optional PiGDM variance ``r^2 = s^2 sd^2/(s^2+sd^2)`` of ``x0 | x_sigma`` (Song et al.
  2023). For an isotropic Gaussian prior and an operator with orthonormal rows this
  likelihood is exact, which the test harness uses.
- :class:`DataConsistency`: hard projection ``D + A^+(y - A D)`` (noiseless data).
- :class:`ProximalDataStep`: ``argmin |A x - y|^2/(2 s^2) + lam/(2 sigma^2) |x - D|^2``
  (DiffPIR-like; for noisy data).
- :func:`red_diff`: RED-Diff (Mardani et al. 2023), variational, no VJP through the network.
- :func:`start_from`: SDEdit/CCDF warm start: noise an estimate to ``sigma_start`` and
  continue the reverse process from there.
- :func:`ddrm_denoise`: DDRM's update for ``y = x + n`` with per-entry noise std (Kawar et al.
  2022), the loop DDS2M runs its untrained network in.
- :class:`JointPosterior`: two priors (signal + structured noise, ``y = A x + gamma h + n``)
  sampled jointly by one solver over the stacked state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .denoisers import Denoiser, _bc, as_sigma
from .operators import LinearOperator
from .samplers import get_sampler, sample
from .schedules import check_sigmas

__all__ = [
    "DPS",
    "DataConsistency",
    "ProximalDataStep",
    "red_diff",
    "start_from",
    "ddrm_denoise",
    "JointPosterior",
    "x0_variance",
    "Reconstruction",
    "data_term",
    "reconstruct",
    "METHODS",
]


def x0_variance(sigma: Tensor, sigma_data: float) -> Tensor:
    """``Var[x0 | x_sigma]`` per element for an isotropic Gaussian prior of std ``sigma_data``."""
    return sigma**2 * sigma_data**2 / (sigma**2 + sigma_data**2)


def _check_y(y: Tensor) -> Tensor:
    if not isinstance(y, Tensor):
        y = torch.as_tensor(y)
    if not bool(torch.isfinite(y).all()):
        raise ValueError("observation y contains NaN or inf")
    return y


class DPS(nn.Module):
    """Diffusion posterior sampling: ``D + scale * sigma^2 * grad_x log N(y; A D(x), v I)``.

    Parameters
    ----------
    denoiser
        Prior denoiser.
    operator
        Forward model (any callable differentiable in its input; a :class:`LinearOperator`).
    y
        Observation, shaped like ``operator(x)``.
    noise_std
        Observation noise std ``s``.
    scale
        Step size multiplier (1 = the Gaussian likelihood as stated).
    sigma_data
        If given, ``v = s^2 + x0_variance(sigma, sigma_data)`` (PiGDM); else ``v = s^2`` (DPS).
        Plain DPS with small ``s`` takes very large steps at high sigma: prefer PiGDM or a
        smaller ``scale`` there.
    variance
        Callable ``sigma -> v`` overriding both (used by :class:`JointPosterior`).
    """

    def __init__(
        self,
        denoiser: Denoiser,
        operator: Callable[[Tensor], Tensor],
        y: Tensor,
        *,
        noise_std: float,
        scale: float = 1.0,
        sigma_data: float | None = None,
        variance: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if noise_std == 0 and sigma_data is None and variance is None:
            raise ValueError("DPS with noise_std=0 needs sigma_data or variance (else 1/0 steps)")
        self.denoiser, self.operator, self.y = denoiser, operator, _check_y(y)
        self.noise_std, self.scale, self.sigma_data, self.variance = (
            noise_std,
            scale,
            sigma_data,
            variance,
        )

    def _var(self, sigma: Tensor) -> Tensor:
        if self.variance is not None:
            return self.variance(sigma)
        v = torch.full_like(sigma, self.noise_std**2)
        return v + x0_variance(sigma, self.sigma_data) if self.sigma_data is not None else v

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        sigma = as_sigma(sigma, x)
        if self.y.dim() > 0 and self.y.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"y batch {self.y.shape[0]} != x batch {x.shape[0]}")
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            d = self.denoiser(xg, sigma, cond)
            r = self.y.to(device=d.device) - self.operator(d)
            ll = -(r.abs() ** 2).flatten(1).sum(1) / (2 * self._var(sigma).to(r.real.dtype))
            (grad,) = torch.autograd.grad(ll.sum(), xg)
        return d.detach() + self.scale * _bc(sigma**2, x) * grad.to(x.dtype)


class DataConsistency(nn.Module):
    """Hard data consistency: project the denoised estimate onto ``{x : A x = y}``.

    ``D' = D + A^+ (y - A D)``. For a mask this replaces the observed entries by ``y``; for
    undersampled MRI it replaces the sampled k-space. The last step of a sampler returns
    ``D'`` itself, so the final sample satisfies the data exactly (to solver precision).
    """

    def __init__(self, denoiser: Denoiser, operator: LinearOperator, y: Tensor) -> None:
        super().__init__()
        self.denoiser, self.operator, self.y = denoiser, operator, _check_y(y)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        d = self.denoiser(x, sigma, cond)
        r = self.y.to(d.device) - self.operator.forward(d)
        return d + self.operator.pinv(r).to(d.dtype)


class ProximalDataStep(nn.Module):
    """Proximal data step (DiffPIR-like) on the denoised estimate.

    ``D' = argmin_x |A x - y|^2 / (2 s^2) + lam / (2 sigma^2) |x - D|^2``: ``D`` is treated as a
    Gaussian estimate of variance ``sigma^2 / lam``.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        operator: LinearOperator,
        y: Tensor,
        *,
        noise_std: float,
        lam: float = 1.0,
    ) -> None:
        super().__init__()
        if noise_std <= 0 or lam <= 0:
            raise ValueError(
                f"noise_std and lam must be > 0 (got {noise_std}, {lam}); "
                "for noiseless data use DataConsistency"
            )
        self.denoiser, self.operator, self.y = denoiser, operator, _check_y(y)
        self.noise_std, self.lam = float(noise_std), float(lam)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        sigma = as_sigma(sigma, x)
        d = self.denoiser(x, sigma, cond)
        rho = _bc(self.lam / sigma**2, d)
        return self.operator.prox_l2(d, self.y.to(d.device), rho, noise_std=self.noise_std)


def red_diff(
    denoiser: Denoiser,
    operator: Callable[[Tensor], Tensor],
    y: Tensor,
    x_init: Tensor,
    sigmas: Tensor,
    *,
    noise_std: float,
    lam: float = 0.25,
    lr: float = 0.1,
    cond: Any = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """RED-Diff: minimise ``|A mu - y|^2 / (2 s^2) + lam * sum_t <sg(mu - D(mu + sigma_t e)), mu>``.

    One Adam step per sigma (descending, zeros dropped). The regulariser's gradient is
    ``lam * (mu - D(mu + sigma e, sigma))`` (RED-Diff's noise residual with its ``sigma/alpha``
    weighting, written in sigma space): no backpropagation through the network. Returns the
    estimate ``mu`` (a MAP-like point estimate, not a posterior sample).
    """
    y = _check_y(y)
    s = check_sigmas(sigmas)
    s = s[s > 0].tolist()
    mu = x_init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([mu], lr=lr)
    gdev = generator.device if generator is not None else mu.device
    for sig in tqdm(s, disable=not progress, desc="red-diff"):
        e = torch.randn(mu.shape, generator=generator, device=gdev, dtype=mu.dtype).to(mu.device)
        with torch.no_grad():
            d = denoiser(mu + sig * e, mu.new_full((mu.shape[0],), sig), cond)
        opt.zero_grad(set_to_none=True)
        data = (y.to(mu.device) - operator(mu)).abs().pow(2).sum() / (2 * noise_std**2)
        reg = lam * ((mu - d).detach() * mu).sum()
        (data + reg).backward()
        opt.step()
    return mu.detach()


def start_from(
    denoiser: Denoiser,
    x_init: Tensor,
    sigmas: Tensor,
    *,
    sigma_start: float,
    sampler: str = "dpmpp_2m",
    cond: Any = None,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], Any] | None = None,
    **options: Any,
) -> Tensor:
    """Warm start (SDEdit / CCDF): ``x = x_init + sigma_start * n``, then the reverse process
    over the part of ``sigmas`` below ``sigma_start``.

    If ``x_init`` is a sample of the data distribution the result is too (the noised state has
    the exact marginal at ``sigma_start``); with an estimate (previous frame, a baseline
    reconstruction) it saves most of the steps.
    """
    s = check_sigmas(sigmas)
    if not 0 < sigma_start <= float(s[0]):
        raise ValueError(f"sigma_start={sigma_start} must be in (0, sigmas[0]={float(s[0]):.4g}]")
    rest = s[s < sigma_start]
    sched = torch.cat([torch.tensor([float(sigma_start)], dtype=torch.float64), rest])
    gdev = generator.device if generator is not None else x_init.device
    n = torch.randn(x_init.shape, generator=generator, device=gdev, dtype=x_init.dtype)
    x = x_init + sigma_start * n.to(x_init.device)
    return get_sampler(sampler)(
        denoiser, x, sched, cond=cond, generator=generator, callback=callback, **options
    )


@torch.no_grad()
def ddrm_denoise(
    denoiser: Denoiser,
    y: Tensor,
    noise_std: Tensor | float,
    sigmas: Tensor,
    *,
    eta: float = 0.85,
    eta_b: float = 1.0,
    cond: Any = None,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], Any] | None = None,
) -> Tensor:
    """DDRM for denoising, ``y = x + n``, ``n ~ N(0, diag(s^2))``, in sigma (VE) form.

    Kawar et al., "Denoising Diffusion Restoration Models", NeurIPS 2022, Eq. 7-8 with
    ``H = I`` (every singular value 1): from ``x = y + sqrt(sigma_0^2 - s^2) z`` (entries
    with ``s >= sigma_0`` start at ``y``), each step takes ``x0 = D(x, sigma_i)`` and, per
    entry,

    - where ``sigma_{i+1} >= s`` (noisier than the data): ``x = eta_b y + (1 - eta_b) x0 +
      sqrt(sigma_{i+1}^2 - eta_b^2 s^2) z``;
    - where ``sigma_{i+1} < s``: ``x = x0 + sqrt(1 - eta^2) sigma_{i+1} (y - x0) / s +
      eta sigma_{i+1} z``.

    The last step (``sigma = 0``) returns ``x0``. DDRM is not an exact posterior sampler: for
    a Gaussian prior its output is pulled towards ``y`` relative to the posterior mean (the
    tests check the moments these rules give). DDS2M (Miao et al., ICCV 2023) uses this loop
    with ``eta_b = 1`` and an untrained denoiser. ``noise_std`` broadcasts against ``y``; an
    entry with zero noise returns ``y``.
    """
    y = _check_y(y)
    s = torch.as_tensor(noise_std, dtype=y.dtype, device=y.device).expand_as(y)
    sig = check_sigmas(sigmas).tolist()
    gdev = generator.device if generator is not None else y.device

    def randn() -> Tensor:
        return torch.randn(y.shape, generator=generator, device=gdev, dtype=y.dtype).to(y.device)

    x = y + (sig[0] ** 2 - s**2).clamp_min(0).sqrt() * randn()
    for i, (cur, nxt) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        x0 = denoiser(x, x.new_full((x.shape[0],), cur), cond)
        z = randn()
        above = eta_b * y + (1 - eta_b) * x0 + (nxt**2 - eta_b**2 * s**2).clamp_min(0).sqrt() * z
        below = x0 + math.sqrt(1 - eta**2) * nxt * (y - x0) / s + eta * nxt * z
        x = torch.where(s <= nxt, above, below)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": cur, "denoised": x0})
    return x


class _Stacked(nn.Module):
    """Apply one denoiser per block of a flattened, stacked state ``(B, n1 + n2)``."""

    def __init__(self, denoisers: Sequence[Denoiser], shapes: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.denoisers = list(denoisers)
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [int(torch.Size(s).numel()) for s in self.shapes]

    def split(self, z: Tensor) -> list[Tensor]:
        if z.dim() != 2 or z.shape[1] != sum(self.sizes):
            raise ValueError(f"stacked state must be (B, {sum(self.sizes)}), got {tuple(z.shape)}")
        return [
            p.reshape(z.shape[0], *s)
            for p, s in zip(z.split(self.sizes, 1), self.shapes, strict=True)
        ]

    def stack(self, parts: Sequence[Tensor]) -> Tensor:
        return torch.cat([p.flatten(1) for p in parts], 1)

    def forward(self, z: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        conds = cond if isinstance(cond, (list, tuple)) else [cond] * len(self.denoisers)
        parts = self.split(z)
        return self.stack(
            [d(p, sigma, c) for d, p, c in zip(self.denoisers, parts, conds, strict=True)]
        )


class JointPosterior(nn.Module):
    """Joint posterior of a signal ``x`` and structured noise ``h`` with ``y = A x + gamma h + n``.

    Both priors are diffused with the same sigma and driven by one solver over the stacked
    state ``z = [x, h]`` (flattened, ``(B, n_x + n_h)``); the coupling is a DPS/PiGDM likelihood
    term with variance ``s^2 + r_x^2 + gamma^2 r_h^2`` (exact for isotropic Gaussian priors and
    an operator with orthonormal rows). Use :meth:`initial` and :meth:`split` around a sampler.

    Parameters
    ----------
    denoiser_x, denoiser_h
        Prior denoisers of the signal and of the structured noise.
    shape_x, shape_h
        Per-sample shapes (without batch) of ``x`` and ``h``.
    y
        Observation.
    operator
        Forward model of the signal (default identity).
    gamma
        Weight of the structured noise in the observation.
    noise_std
        Std of the unstructured observation noise.
    sigma_data_x, sigma_data_h
        Data std of each prior (for the PiGDM variance).
    scale
        Guidance step multiplier.
    """

    def __init__(
        self,
        denoiser_x: Denoiser,
        denoiser_h: Denoiser,
        *,
        shape_x: Sequence[int],
        shape_h: Sequence[int],
        y: Tensor,
        operator: Callable[[Tensor], Tensor] | None = None,
        gamma: float = 1.0,
        noise_std: float = 0.0,
        sigma_data_x: float = 0.5,
        sigma_data_h: float = 0.5,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.prior = _Stacked([denoiser_x, denoiser_h], [shape_x, shape_h])
        op = operator if operator is not None else (lambda v: v)
        self.gamma = float(gamma)

        def joint_op(z: Tensor) -> Tensor:
            x, h = self.prior.split(z)
            return op(x) + self.gamma * h

        def variance(sigma: Tensor) -> Tensor:
            return (
                noise_std**2
                + x0_variance(sigma, sigma_data_x)
                + self.gamma**2 * x0_variance(sigma, sigma_data_h)
            )

        self.dps = DPS(self.prior, joint_op, y, noise_std=noise_std, scale=scale, variance=variance)

    def initial(
        self,
        batch: int,
        sigma_max: float,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> Tensor:
        """Initial stacked state ``randn * sigma_max``."""
        n = sum(self.prior.sizes)
        gdev = generator.device if generator is not None else device
        z = torch.randn(batch, n, generator=generator, device=gdev, dtype=dtype) * sigma_max
        return z.to(device) if device is not None else z

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, h)`` from a stacked state."""
        x, h = self.prior.split(z)
        return x, h

    def forward(self, z: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        return self.dps(z, sigma, cond)


@dataclass(frozen=True)
class Reconstruction:
    """Posterior samples of one inverse problem and their pixel-wise summaries.

    ``samples`` is ``(n_samples, *shape)``; ``mean`` and ``std`` (unbiased, over samples; zero
    for a single sample) are taken along the first axis.
    """

    samples: Tensor

    @property
    def mean(self) -> Tensor:
        return self.samples.mean(0)

    @property
    def std(self) -> Tensor:
        if self.samples.shape[0] < 2:
            return torch.zeros_like(self.samples[0])
        return self.samples.std(0)


METHODS = ("hard_dc", "dps", "pigdm", "prox")


def data_term(
    prior: Denoiser,
    physics: LinearOperator,
    y: Tensor,
    *,
    method: str,
    noise_std: float = 0.0,
    sigma_data: float | None = None,
    lam: float = 1.0,
) -> nn.Module:
    """The prior wrapped with the data term of ``method`` for ``y = A x + n``, ``n ~ N(0, s^2)``.

    - ``"hard_dc"``: :class:`DataConsistency` (noiseless data; ``noise_std`` must be 0).
    - ``"dps"``: :class:`DPS` with the Gaussian likelihood of std ``noise_std`` (Chung et al.
      2023); ``"pigdm"``: the same with the PiGDM variance of ``x0 | x_sigma`` for a prior of
      std ``sigma_data`` (Song et al. 2023).
    - ``"prox"``: :class:`ProximalDataStep` with weight ``lam`` (DiffPIR-like).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "hard_dc":
        if noise_std:
            raise ValueError(f"method 'hard_dc' is for noiseless data, got noise_std={noise_std}")
        return DataConsistency(prior, physics, y)
    if noise_std <= 0:
        raise ValueError(f"method {method!r} needs noise_std > 0 (noiseless data: 'hard_dc')")
    if method == "prox":
        return ProximalDataStep(prior, physics, y, noise_std=noise_std, lam=lam)
    if method == "pigdm" and sigma_data is None:
        raise ValueError("method 'pigdm' needs the prior's sigma_data")
    sd = sigma_data if method == "pigdm" else None
    return DPS(prior, physics, y, noise_std=noise_std, sigma_data=sd)


@torch.no_grad()
def reconstruct(
    prior: Denoiser,
    physics: LinearOperator,
    y: Tensor,
    *,
    sigmas: Tensor,
    shape: Sequence[int],
    method: str = "hard_dc",
    noise_std: float = 0.0,
    sampler: str = "dpmpp_2m",
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    init: Tensor | None = None,
    start_sigma: float | None = None,
    cond: Any = None,
    sigma_data: float | None = None,
    lam: float = 1.0,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    **options: Any,
) -> Reconstruction:
    """Posterior samples of ``x`` given ``y = physics(x) + n``: the one driver every domain uses.

    deepinv's call shape ``(y, physics)``: ``physics`` is a
    :class:`~diffsci.core.operators.LinearOperator` acting on the prior's variable, ``y`` is in
    its range and ``noise_std`` in its units. Each of the ``n_samples`` samples draws its own
    initial noise ``randn(shape) * sigmas[0]`` from ``generator`` (samples are drawn one after
    the other, so a fixed generator gives the same samples whatever ``n_samples``' batching)
    and runs ``sampler`` on :func:`data_term` (``method``, ``noise_std``, ``sigma_data``,
    ``lam``) in ``dtype``. ``init`` with ``start_sigma``: SDEdit/CCDF warm start from an estimate
    (:func:`start_from`; Chung, Sim & Ye, CVPR 2022). ``options`` go to the sampler (e.g.
    ``eta``).
    """
    if (init is None) != (start_sigma is None):
        raise ValueError("a warm start needs both init and start_sigma")
    shape = tuple(int(s) for s in shape)
    if init is not None and tuple(init.shape) != shape:
        raise ValueError(f"init has shape {tuple(init.shape)}, expected {shape}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    y = _check_y(y)
    sig = check_sigmas(sigmas)
    den = data_term(
        prior, physics, y, method=method, noise_std=noise_std, sigma_data=sigma_data, lam=lam
    )
    out = []
    for _ in tqdm(range(n_samples), disable=not progress, desc=f"posterior ({method})"):
        if init is not None:
            z = start_from(
                den,
                init.to(y.device),
                sig,
                sigma_start=float(start_sigma),
                sampler=sampler,
                cond=cond,
                generator=generator,
                **options,
            )
        else:
            z = sample(
                den,
                shape,
                sig,
                sampler=sampler,
                cond=cond,
                generator=generator,
                device=y.device,
                dtype=dtype,
                **options,
            )
        out.append(z)
    return Reconstruction(torch.stack(out))
