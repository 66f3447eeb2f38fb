"""The exact-score problems of benchmarks/default_table_selection.py."""

from __future__ import annotations

import math

import torch


def test_gaussian_field_denoiser_is_the_posterior_mean_of_its_covariance():
    from benchmarks.default_table_selection import GaussianField

    f = GaussianField(2.0, 1.0, n=4)
    eye = torch.eye(16, dtype=torch.float64).reshape(16, 4, 4)
    # the field's covariance, column by column: C e_i = F^-1 P F e_i
    cov = torch.fft.ifft2(f.p * torch.fft.fft2(eye, norm="ortho"), norm="ortho").real
    cov = cov.reshape(16, 16)
    torch.testing.assert_close(cov, cov.T)
    assert math.isclose(torch.diagonal(cov).mean().item(), 1.0, rel_tol=1e-12)  # unit variance
    x = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = 0.7
    want = (cov @ torch.linalg.solve(cov + s**2 * torch.eye(16), x.reshape(3, 16).T)).T
    got = f(x, torch.full((3,), s))
    torch.testing.assert_close(got.reshape(3, 16), want)


def test_fit_problem_log_error_falls_with_more_steps():
    from benchmarks.default_table_selection import FitProblem, log_linear

    prob = FitProblem((2.0, 1.0), samples=8)
    assert prob.log_error(log_linear(8)) < prob.log_error(log_linear(3)) < 0
