"""Guidance wrappers against exact Gaussian(-mixture) denoisers and closed-form posteriors.

Statistical tolerances are multiples of the Monte-Carlo standard error (SE): a mean over N
samples of std sigma has SE sigma/sqrt(N), a sample std has SE ~ sigma/sqrt(2(N-1)); we allow
5 SE (two-sided false-alarm probability 6e-7 per check). Seeds are fixed, so the outcome is
deterministic; the negative controls show the same checks fail for a wrong scale.
"""

from __future__ import annotations

import math
from functools import cache

import pytest
import torch

from diffsci.core.analytic import GaussianMixture, LinearGaussianProblem
from diffsci.core.guidance import ClassifierFreeGuidance, GradientGuidance, drop_condition
from diffsci.core.rng import ShardedRNG
from diffsci.core.samplers import get_sampler
from diffsci.core.schedules import karras

F64 = torch.float64
SIGMA_MAX = 80.0
N_SAMPLES = 4000
N_STEPS = 100


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny batched linear algebra: with 2 shared cores, intra-op threads only add contention
    # (measured 20-50x slower per denoiser call). Restored after the module.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# classifier-free guidance with exact class-conditional denoisers
# ---------------------------------------------------------------------------------------------

GM8 = GaussianMixture.example_8d()
NULL = 4  # label meaning "no condition" = the whole mixture


class ClassConditional:
    """Exact denoiser of ``GM8`` given a class: label k < 4 is component k, NULL the mixture."""

    def __init__(self) -> None:
        self.models = [
            GaussianMixture(torch.ones(1), GM8.means[k : k + 1], GM8.covs[k : k + 1])
            for k in range(4)
        ] + [GM8]
        self.calls = 0

    def __call__(self, x, sigma, cond):
        self.calls += 1
        lab = torch.as_tensor(cond).expand(x.shape[0])
        out = torch.stack([m.denoise(x, sigma) for m in self.models])
        return out[lab, torch.arange(x.shape[0])]


def _cfg_inputs():
    x0 = GM8.sample(16, generator=_g(0))
    sigma = torch.logspace(-2, 1.5, 16, dtype=F64)
    x = x0 + sigma[:, None] * torch.randn(16, 8, generator=_g(1), dtype=F64)
    cond = torch.randint(0, 4, (16,), generator=_g(2))
    return x, sigma, cond


def _null_batch(c):
    return torch.full_like(c, NULL)


def test_cfg_scale0_is_unconditional_and_scale1_is_conditional():
    x, sigma, cond = _cfg_inputs()
    den = ClassConditional()
    d_uncond = GM8.denoise(x, sigma)
    d_cond = den(x, sigma, cond)
    assert (d_cond - d_uncond).abs().max() > 0.1  # the two branches differ: the test has power
    out0 = ClassifierFreeGuidance(den, scale=0.0, null_cond=_null_batch)(x, sigma, cond)
    out1 = ClassifierFreeGuidance(den, scale=1.0, null_cond=_null_batch)(x, sigma, cond)
    torch.testing.assert_close(out0, d_uncond, rtol=0, atol=1e-12)
    torch.testing.assert_close(out1, d_cond, rtol=0, atol=1e-12)


@pytest.mark.parametrize("w", [-0.5, 0.3, 2.5, 7.0])
def test_cfg_is_linear_in_scale(w):
    x, sigma, cond = _cfg_inputs()
    den = ClassConditional()
    d_u, d_c = GM8.denoise(x, sigma), den(x, sigma, cond)
    out = ClassifierFreeGuidance(den, scale=w, null_cond=_null_batch)(x, sigma, cond)
    # rounding of |w| * O(10) values in float64
    torch.testing.assert_close(out, (1 - w) * d_u + w * d_c, rtol=0, atol=1e-11 * max(1.0, abs(w)))


def test_cfg_batched_path_equals_two_call_path():
    x, sigma, cond = _cfg_inputs()
    den_b, den_2 = ClassConditional(), ClassConditional()
    batched = ClassifierFreeGuidance(den_b, scale=3.0, null_cond=_null_batch)(x, sigma, cond)
    two = ClassifierFreeGuidance(den_2, scale=3.0, null_cond=NULL)(x, sigma, cond)  # int: 2 calls
    assert den_b.calls == 1 and den_2.calls == 2
    torch.testing.assert_close(batched, two, rtol=0, atol=1e-12)
    # scalar sigma is accepted and broadcast
    s = 0.7
    torch.testing.assert_close(
        ClassifierFreeGuidance(den_b, scale=3.0, null_cond=_null_batch)(x, s, cond),
        ClassifierFreeGuidance(den_2, scale=3.0, null_cond=NULL)(
            x, torch.full((16,), s, dtype=F64), cond
        ),
        rtol=0,
        atol=1e-12,
    )


