"""Denoiser adapters against oracle networks built from the exact Gaussian-mixture denoiser.

Each oracle sees only what a real network sees (its own state variable and noise level),
converts back to sigma space *independently of the adapter*, evaluates the exact posterior
mean ``D`` and returns the quantity the parameterisation predicts (eps, v, x0, velocity, EDM
``F``). If the adapter's conversions are right it reproduces ``D`` to float64 round-off; the
1e-10 tolerance is ~1e5 ulps of O(1)-O(100) values, far below any conversion error (a wrong
``sqrt(ab)`` or ``t`` is O(sigma) or O(1) off).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from diffsci.core.analytic import GaussianMixture
from diffsci.core.denoisers import (
    EpsDenoiser,
    FlowDenoiser,
    KarrasDenoiser,
    VPDenoiser,
    X0Denoiser,
    as_sigma,
    edm_loss,
)
from diffsci.core.rng import ShardedRNG
from diffsci.core.schedules import LogNormalSigma, LogUniformSigma, ddpm_alphas_cumprod

TOL = 1e-10
GM = GaussianMixture.example_8d()
SIGMAS = [0.002, 0.05, 0.5, 1.0, 3.0, 20.0, 80.0]


def _x_at(sigma: float | Tensor, n: int = 64, seed: int = 0, gm: GaussianMixture = GM) -> Tensor:
    """A noisy batch ``x0 + sigma n`` (float64, (n, d))."""
    g = torch.Generator().manual_seed(seed)
    x0 = gm.sample(n, generator=g)
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
    return x0 + s * torch.randn(x0.shape, generator=g, dtype=torch.float64)


def _exact(x: Tensor, sigma: Tensor, gm: GaussianMixture = GM) -> Tensor:
    """Exact denoiser on any-rank ``x`` (flattened to the mixture's dimension)."""
    return gm.denoise(x.reshape(x.shape[0], -1), sigma).reshape(x.shape)


def _bc(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))


