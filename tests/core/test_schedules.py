"""Noise schedules, the schedule validator and the training-sigma samplers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffsci.core import schedules as S
from diffsci.core.rng import ShardedRNG

NAMED = ["karras", "exponential", "vp_linear", "vp_cosine", "flow"]


# --------------------------------------------------------------------------------------------
# sampling schedules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("n", [1, 2, 10, 50])
def test_schedule_shape_dtype_order(name: str, n: int) -> None:
    sig = S.get_sigmas(name, n)
    assert sig.dtype == torch.float64
    assert sig.shape == (n + 1,)
    assert sig[-1].item() == 0.0  # exactly zero, not 1e-300
    assert bool((sig[:-1] > 0).all())
    assert bool((sig[1:] < sig[:-1]).all()), "must be strictly descending"
    assert torch.equal(S.check_sigmas(sig), sig)


@pytest.mark.parametrize("n", [2, 10, 50])
def test_karras_endpoints_and_formula(n: int) -> None:
    smin, smax, rho = 0.002, 80.0, 7.0
    sig = S.karras(n, smin, smax, rho=rho)
    # (x^(1/rho))^rho loses a few ulps only: rel 1e-12 is ~1e4 ulps.
    assert math.isclose(sig[0].item(), smax, rel_tol=1e-12)
    assert math.isclose(sig[-2].item(), smin, rel_tol=1e-12)
    i = np.arange(n)
    ref = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    np.testing.assert_allclose(sig[:-1].numpy(), ref, rtol=1e-12)


def test_exponential_knee_takes_one_step_to_the_knee_then_log_linear() -> None:
    sig = S.exponential(6, 0.1, 80.0, knee=3.0)
    assert len(sig) == 7 and sig[-1].item() == 0.0
    assert math.isclose(sig[0].item(), 80.0) and math.isclose(sig[1].item(), 3.0)
    assert math.isclose(sig[-2].item(), 0.1, rel_tol=1e-12)
    ratios = (sig[2:-1] / sig[1:-2]).tolist()  # log-linear below the knee
    assert max(ratios) - min(ratios) < 1e-12
    # a knee outside (sigma_min, sigma_max), or fewer than 3 steps: plain log-linear
    torch.testing.assert_close(S.exponential(6, 0.1, 80.0, knee=100.0), S.exponential(6, 0.1, 80.0))
    torch.testing.assert_close(S.exponential(2, 0.1, 80.0, knee=3.0), S.exponential(2, 0.1, 80.0))


def test_exponential_is_log_linear() -> None:
    sig = S.exponential(20, 0.01, 50.0)
    assert math.isclose(sig[0].item(), 50.0, rel_tol=1e-12)
    assert math.isclose(sig[-2].item(), 0.01, rel_tol=1e-12)
    steps = sig[:-1].log().diff()
    np.testing.assert_allclose(steps.numpy(), steps[0].item(), rtol=1e-9)


def test_vp_linear_closed_form() -> None:
    bmin, bmax, eps_t = 0.1, 20.0, 1e-3
    sig = S.vp_linear(10, beta_min=bmin, beta_max=bmax, eps_t=eps_t)

    def closed(t: float) -> float:  # Song et al.: alpha_bar = exp(-bd t^2/2 - bmin t)
        ab = math.exp(-0.5 * (bmax - bmin) * t**2 - bmin * t)
        return math.sqrt((1 - ab) / ab)

    assert math.isclose(sig[0].item(), closed(1.0), rel_tol=1e-12)
    assert math.isclose(sig[-2].item(), closed(eps_t), rel_tol=1e-9)
    ts = np.linspace(1, eps_t, 10)
    np.testing.assert_allclose(sig[:-1].numpy(), [closed(t) for t in ts], rtol=1e-9)


def test_vp_cosine_starts_at_sigma_max() -> None:
    s = 0.008
    sig = S.vp_cosine(12, s=s, sigma_max=80.0, eps_t=1e-4)
    assert math.isclose(sig[0].item(), 80.0, rel_tol=1e-9)

    def ab(t: float) -> float:
        return (
            math.cos((t + s) / (1 + s) * math.pi / 2) ** 2
            / math.cos(s / (1 + s) * math.pi / 2) ** 2
        )

    assert math.isclose(sig[-2].item(), math.sqrt((1 - ab(1e-4)) / ab(1e-4)), rel_tol=1e-9)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_sigma_is_t_over_one_minus_t(shift: float) -> None:
    sig = S.flow(8, t_max=0.99, t_min=0.01, shift=shift)
    t = np.linspace(0.99, 0.01, 8)
    t = shift * t / (1 + (shift - 1) * t)
    np.testing.assert_allclose(sig[:-1].numpy(), t / (1 - t), rtol=1e-12)


def test_schedule_argument_errors() -> None:
    for bad_n in (0, -3, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            S.karras(bad_n)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        S.karras(10, 1.0, 0.5)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        S.exponential(10, 0.0, 1.0)
    with pytest.raises(ValueError, match="t_min < t_max"):
        S.flow(10, t_max=1.0)
    with pytest.raises(ValueError, match="unknown schedule 'nope'"):
        S.get_sigmas("nope", 10)
    with pytest.raises(ValueError, match="kind"):
        S.ddpm_alphas_cumprod(kind="quadratic")
    with pytest.raises(ValueError, match="spacing"):
        S.ddpm_sigmas(S.ddpm_alphas_cumprod(), 10, spacing="middle")


# --------------------------------------------------------------------------------------------
# discrete DDPM tables against diffusers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "dkind", "b0", "b1"),
    [
        ("linear", "linear", 1e-4, 0.02),
        ("scaled_linear", "scaled_linear", 0.00085, 0.012),
        ("cosine", "squaredcos_cap_v2", 1e-4, 0.02),
    ],
)
def test_ddpm_alphas_cumprod_match_diffusers(kind: str, dkind: str, b0: float, b1: float) -> None:
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule=dkind, beta_start=b0, beta_end=b1
    ).alphas_cumprod.double()
    ac = S.ddpm_alphas_cumprod(1000, kind=kind, beta_start=b0, beta_end=b1)
    assert ac.dtype == torch.float64
    # diffusers builds the table in float32: agreement to ~1e-6 absolute (observed 5e-7).
    np.testing.assert_allclose(ac.numpy(), ref.numpy(), atol=2e-6, rtol=0)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [10, 50, 7, 16])
def test_ddpm_sigmas_timesteps_match_diffusers_ddim(spacing: str, n: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    offsets = [0, 1] if spacing == "leading" else [0]
    for off in offsets:
        sched = diffusers.DDIMScheduler(
            num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=off
        )
        sched.set_timesteps(n)
        ac = S.ddpm_alphas_cumprod(1000)
        sig, ts = S.ddpm_sigmas(ac, n, spacing=spacing, steps_offset=off)
        np.testing.assert_array_equal(ts.numpy(), sched.timesteps.numpy())
        assert sig.shape == (n + 1,) and sig[-1].item() == 0.0
        a = sched.alphas_cumprod[sched.timesteps].double()
        # Compare alpha_bar = 1/(1+sigma^2), not sigma: diffusers' float32 table makes 1 - ab
        # (~1e-4 at t=0) inaccurate in relative terms; ab itself agrees to ~5e-7.
        np.testing.assert_allclose((1 / (1 + sig[:-1] ** 2)).numpy(), a.numpy(), atol=2e-6, rtol=0)
        S.check_sigmas(sig)


@pytest.mark.parametrize(
    ("n", "spacing", "offset"),
    [
        (1500, "leading", 0),
        (1500, "trailing", 0),
        (1500, "linspace", 0),
        (1000, "leading", 1),
        (10, "leading", -1),
    ],
)
def test_ddpm_sigmas_rejects_impossible_step_counts(n: int, spacing: str, offset: int) -> None:
    """KNOWN BUG (fails today): more steps than training timesteps, or an offset that pushes a
    timestep outside [0, T), must raise. Today n > T silently returns repeated timesteps and a
    non-descending schedule (e.g. leading: all timesteps 0); offset=-1 indexes
    ``alphas_cumprod[-1]`` (t = 999) for the last step; n = T with offset 1 is an IndexError."""
    with pytest.raises(ValueError):
        S.ddpm_sigmas(S.ddpm_alphas_cumprod(1000), n, spacing=spacing, steps_offset=offset)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sigmas", "msg"),
    [
        ([1.0, 2.0, 0.0], r"strictly descending; sigmas\[0\]=1 <= sigmas\[1\]=2"),
        ([2.0, 1.0, 1.0, 0.0], r"strictly descending; sigmas\[1\]=1 <= sigmas\[2\]=1"),
        ([2.0, float("nan"), 0.0], "NaN or inf"),
        ([float("inf"), 1.0, 0.0], "NaN or inf"),
        ([2.0, 1.0, -0.5], "non-negative"),
        ([[2.0, 1.0], [0.5, 0.0]], "1-D"),
        ([1.0], "at least 2"),
    ],
)
def test_check_sigmas_rejects(sigmas: list, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        S.check_sigmas(torch.tensor(sigmas))


def test_check_sigmas_returns_float64_cpu() -> None:
    out = S.check_sigmas(torch.tensor([3.0, 1.0, 0.0], dtype=torch.float32))
    assert out.dtype == torch.float64 and out.device.type == "cpu"


# --------------------------------------------------------------------------------------------
# training sigma samplers
# --------------------------------------------------------------------------------------------

N_TRAIN = 100_000


def _rng(seed: int = 0, **kw: int) -> ShardedRNG:
    return ShardedRNG(torch.Generator().manual_seed(seed), **kw)


def test_lognormal_sigma_moments() -> None:
    sig = S.LogNormalSigma(p_mean=-1.2, p_std=1.2)(N_TRAIN, _rng())
    assert sig.shape == (N_TRAIN,) and bool((sig > 0).all())
    ls = sig.double().log()
    # Standard errors: 1.2/sqrt(1e5) = 0.004 (mean), 0.003 (std); 0.02 is > 5 SE.
    assert abs(ls.mean().item() + 1.2) < 0.02
    assert abs(ls.std().item() - 1.2) < 0.02


def test_lognormal_sigma_other_parameters() -> None:
    ls = S.LogNormalSigma(p_mean=0.5, p_std=0.3)(N_TRAIN, _rng(1)).double().log()
    assert abs(ls.mean().item() - 0.5) < 0.02 and abs(ls.std().item() - 0.3) < 0.02


def test_loguniform_sigma() -> None:
    sig = S.LogUniformSigma(0.01, 10.0)(N_TRAIN, _rng()).double()
    lo, hi = math.log(0.01), math.log(10.0)
    ls = sig.log()
    assert ls.min().item() >= lo - 1e-6 and ls.max().item() <= hi + 1e-6
    # Uniform on [lo, hi]: mean (lo+hi)/2, sd (hi-lo)/sqrt(12) = 2.0; SE of the mean 0.006.
    assert abs(ls.mean().item() - (lo + hi) / 2) < 0.03
    assert abs(ls.std().item() - (hi - lo) / math.sqrt(12)) < 0.03


def test_uniform_time_sigma_flow_and_vp() -> None:
    sig = S.UniformTimeSigma("flow", eps_t=1e-3, t_max=0.999)(N_TRAIN, _rng()).double()
    t = sig / (1 + sig)  # invert sigma = t/(1-t)
    assert t.min().item() >= 1e-3 - 1e-6 and t.max().item() <= 0.999 + 1e-6
    assert abs(t.mean().item() - 0.5) < 0.01  # SE 0.29/316 = 0.001
    sig = S.UniformTimeSigma("vp", eps_t=1e-3)(N_TRAIN, _rng(2)).double()
    bmin, bd = 0.1, 19.9  # invert log1p(sigma^2) = bd t^2/2 + bmin t
    t = (-bmin + (bmin**2 + 2 * bd * torch.log1p(sig**2)).sqrt()) / bd
    assert abs(t.mean().item() - (1 + 1e-3) / 2) < 0.01
    with pytest.raises(ValueError, match="kind"):
        S.UniformTimeSigma("ve")


def test_refiner_levels_follow_pde_refiner() -> None:
    # PDE-Refiner: level 0 is the regression level, then sigma_min**(j/k) for j = 1..k.
    lv = S.refiner_levels(3, sigma_min=1e-3, sigma_max=80.0)
    assert lv == pytest.approx([80.0, 0.1, 0.01, 0.001])
    assert S.check_sigmas(torch.tensor(lv + [0.0], dtype=torch.float64)) is not None
    with pytest.raises(ValueError, match="sigma_min"):
        S.refiner_levels(3, sigma_min=2.0)
    with pytest.raises(ValueError, match="sigma_max"):
        S.refiner_levels(1, sigma_min=0.5, sigma_max=0.4)


def test_discrete_sigma_frequencies() -> None:
    levels, probs = [80.0, 0.1, 0.01], [2.0, 1.0, 1.0]
    sig = S.DiscreteSigma(levels, probs)(N_TRAIN, _rng()).double()
    for lv, p in zip(levels, probs, strict=True):
        frac = (sig - lv).abs().lt(1e-6 * lv).double().mean().item()
        assert abs(frac - p / sum(probs)) < 0.01  # SE <= 0.0016
    assert bool(torch.isin(sig, torch.tensor(levels, dtype=torch.float64).float().double()).all())
    with pytest.raises(ValueError, match="probs"):
        S.DiscreteSigma(levels, [1.0, 1.0])
    with pytest.raises(ValueError, match="levels"):
        S.DiscreteSigma([1.0, -1.0])


def test_training_sigma_sharded_ranks_tile_global_draw() -> None:
    """Two ranks with the same seed get the two halves of the single-process draw."""
    for sampler in (
        S.LogNormalSigma(),
        S.LogUniformSigma(),
        S.UniformTimeSigma("flow"),
        S.DiscreteSigma([80.0, 0.1, 0.01]),
    ):
        full = sampler(64, _rng(5))
        halves = [sampler(32, _rng(5, rank=r, world_size=2)) for r in range(2)]
        assert torch.equal(torch.cat(halves), full)
