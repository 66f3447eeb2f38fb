"""Forecasts and assimilation: the first frame imposed, and the same draws as a sampler run
assembled by hand (randn * sigma_max from the generator, then the sampler)."""

from __future__ import annotations

import pytest
import torch

from diffsci.core.posterior import DPS, DataConsistency, ProximalDataStep
from diffsci.core.samplers import get_sampler
from diffsci.domains.pde.models import build_denoiser, codec, decode, encode, sampling_sigmas
from diffsci.domains.pde.operators import FrameMask, initial_frame_mask, observation_mask
from diffsci.domains.pde.sampling import (
    assimilate,
    assimilation_ensemble,
    forecast,
    forecast_ensemble,
    sensor_observations,
)


@pytest.fixture
def setup(make_cfg):
    cfg = make_cfg(channels=[8, 16], attention_levels=[False, False])
    cfg["seed"] = 5
    cfg["sampling"].update(steps=3, members=2, batch=2, sampler="dpmpp_2m_sde")
    torch.manual_seed(0)
    return cfg, build_denoiser(cfg).eval()


def _by_hand(den, shape, cfg, cond, seed):
    g = torch.Generator().manual_seed(seed)
    sig = sampling_sigmas(cfg)
    x = torch.randn(shape, generator=g) * float(sig[0])
    return get_sampler(cfg["sampling"]["sampler"])(den, x, sig, cond=cond, generator=g)


def test_forecast_imposes_the_initial_state_with_the_same_draws(setup):
    cfg, model = setup
    u0 = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    ens = forecast(
        model, u0, 8, cfg=cfg, scale=0.7, members=2, generator=torch.Generator().manual_seed(2)
    )
    assert ens.shape == (2, 3, 8, 32)
    assert torch.allclose(ens[:, :, 0], u0.expand(2, -1, -1), atol=1e-5)
    traj0 = u0.repeat(2, 1)[:, None].expand(-1, 8, -1)
    cond = encode(traj0, scale=0.7, **codec(cfg))
    mask = initial_frame_mask(8, 32)
    den = DataConsistency(model, FrameMask(mask, **codec(cfg)), traj0 * mask / 0.7)
    ref = decode(_by_hand(den, cond.shape, cfg, cond, 2), scale=0.7, **codec(cfg))
    assert torch.equal(ens, ref.reshape(2, 3, 8, 32))


@pytest.mark.parametrize("method", ["pigdm", "prox"])
def test_assimilate_draws_as_the_hand_built_posterior(setup, method):
    cfg, model = setup
    cfg["assimilation"]["method"] = method
    u = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(3))
    mask = observation_mask(8, 32, sensor_every=4, frame_every=2)
    y = mask * u
    cond = torch.zeros(2, 4, 4, 16)
    g = torch.Generator().manual_seed(6)
    got = assimilate(model, y, mask, cond, cfg=cfg, scale=0.7, noise_std=0.02, generator=g)
    op = FrameMask(mask, **codec(cfg))
    if method == "pigdm":
        den = DPS(model, op, y / 0.7, noise_std=0.02 / 0.7, sigma_data=cfg["model"]["sigma_data"])
    else:
        den = ProximalDataStep(model, op, y / 0.7, noise_std=0.02 / 0.7, lam=1.0)
    ref = decode(_by_hand(den, cond.shape, cfg, cond, 6), scale=0.7, **codec(cfg))
    assert torch.equal(got, ref)


def test_sensor_observations_are_noisy_on_the_sensors_and_zero_elsewhere(make_cfg):
    cfg = make_cfg()
    cfg["seed"] = 1
    u = torch.zeros(50, 8, 32)
    y, mask = sensor_observations(u, cfg)
    a = cfg["assimilation"]
    assert mask.sum() == (8 // a["frame_every"]) * (32 // a["sensor_every"])
    assert y[:, mask[0] == 0].eq(0).all()
    assert y[:, mask[0] == 1].std() == pytest.approx(a["noise_std"], rel=0.1)
    y2, _ = sensor_observations(u, cfg)
    assert torch.equal(y, y2)  # drawn from seed + 2


def test_ensembles_have_members_first(setup):
    cfg, model = setup
    u = torch.randn(3, 8, 32, generator=torch.Generator().manual_seed(3))
    kw = {"cfg": cfg, "scale": 0.7, "device": torch.device("cpu")}
    ens = forecast_ensemble(model, u, generator=torch.Generator().manual_seed(0), **kw)
    assert ens.shape == (2, 3, 8, 32)
    y, mask = sensor_observations(u, cfg)
    da = assimilation_ensemble(model, y, mask, generator=torch.Generator().manual_seed(0), **kw)
    assert da.shape == (2, 3, 8, 32)