class Oracle(nn.Module):
    """``net(state, noise_level, cond)`` from a pure function of the two."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.calls: list[Tensor] = []

    def forward(self, x: Tensor, level: Tensor, cond=None) -> Tensor:
        assert level.shape == (x.shape[0],), level.shape
        self.calls.append(level.detach().clone())
        return self.fn(x, level)


# --------------------------------------------------------------------------------------------
# EDM preconditioning
# --------------------------------------------------------------------------------------------


def test_karras_scalings_match_edm_formulas() -> None:
    sd = 0.7
    den = KarrasDenoiser(nn.Identity(), sigma_data=sd)
    s = torch.tensor(SIGMAS, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = den.scalings(s)
    for i, si in enumerate(SIGMAS):  # EDM Table 1, written out independently
        assert math.isclose(c_skip[i].item(), sd**2 / (si**2 + sd**2), rel_tol=1e-14)
        assert math.isclose(c_out[i].item(), si * sd / math.sqrt(si**2 + sd**2), rel_tol=1e-14)
        assert math.isclose(c_in[i].item(), 1 / math.sqrt(si**2 + sd**2), rel_tol=1e-14)
        assert math.isclose(c_noise[i].item(), 0.25 * math.log(si), rel_tol=1e-14)
        lw = den.loss_weight(s[i : i + 1]).item()
        assert math.isclose(lw, (si**2 + sd**2) / (si * sd) ** 2, rel_tol=1e-14)
        # lambda * c_out^2 = 1: the EDM target F has unit weight.
        assert math.isclose(lw * c_out[i].item() ** 2, 1.0, rel_tol=1e-12)
    with pytest.raises(ValueError, match="sigma_data"):
        KarrasDenoiser(nn.Identity(), sigma_data=0.0)


def test_karras_recovers_exact_denoiser() -> None:
    sd = 0.5

    def f(x_in: Tensor, c_noise: Tensor) -> Tensor:
        s = _bc(torch.exp(4 * c_noise), x_in)
        x = x_in * (s**2 + sd**2).sqrt()
        d = _exact(x, s.flatten())
        c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
        return (d - c_skip * x) / c_out

    den = KarrasDenoiser(Oracle(f), sigma_data=sd)
    for s in SIGMAS:
        x = _x_at(s)
        sig = torch.full((64,), s, dtype=torch.float64)
        torch.testing.assert_close(den(x, sig), GM.denoise(x, sig), rtol=0, atol=TOL)


def test_karras_regression_sigma_zeroes_input_and_skip_only_at_the_regression_level() -> None:
    """PDE-Refiner's regression step: at sigma >= regression_sigma the network sees zeros and
    D = c_out F(0, c_noise), whatever x is; below it, plain EDM (same values as without)."""
    sd = 0.8
    seen: list[Tensor] = []

    def f(x_in: Tensor, c_noise: Tensor) -> Tensor:
        seen.append(x_in.clone())
        return x_in + _bc(c_noise, x_in)  # depends on the input, so a leak would show

    plain = KarrasDenoiser(Oracle(f), sigma_data=sd)
    reg = KarrasDenoiser(Oracle(f), sigma_data=sd, regression_sigma=10.0)
    sig = torch.tensor([1000.0, 10.0, 9.99, 0.01], dtype=torch.float64)
    x = 1000.0 * torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = reg(x, sig)
    assert torch.equal(seen[-1][:2], torch.zeros(2, 3, dtype=torch.float64))
    _, c_out, _, c_noise = reg.scalings(sig)
    torch.testing.assert_close(
        out[:2], (c_out * c_noise)[:2, None].expand(2, 3), rtol=1e-14, atol=0
    )
    torch.testing.assert_close(out[2:], plain(x, sig)[2:], rtol=0, atol=0)
    # deterministic: a different x at the regression level gives the same output
    torch.testing.assert_close(reg(-x, sig)[:2], out[:2], rtol=0, atol=0)
    with pytest.raises(ValueError, match="regression_sigma"):
        KarrasDenoiser(nn.Identity(), regression_sigma=0.0)


# --------------------------------------------------------------------------------------------
# VE eps / x0
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["identity", "log"])
def test_eps_denoiser_recovers_exact(level: str) -> None:
    fwd, inv = (None, lambda v: v) if level == "identity" else (lambda s: s.log(), torch.exp)

    def eps(x: Tensor, lev: Tensor) -> Tensor:
        s = inv(lev)
        return (x - _exact(x, s)) / _bc(s, x)

    den = EpsDenoiser(Oracle(eps), noise_level_fn=fwd)
    for s in SIGMAS:
        x = _x_at(s)
        torch.testing.assert_close(den(x, s), GM.denoise(x, s), rtol=0, atol=TOL)


def test_x0_denoiser_passes_noise_level() -> None:
    net = Oracle(lambda x, lev: _exact(x, lev**2))
    den = X0Denoiser(net, noise_level_fn=lambda s: s.sqrt())
    for s in SIGMAS:
        x = _x_at(s)
        torch.testing.assert_close(den(x, s), GM.denoise(x, s), rtol=0, atol=TOL)
        torch.testing.assert_close(net.calls[-1], torch.full((64,), math.sqrt(s), dtype=x.dtype))


# --------------------------------------------------------------------------------------------
# VP (discrete and continuous)
# --------------------------------------------------------------------------------------------

AC = ddpm_alphas_cumprod(1000)  # linear betas, float64
TABLE_SIG = ((1 - AC) / AC).sqrt()  # sigma_t, t = 0..999 (the adapter's own formula)


def _vp_oracle(prediction: str, ab_of_t) -> Oracle:
    """A VP network: sees ``x_t = sqrt(ab) x0 + sqrt(1-ab) eps`` and its time ``t``."""

    def f(x_t: Tensor, t: Tensor) -> Tensor:
        ab = _bc(ab_of_t(t), x_t)
        x = x_t / ab.sqrt()  # back to VE sigma space, in the oracle's own arithmetic
        s = ((1 - ab) / ab).sqrt()
        d = _exact(x, s.flatten())
        eps = (x_t - ab.sqrt() * d) / (1 - ab).sqrt()
        if prediction == "eps":
            return eps
        if prediction == "v":
            return ab.sqrt() * eps - (1 - ab).sqrt() * d
        return d

    return Oracle(f)


def _ab_discrete(t: Tensor) -> Tensor:
    """alpha_bar at fractional t: log-sigma linearly interpolated between table entries."""
    lo = t.floor().long().clamp(0, 998)
    w = t - lo
    ls = (1 - w) * TABLE_SIG[lo].log() + w * TABLE_SIG[lo + 1].log()
    return 1 / (1 + (2 * ls).exp())


def _t_cont(s: Tensor) -> Tensor:
    """VP-linear time: solve bd t^2/2 + bmin t = log(1 + s^2)."""
    return (-0.1 + (0.01 + 2 * 19.9 * torch.log1p(s**2)).sqrt()) / 19.9


def _ab_cont(t: Tensor) -> Tensor:
    return torch.exp(-0.5 * 19.9 * t**2 - 0.1 * t)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_vp_discrete_recovers_exact(prediction: str) -> None:
    net = _vp_oracle(prediction, _ab_discrete)
    den = VPDenoiser(net, prediction=prediction, alphas_cumprod=AC)
    on_grid = [TABLE_SIG[t].item() for t in (0, 1, 10, 250, 500, 999)]
    off_grid = [0.05, 0.5, 1.0, 3.0, 20.0, 100.0]
    for s in on_grid + off_grid:
        x = _x_at(s)
        torch.testing.assert_close(den(x, s), GM.denoise(x, s), rtol=0, atol=TOL)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_vp_continuous_recovers_exact(prediction: str) -> None:
    net = _vp_oracle(prediction, _ab_cont)
    den = VPDenoiser(net, prediction=prediction, sigma_to_t=_t_cont)
    for s in SIGMAS:
        x = _x_at(s)
        torch.testing.assert_close(den(x, s), GM.denoise(x, s), rtol=0, atol=TOL)
        t = net.calls[-1]
        assert 0 < t[0].item() <= 1.0


def test_vp_t_of_sigma_integer_on_grid_and_interpolates() -> None:
    den = VPDenoiser(nn.Identity(), alphas_cumprod=AC)
    t = den.t_of_sigma(TABLE_SIG)
    assert torch.equal(t, torch.arange(1000, dtype=torch.float64))
    mid = ((TABLE_SIG[:-1].log() + TABLE_SIG[1:].log()) / 2).exp()
    torch.testing.assert_close(
        den.t_of_sigma(mid), torch.arange(999.0, dtype=torch.float64) + 0.5, rtol=0, atol=1e-9
    )
    quarter = (0.75 * TABLE_SIG[:-1].log() + 0.25 * TABLE_SIG[1:].log()).exp()
    torch.testing.assert_close(
        den.t_of_sigma(quarter), torch.arange(999.0, dtype=torch.float64) + 0.25, rtol=0, atol=1e-9
    )
    # outside the table: clamped to the end points
    out = den.t_of_sigma(torch.tensor([1e-6, 1e6], dtype=torch.float64))
    assert out.tolist() == [0.0, 999.0]
    assert math.isclose(den.sigma_min, TABLE_SIG[0].item()) and den.sigma_max > 100


def test_vp_argument_errors() -> None:
    with pytest.raises(ValueError, match="prediction"):
        VPDenoiser(nn.Identity(), prediction="score", alphas_cumprod=AC)
    with pytest.raises(ValueError, match="exactly one"):
        VPDenoiser(nn.Identity())
    with pytest.raises(ValueError, match="exactly one"):
        VPDenoiser(nn.Identity(), alphas_cumprod=AC, sigma_to_t=_t_cont)
    with pytest.raises(ValueError, match="strictly decreasing"):
        VPDenoiser(nn.Identity(), alphas_cumprod=AC.flip(0))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        VPDenoiser(nn.Identity(), alphas_cumprod=torch.tensor([1.0, 0.5]))


# --------------------------------------------------------------------------------------------
# flow matching
# --------------------------------------------------------------------------------------------


def test_flow_denoiser_recovers_exact() -> None:
    def velocity(x_t: Tensor, t: Tensor) -> Tensor:
        tt = _bc(t, x_t)  # x_t = (1-t) x0 + t eps; E[v | x_t] = (x_t - D)/t
        d = _exact(x_t / (1 - tt), t / (1 - t))
        return (x_t - d) / tt

    net = Oracle(velocity)
    den = FlowDenoiser(net)
    for s in SIGMAS:
        x = _x_at(s)
        torch.testing.assert_close(den(x, s), GM.denoise(x, s), rtol=0, atol=TOL)
        assert math.isclose(net.calls[-1][0].item(), s / (1 + s), rel_tol=1e-14)


# --------------------------------------------------------------------------------------------
# any rank, per-sample sigma
# --------------------------------------------------------------------------------------------

GM24 = GaussianMixture(
    torch.tensor([0.4, 0.6]),
    torch.randn(2, 24, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
    torch.stack([0.5 * torch.eye(24), 2.0 * torch.eye(24)]),
)
SHAPES = [(5, 24), (5, 4, 6), (5, 2, 3, 4), (5, 2, 3, 2, 2)]


def _adapters() -> dict[str, nn.Module]:
    def eps(x: Tensor, s: Tensor) -> Tensor:
        return (x - _exact(x, s, GM24)) / _bc(s, x)

    def vel(x_t: Tensor, t: Tensor) -> Tensor:
        return (x_t - _exact(x_t / (1 - _bc(t, x_t)), t / (1 - t), GM24)) / _bc(t, x_t)

    def vp_eps(x_t: Tensor, t: Tensor) -> Tensor:
        ab = _bc(_ab_cont(t), x_t)
        x, s = x_t / ab.sqrt(), ((1 - ab) / ab).sqrt()
        return (x - _exact(x, s.flatten(), GM24)) / s

    return {
        "eps": EpsDenoiser(Oracle(eps)),
        "x0": X0Denoiser(Oracle(lambda x, s: _exact(x, s, GM24))),
        "vp": VPDenoiser(Oracle(vp_eps), sigma_to_t=_t_cont),
        "flow": FlowDenoiser(Oracle(vel)),
    }


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"rank{len(s)}")
def test_adapters_any_rank_per_sample_sigma(shape: tuple[int, ...]) -> None:
    sig = torch.tensor([0.01, 0.3, 1.0, 5.0, 40.0], dtype=torch.float64)
    x = _x_at(sig, n=5, gm=GM24).reshape(shape)
    ref = _exact(x, sig, GM24)
    for name, den in _adapters().items():
        out = den(x, sig)
        assert out.shape == x.shape and out.dtype == x.dtype, name
        torch.testing.assert_close(out, ref, rtol=0, atol=TOL, msg=name)


def test_as_sigma_shapes() -> None:
    x = torch.zeros(4, 3, 2)
    assert as_sigma(0.5, x).shape == (4,)
    assert as_sigma(torch.tensor(0.5), x).tolist() == [0.5] * 4
    assert as_sigma(torch.arange(4.0), x).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert as_sigma(1.0, x.double()).dtype == torch.float64
    for bad in (torch.ones(3), torch.ones(5), torch.ones(4, 1), torch.ones(1, 4), torch.ones(4, 3)):
        with pytest.raises(ValueError, match="sigma must be a scalar or have shape"):
            as_sigma(bad, x)
    with pytest.raises(ValueError, match="batch dimension"):
        as_sigma(1.0, torch.tensor(1.0))
    with pytest.raises(ValueError):
        EpsDenoiser(nn.Identity())(x, torch.ones(3))


# --------------------------------------------------------------------------------------------
# EDM loss
# --------------------------------------------------------------------------------------------


class TinyNet(nn.Module):
    def __init__(self, d: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(d + 1, d, dtype=torch.float64)

    def forward(self, x: Tensor, level: Tensor, cond=None) -> Tensor:
        flat = x.flatten(1)
        out = self.lin(torch.cat([flat, level[:, None].to(flat.dtype)], 1))
        return out.reshape(x.shape)


def _x0(n: int = 16) -> Tensor:
    return torch.randn(n, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _loss(den: KarrasDenoiser, x0: Tensor, seed: int = 0, rank: int = 0, world: int = 1, **kw):
    rng = ShardedRNG(torch.Generator().manual_seed(seed), rank=rank, world_size=world)
    return edm_loss(den, x0, rng, **kw)


def test_edm_loss_finite_differentiable_deterministic() -> None:
    den = KarrasDenoiser(TinyNet())
    x0 = _x0()
    loss = _loss(den, x0)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in den.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert _loss(den, x0).item() == loss.item()
    assert _loss(den, x0, seed=1).item() != loss.item()
    alt = _loss(den, x0, sigma_sampler=LogUniformSigma(0.1, 1.0))
    assert torch.isfinite(alt) and alt.item() != loss.item()


def test_edm_loss_uses_the_denoisers_training_sigmas() -> None:
    x0 = _x0()
    shifted = KarrasDenoiser(TinyNet(), train_sigma=LogNormalSigma(1.0, 0.5))
    plain = KarrasDenoiser(TinyNet())
    plain.load_state_dict(shifted.state_dict())
    explicit = _loss(plain, x0, sigma_sampler=LogNormalSigma(1.0, 0.5))
    assert _loss(shifted, x0).item() == explicit.item()
    assert _loss(plain, x0).item() != explicit.item()


def test_edm_loss_is_weighted_mse() -> None:
    """Recompute the loss from the documented draws: sigma first, then the noise."""
    den = KarrasDenoiser(TinyNet())
    x0 = _x0()
    g = torch.Generator().manual_seed(0)
    sigma = (torch.randn(16, generator=g) * 1.2 - 1.2).exp().double()
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        d = den(x0 + sigma[:, None, None] * noise, sigma)
        ref = (den.loss_weight(sigma) * ((d - x0) ** 2).flatten(1).mean(1)).mean()
        torch.testing.assert_close(_loss(den, x0), ref, rtol=1e-12, atol=0)


def test_edm_loss_two_ranks_average_to_global_batch() -> None:
    den = KarrasDenoiser(TinyNet())
    x0 = _x0(16)
    full = _loss(den, x0, seed=7)
    parts = [_loss(den, x0[8 * r : 8 * (r + 1)], seed=7, rank=r, world=2) for r in range(2)]
    torch.testing.assert_close((parts[0] + parts[1]) / 2, full, rtol=1e-12, atol=0)
    # and the gradients average too (what DDP all-reduce computes)
    full.backward()
    g_full = [p.grad.clone() for p in den.parameters()]
    den.zero_grad()
    ((parts[0] + parts[1]) / 2).backward()
    for a, b in zip(g_full, [p.grad for p in den.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_edm_loss_rejects_nonfinite_batch() -> None:
    x0 = _x0()
    x0[3, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _loss(KarrasDenoiser(TinyNet()), x0)
