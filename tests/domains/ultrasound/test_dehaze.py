"""The sequence options of the joint dehazing sampler: the warm schedule and antithetic pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from diffsci.core.schedules import karras
from diffsci.domains.ultrasound import dehaze
from diffsci.domains.ultrasound.dehaze import SamplingOptions, dehaze_frames


class _Gaussian(nn.Module):
    """Exact denoiser of N(0, sd^2 I): linear in its input."""

    def __init__(self, sd: float) -> None:
        super().__init__()
        self.sigma_data = sd

    def forward(self, x, sigma, cond=None):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        return self.sigma_data**2 / (self.sigma_data**2 + s**2) * x


def _priors() -> nn.Module:
    p = nn.Module()
    p.tissue, p.haze = _Gaussian(1.0), _Gaussian(0.5)
    return p


def _opt(**kw) -> SamplingOptions:
    base = dict(haze_weight=0.3, steps=4, sigma_max=2.0, tile=8, overlap=4, batch=4)
    return SamplingOptions(**{**base, **kw})


def test_the_warm_schedule_runs_down_to_warm_sigma_min():
    opt = _opt(warm_sigma=0.5, warm_steps=2, warm_sigma_min=0.15)
    assert torch.allclose(opt.warm_sigmas(), karras(2, 0.15, 0.5))
    assert float(opt.warm_sigmas()[1]) == pytest.approx(0.15)
    # unset: the sampling section's sigma_min, as before
    assert float(_opt(warm_sigma=0.5, warm_steps=2).warm_sigmas()[1]) == pytest.approx(0.005)
    with pytest.raises(ValueError, match="warm_sigma_min < warm_sigma"):
        _opt(warm_sigma=0.5, warm_steps=2, warm_sigma_min=0.5).warm_sigmas()


def _warm_tile_output(sign: float, zero_noise: bool, monkeypatch) -> np.ndarray:
    if zero_noise:
        monkeypatch.setattr(
            dehaze,
            "positional_noise",
            lambda shape, r, c, seed: np.zeros(
                (*shape, r.stop - r.start, c.stop - c.start), np.float32
            ),
        )
    opt = _opt(warm_sigma=0.5, warm_steps=2, warm_sigma_min=0.1)
    g = np.random.default_rng(0)
    tiles = g.standard_normal((2, 6, 8, 8)).astype(np.float32)
    fn = dehaze._tile_fn(_priors(), opt, seed=3, counter=[0], warm=True, sign=sign)
    with torch.enable_grad():
        return fn(tiles, [(0, 0), (0, 8)])


def test_an_antithetic_pair_cancels_the_start_noise_of_a_linear_posterior(monkeypatch):
    """Gaussian priors and the identity operator make the warm estimate affine in the start
    noise, so the mean of a pair (z, -z) is the estimate from no noise at all; a pair with
    the same sign (no antithetic partner) is not."""
    plus = _warm_tile_output(1.0, False, monkeypatch)
    minus = _warm_tile_output(-1.0, False, monkeypatch)
    none = _warm_tile_output(1.0, True, monkeypatch)
    np.testing.assert_allclose((plus + minus) / 2, none, atol=1e-5)
    assert np.abs(plus - none).max() > 1e-2


def test_warm_samples_come_in_pairs_of_one_seed_and_opposite_signs(monkeypatch):
    calls: list[tuple[int, float, bool]] = []
    real = dehaze._tile_fn

    def spy(priors, opt, seed, counter, warm, sign=1.0):
        calls.append((seed, sign, warm))
        return real(priors, opt, seed, counter, warm, sign)

    monkeypatch.setattr(dehaze, "_tile_fn", spy)
    y = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    opt = _opt(samples=1, warm_sigma=0.5, warm_steps=1, warm_samples=4, warm_antithetic=True)
    dehaze_frames(_priors(), y, opt, seed=0, sequence=True)
    warm = [(s, g) for s, g, w in calls if w]
    assert [g for _, g in warm] == [1.0, -1.0, 1.0, -1.0]
    assert warm[0][0] == warm[1][0] != warm[2][0] == warm[3][0]
    calls.clear()
    plain = _opt(samples=1, warm_sigma=0.5, warm_steps=1, warm_samples=4)
    dehaze_frames(_priors(), y, plain, seed=0, sequence=True)
    assert len({s for s, _, w in calls if w}) == 4 and all(g == 1.0 for _, g, _ in calls)
