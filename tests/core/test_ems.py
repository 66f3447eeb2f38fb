"""DPM-Solver-v3's empirical model statistics and the solver that uses them.

For a Gaussian ``N(m, s0^2 I)`` the statistics are known in closed form: ``D = m + c (x - m)``
with ``c = s0^2 / (s0^2 + sigma^2)``, so ``l = 1 - c``, ``f = (1 - l) x - D = -m l`` does not
depend on ``x`` (slope ``s = 0``) and ``b = f' = -m dl/dlambda = 2 m sigma^2 s0^2 / (s0^2 +
sigma^2)^2``. With them the solver integrates that ODE exactly up to quadrature, in any number
of steps; without them (the degenerate ``l = 1``) it cannot: the negative control.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from diffsci.core.analytic import GaussianMixture
from diffsci.core.ems import ModelStatistics, compute_statistics, degenerate_statistics
from diffsci.core.metrics import energy_distance
from diffsci.core.samplers import sample, sample_ddim, sample_dpm_solver_v3, sample_unipc
from diffsci.core.schedules import karras

M, S0 = 0.5, 0.7
LO, HI = 0.01, 80.0


def gauss(x: Tensor, sigma: Tensor, cond: object = None) -> Tensor:
    s = sigma.reshape(-1, *([1] * (x.dim() - 1)))
    return M + S0**2 / (S0**2 + s**2) * (x - M)


def _gauss_ems(levels: int = 60) -> ModelStatistics:
    data = M + S0 * torch.randn(
        2048, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    return compute_statistics(
        gauss,
        data,
        sigma_min=LO,
        sigma_max=HI,
        levels=levels,
        generator=torch.Generator().manual_seed(1),
    )


def test_statistics_of_a_gaussian_match_the_closed_form() -> None:
    ems = _gauss_ems()
    sig = torch.exp(-ems.lambdas)[:, None]
    l_true = sig**2 / (S0**2 + sig**2)
    b_true = 2 * M * sig**2 * S0**2 / (S0**2 + sig**2) ** 2
    # Hutchinson with 2048 x 8 Rademacher probes of an exactly diagonal Jacobian: exact
    torch.testing.assert_close(ems.l, l_true.expand_as(ems.l), rtol=0, atol=1e-6)
    assert bool((ems.s == 0).all())
    # b uses l' from finite differences on the 60-level grid (spacing 0.15 in lambda)
    assert float((ems.b - b_true).abs().max()) < 0.01 * float(b_true.max())


def test_v3_with_statistics_solves_the_gaussian_ode_in_three_steps() -> None:
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = M + x * math.hypot(HI, S0)
    sig = torch.exp(torch.linspace(math.log(HI), math.log(LO), 4, dtype=torch.float64))
    exact = M + (x - M) * math.sqrt((S0**2 + LO**2) / (S0**2 + HI**2))
    err = (sample_dpm_solver_v3(gauss, x, sig, ems=_gauss_ems()) - exact).abs().max().item()
    # measured 1.1e-3 (the grid's l' in b); the negative controls are off by 1.4-1.8
    assert err < 5e-3, err
    for control in (
        sample_dpm_solver_v3(gauss, x, sig),  # degenerate statistics
        sample_unipc(gauss, x, sig),
        sample_ddim(gauss, x, sig),
    ):
        assert (control - exact).abs().max().item() > 0.5


def test_degenerate_first_order_is_ddim() -> None:
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 80
    sig = karras(12)
    out = sample_dpm_solver_v3(gauss, x, sig, order=1, corrector=False)
    torch.testing.assert_close(out, sample_ddim(gauss, x, sig), rtol=1e-9, atol=1e-9)


def test_statistics_pay_at_five_steps_on_a_mixture() -> None:
    gm = GaussianMixture.example_8d()

    def den(x: Tensor, sigma: Tensor, cond: object = None) -> Tensor:
        return gm.denoise(x, sigma)

    data = gm.sample(1024, generator=torch.Generator().manual_seed(4))
    ems = compute_statistics(
        den,
        data,
        sigma_min=0.02,
        sigma_max=80.0,
        levels=40,
        generator=torch.Generator().manual_seed(5),
    )
    sig = torch.cat([torch.exp(torch.linspace(math.log(80), math.log(0.02), 5)), torch.zeros(1)])
    x = torch.randn(1000, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 80
    ref = gm.sample(1000, generator=torch.Generator().manual_seed(7))
    ed_ems = energy_distance(sample_dpm_solver_v3(den, x, sig, ems=ems), ref).item()
    ed_deg = energy_distance(sample_dpm_solver_v3(den, x, sig), ref).item()
    assert ed_ems < 0.6 * ed_deg, (ed_ems, ed_deg)


def test_reduce_dims_shares_statistics_across_pixels() -> None:
    data = M + S0 * torch.randn(
        64, 2, 4, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64
    )
    ems = compute_statistics(
        gauss,
        data,
        sigma_min=LO,
        sigma_max=HI,
        levels=5,
        reduce_dims=(1, 2),
        generator=torch.Generator().manual_seed(9),
    )
    assert ems.l.shape == (5, 2, 1, 1)
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    out = sample(gauss, (3, 2, 8, 8), torch.tensor([HI, 1.0, LO]), sampler="dpm_solver_v3", ems=ems)
    assert out.shape == (3, 2, 8, 8) and bool(torch.isfinite(out).all())
    del x


def test_save_load_and_errors(tmp_path) -> None:
    ems = _gauss_ems(levels=8)
    ems.save(tmp_path / "ems.npz")
    back = ModelStatistics.load(tmp_path / "ems.npz")
    for k in ("lambdas", "l", "s", "b"):
        assert torch.equal(getattr(back, k), getattr(ems, k))
    with pytest.raises(FileNotFoundError, match="no EMS file"):
        ModelStatistics.load(tmp_path / "missing.npz")
    x = torch.randn(4, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="outside the EMS range"):
        sample_dpm_solver_v3(gauss, x, torch.tensor([200.0, 1.0, 0.0]), ems=ems)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        compute_statistics(gauss, x, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="order"):
        sample_dpm_solver_v3(gauss, x, karras(3), order=4)
    deg = degenerate_statistics(0.1, 10.0)
    assert deg.sigma_range == pytest.approx((0.1, 10.0))


class _WithSigmaData:
    """The Gaussian denoiser exposing ``sigma_data`` as a trained ``KarrasDenoiser`` does."""

    sigma_data = math.hypot(M, S0)

    def __call__(self, x: Tensor, sigma: Tensor, cond: object = None) -> Tensor:
        return gauss(x, sigma)


def test_statistics_from_model_samples_over_the_default_range() -> None:
    from diffsci.core.ems import default_range, statistics_from_model
    from diffsci.core.schedules import default_sigmas

    den = _WithSigmaData()
    lo, hi = default_range(den)
    for n in (2, 5, 10, 40):
        pos = default_sigmas(den, n)[:-1]
        assert lo * (1 - 1e-9) <= float(pos.min()) and float(pos.max()) <= hi * (1 + 1e-9)
    ems = statistics_from_model(
        den,
        (8,),
        n=512,
        steps=30,
        levels=20,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(11),
    )
    assert ems.sigma_range == pytest.approx((lo, hi))
    sig = torch.exp(-ems.lambdas)[:, None]
    # the model's samples are N(m, s0^2) up to the 30-step solver: l is the closed form's
    torch.testing.assert_close(
        ems.l, (sig**2 / (S0**2 + sig**2)).expand_as(ems.l), rtol=0, atol=1e-6
    )
    out = sample(den, (64, 8), steps=5, sampler="dpm_solver_v3", ems=ems, dtype=torch.float64)
    assert bool(torch.isfinite(out).all())