def test_cfg_requires_a_condition():
    x, sigma, _ = _cfg_inputs()
    with pytest.raises(ValueError, match="needs a condition"):
        ClassifierFreeGuidance(ClassConditional(), scale=2.0, null_cond=NULL)(x, sigma, None)


# ---------------------------------------------------------------------------------------------
# gradient guidance with the exact Gaussian likelihood
# ---------------------------------------------------------------------------------------------

PROB = LinearGaussianProblem.example()
Y = PROB.observe(PROB.prior.sample(1, generator=_g(1)), generator=_g(2))[0]
POST_MEAN, POST_COV = PROB.posterior(Y)


def _loglik(x, sigma, cond):
    return PROB.log_likelihood(x, sigma, Y)


def _exact_posterior_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``E[x0 | x0 + sigma n = x, y]`` in precision form (independent of LinearGaussianProblem):
    ``Lambda = P^-1 + I/sigma^2 + A^T A/s^2``, mean ``Lambda^-1 (P^-1 m + x/sigma^2 + A^T y/s^2)``."""
    Pinv = torch.linalg.inv(PROB.P)
    eye = torch.eye(len(PROB.m), dtype=F64)
    lam = Pinv + eye / sigma**2 + PROB.A.T @ PROB.A / PROB.s**2
    rhs = Pinv @ PROB.m + x / sigma**2 + (PROB.A.T @ Y) / PROB.s**2
    return torch.linalg.solve(lam, rhs.T).T


def _transport_matrix(C: torch.Tensor, smax: float) -> torch.Tensor:
    """The probability-flow ODE of ``N(mu, C)`` maps ``x_T - mu`` to ``T (x_T - mu)`` with
    ``T = C^1/2 (C + smax^2 I)^-1/2`` (linear ODE ``dx/ds = s (C + s^2)^-1 (x - mu)``)."""
    ev, V = torch.linalg.eigh(C)
    ev = ev.clamp_min(0)
    return V @ torch.diag((ev / (ev + smax**2)).sqrt()) @ V.T


def test_closed_form_posterior_agrees_with_precision_form():
    # ties LinearGaussianProblem.posterior to the independent reference used below
    Pinv = torch.linalg.inv(PROB.P)
    lam = Pinv + PROB.A.T @ PROB.A / PROB.s**2
    torch.testing.assert_close(POST_COV, torch.linalg.inv(lam), rtol=0, atol=1e-12)
    mean = torch.linalg.solve(lam, Pinv @ PROB.m + PROB.A.T @ Y / PROB.s**2)
    torch.testing.assert_close(POST_MEAN, mean, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sigma", [0.02, 0.3, 1.5, 20.0])
def test_gradient_guidance_is_the_exact_posterior_denoiser(sigma):
    # Tweedie: E[x0 | x, y] = D(x) + sigma^2 grad_x log p(y | x_sigma) exactly.
    x = PROB.prior.sample(5, generator=_g(3)) + sigma * torch.randn(
        5, 8, generator=_g(4), dtype=F64
    )
    ref = _exact_posterior_denoiser(x, sigma)
    gg = GradientGuidance(PROB.prior.denoiser(), _loglik)(x, sigma)
    torch.testing.assert_close(gg, ref, rtol=0, atol=1e-9)
    half = GradientGuidance(PROB.prior.denoiser(), _loglik, scale=0.5)(x, sigma)
    # negative control: >= 1e5 x the tolerance even at sigma=0.02, where sigma^2 grad is small
    assert (half - ref).abs().max() > 1e-4


@cache
def _gg_samples(scale: float, n: int = N_SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    xT = SIGMA_MAX * torch.randn(n, 8, generator=_g(0), dtype=F64)
    G = GradientGuidance(PROB.prior.denoiser(), _loglik, scale=scale)
    return xT, get_sampler("heun")(G, xT, karras(N_STEPS, 0.002, SIGMA_MAX))


def _moment_failures(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> list[str]:
    """Per-dimension mean and std of ``x`` against a Gaussian ``N(mean, cov)``.

    Mean tolerance: 5 SE plus the exact bias of starting from ``N(0, smax^2 I)`` instead of the
    noisy marginal ``N(mean, cov + smax^2 I)``: the flow maps the start's mean error ``-mean`` to
    ``-T mean`` (|T| ~ std/smax, up to ~1.5 SE here). The std of the output is
    ``sqrt(diag(smax^2 T T^T))``, relatively ``O(std^2 / smax^2) < 1e-3`` below the target:
    negligible. Std tolerance: 5 SE with SE = std / sqrt(2 (N - 1)).
    """
    n = x.shape[0]
    std = cov.diag().sqrt()
    start_bias = (_transport_matrix(cov, SIGMA_MAX) @ mean).abs()
    out = []
    dm = (x.mean(0) - mean).abs()
    tol_m = 5 * std / math.sqrt(n) + start_bias
    ds = (x.std(0) - std).abs()
    tol_s = 5 * std / math.sqrt(2 * (n - 1))
    for i in range(x.shape[1]):
        if dm[i] > tol_m[i]:
            out.append(f"mean[{i}] off by {dm[i]:.4f} > {tol_m[i]:.4f}")
        if ds[i] > tol_s[i]:
            out.append(f"std[{i}] off by {ds[i]:.4f} > {tol_s[i]:.4f}")
    return out


def test_gradient_guidance_sampling_reproduces_the_posterior():
    _, x = _gg_samples(1.0)
    assert _moment_failures(x, POST_MEAN, POST_COV) == []


def test_gradient_guidance_with_half_scale_fails_the_same_check():
    _, x = _gg_samples(0.5)
    failures = _moment_failures(x, POST_MEAN, POST_COV)
    assert len(failures) >= 3, failures


def test_gradient_guidance_sampling_is_pathwise_exact():
    # Sharper than moments and free of MC noise: the guided ODE is the probability flow of the
    # Gaussian posterior, whose solution map is known. Heun's global error is O(h^2): measured
    # max |error| 1.6e-2 at 50 steps and 3.8e-3 at 100 steps; tolerance 2e-2 (5x margin).
    # The scale-0.5 flow lands ~1.5 away.
    T = _transport_matrix(POST_COV, SIGMA_MAX)
    for scale, expect_close in ((1.0, True), (0.5, False)):
        xT, x = _gg_samples(scale)
        err = float((x - (POST_MEAN + (xT - POST_MEAN) @ T.T)).abs().max())
        assert (err < 2e-2) == expect_close, (scale, err)


# ---------------------------------------------------------------------------------------------
# condition dropout
# ---------------------------------------------------------------------------------------------


def _rng(seed: int, **kw) -> ShardedRNG:
    return ShardedRNG(torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.75])
def test_drop_condition_rate(p):
    n = 100_000
    cond = torch.arange(n) % 10
    out = drop_condition(cond, -1, p, _rng(0))
    dropped = out == -1
    rate = dropped.double().mean().item()
    # binomial SE sqrt(p(1-p)/n) <= 1.6e-3; 5 SE
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n), rate
    assert torch.equal(out[~dropped], cond[~dropped])  # kept conditions are untouched


def test_drop_condition_extremes_and_rows():
    cond = torch.randn(50, 3, generator=_g(5))
    assert torch.equal(drop_condition(cond, 0.0, 0.0, _rng(0)), cond)
    assert torch.equal(drop_condition(cond, 0.0, 1.0, _rng(0)), torch.zeros_like(cond))
    # an embedding condition is dropped as a whole row
    out = drop_condition(cond, torch.full((3,), 9.0), 0.5, _rng(1))
    row_null = (out == 9.0).all(1)
    row_kept = (out == cond).all(1)
    assert bool((row_null | row_kept).all()) and 0 < int(row_null.sum()) < 50


def test_drop_condition_is_reproducible_and_sharded():
    cond = torch.arange(64)
    a = drop_condition(cond, -1, 0.5, _rng(7))
    b = drop_condition(cond, -1, 0.5, _rng(7))
    c = drop_condition(cond, -1, 0.5, _rng(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # two data-parallel ranks with the same generator state see the global pattern's slices
    r0 = drop_condition(cond[:32], -1, 0.5, _rng(7, rank=0, world_size=2))
    r1 = drop_condition(cond[32:], -1, 0.5, _rng(7, rank=1, world_size=2))
    assert torch.equal(torch.cat([r0, r1]), a)


@pytest.mark.parametrize("p", [-0.1, 1.1, float("nan")])
def test_drop_condition_rejects_bad_probability(p):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        drop_condition(torch.arange(4), -1, p, _rng(0))
