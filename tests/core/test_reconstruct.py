"""``posterior.reconstruct``: the one inverse-problem driver every domain calls.

Exact-score checks on an isotropic Gaussian prior observed through a coordinate mask, where
PiGDM's likelihood is exact and the posterior is closed form (``LinearGaussianProblem``), plus
the driver's bookkeeping: it is the same computation as composing ``data_term`` and
``samplers.sample`` by hand, sample by sample, and bad arguments are refused.
"""

from __future__ import annotations

import pytest
import torch

from diffsci.core.analytic import GaussianMixture, LinearGaussianProblem
from diffsci.core.operators import MatrixOperator
from diffsci.core.posterior import Reconstruction, data_term, reconstruct
from diffsci.core.samplers import sample
from diffsci.core.schedules import karras

F64 = torch.float64
D, SD, S = 6, 1.3, 0.2
M = torch.linspace(-1, 1, D, dtype=F64)
PRIOR = GaussianMixture(torch.ones(1), M[None], (SD**2 * torch.eye(D, dtype=F64))[None])
OBS = torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.bool)
A = torch.eye(D, dtype=F64)[OBS]  # orthonormal rows: PiGDM's likelihood is exact
OP = MatrixOperator(A)
Y = torch.tensor([0.7, -0.4, 1.9], dtype=F64)
N = 3000


def _run(method: str, noise_std: float, *, n_samples: int = 2, seed: int = 0) -> Reconstruction:
    return reconstruct(
        PRIOR.denoiser(),
        OP,
        Y.expand(N, -1),
        sigmas=karras(40, 0.002, 40.0),
        shape=(N, D),
        method=method,
        noise_std=noise_std,
        sampler="heun",
        n_samples=n_samples,
        generator=torch.Generator().manual_seed(seed),
        sigma_data=SD,
        dtype=F64,
    )


def test_pigdm_matches_the_closed_form_posterior():
    rec = _run("pigdm", S)
    x = rec.samples.reshape(-1, D)
    mean, cov = LinearGaussianProblem(M, SD**2 * torch.eye(D, dtype=F64), A, S).posterior(Y)
    se = cov.diag().sqrt() / (len(x) ** 0.5)
    assert ((x.mean(0) - mean).abs() < 5 * se + 1e-3).all(), (x.mean(0), mean)
    assert torch.allclose(x.std(0), cov.diag().sqrt(), rtol=0.06)
    assert rec.mean.shape == rec.std.shape == (N, D)


def test_hard_data_consistency_fits_the_data_and_keeps_the_prior_elsewhere():
    rec = _run("hard_dc", 0.0, n_samples=1)
    x = rec.samples[0]
    assert torch.allclose(x[:, OBS], Y.expand(N, -1), atol=1e-8)
    assert torch.allclose(x[:, ~OBS].std(0), torch.full((3,), SD, dtype=F64), rtol=0.06)
    assert torch.equal(rec.std, torch.zeros(N, D, dtype=F64))  # one sample: no spread


def test_is_data_term_plus_sample_drawn_sample_by_sample():
    rec = _run("prox", S, n_samples=2, seed=5)
    g = torch.Generator().manual_seed(5)
    den = data_term(PRIOR.denoiser(), OP, Y.expand(N, -1), method="prox", noise_std=S)
    by_hand = [
        sample(den, (N, D), karras(40, 0.002, 40.0), sampler="heun", generator=g, dtype=F64)
        for _ in range(2)
    ]
    assert torch.equal(rec.samples, torch.stack(by_hand))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "magic"}, "method must be one of"),
        ({"method": "hard_dc", "noise_std": 0.1}, "noiseless"),
        ({"method": "dps", "noise_std": 0.0}, "needs noise_std > 0"),
        ({"init": torch.zeros(2, D, dtype=F64)}, "needs both init and start_sigma"),
        ({"init": torch.zeros(3, D, dtype=F64), "start_sigma": 1.0}, "init has shape"),
        ({"n_samples": 0}, "n_samples must be >= 1"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    args = {"sigmas": karras(4, 0.01, 10.0), "shape": (2, D), **kwargs}
    with pytest.raises(ValueError, match=match):
        reconstruct(PRIOR.denoiser(), OP, Y.expand(2, -1), **args)


def test_warm_start_from_the_truth_stays_near_it():
    """CCDF: started from the posterior mean at a small sigma, samples stay close to it."""
    mean, _ = LinearGaussianProblem(M, SD**2 * torch.eye(D, dtype=F64), A, S).posterior(Y)
    rec = reconstruct(
        PRIOR.denoiser(),
        OP,
        Y.expand(N, -1),
        sigmas=karras(40, 0.002, 40.0),
        shape=(N, D),
        method="pigdm",
        noise_std=S,
        sigma_data=SD,
        sampler="heun",
        init=mean.expand(N, -1).clone(),
        start_sigma=0.05,
        generator=torch.Generator().manual_seed(1),
        dtype=F64,
    )
    assert (rec.mean.mean(0) - mean).abs().max() < 0.05
