"""Model shapes and sampling contracts; interpolation and regression baselines; transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsci.domains.precipitation import baselines
from diffsci.domains.precipitation.models import (
    DownscalingModel,
    Normaliser,
    inverse_transform,
    sample_ensemble,
)

STATS = {
    "input": {
        "tp": {"mean": 0.3, "std": 0.5, "transform": "log1p"},
        "tcwv": {"mean": 30.0, "std": 8.0, "transform": "none"},
    },
    "output": {"tp": {"mean": 0.3, "std": 0.6, "transform": "log1p"}},
    "invariant": {"orography": {"mean": 800.0, "std": 400.0, "transform": "none"}},
}


def test_normaliser_roundtrip_and_channels():
    n = Normaliser(STATS, ["tp", "tcwv"], ["orography"])
    tp = torch.rand(2, 1, 8, 8) * 10
    np.testing.assert_allclose(n.decode_target(n.encode_target(tp)), tp, rtol=1e-5, atol=1e-5)
    c = n.encode_condition(torch.rand(2, 2, 8, 8), torch.rand(1, 8, 8) * 1000)
    assert c.shape == (2, 3, 8, 8)
    assert float(inverse_transform(torch.tensor(-5.0), "log1p")) == 0.0  # never negative
    with pytest.raises(KeyError, match="input.q"):
        Normaliser(STATS, ["tp", "q"])
    with pytest.raises(ValueError, match="invariant"):
        n.encode_condition(torch.rand(2, 2, 8, 8), None)


def test_sample_ensemble_shapes_and_determinism():
    torch.manual_seed(0)
    m = DownscalingModel(3, residual=True, channels=[8, 16], attention_levels=[False, False])
    c = torch.randn(2, 3, 16, 16)
    noise = torch.randn(4, 2, 1, 16, 16)
    a, mean = sample_ensemble(m, c, members=4, steps=3, sampler="euler", noise=noise)
    b, _ = sample_ensemble(m, c, members=4, steps=3, sampler="euler", noise=noise)
    assert a.shape == (4, 2, 1, 16, 16) and mean.shape == (2, 1, 16, 16)
    torch.testing.assert_close(a, b)  # deterministic sampler: a function of the noise
    assert not torch.allclose(a[0], a[1])
    with pytest.raises(ValueError, match="noise must have shape"):
        sample_ensemble(m, c, members=3, steps=2, noise=noise)
    plain = DownscalingModel(3, residual=False, channels=[8, 16], attention_levels=[False, False])
    assert plain.regression is None
    _, z = sample_ensemble(plain, c, members=1, steps=2, generator=torch.Generator())
    assert float(z.abs().sum()) == 0.0


def test_interpolation_baselines():
    const = np.full((1, 4, 4), 2.5, np.float32)
    for mode in ("bilinear", "bicubic"):
        np.testing.assert_allclose(baselines.interpolate(const, 8, mode=mode), 2.5, rtol=1e-6)
    spike = np.zeros((1, 4, 4), np.float32)
    spike[0, 1, 1] = 10
    bic = baselines.interpolate(spike, 8, mode="bicubic")
    assert bic.shape == (1, 32, 32) and bic.min() >= 0  # overshoot clamped
    ramp = np.broadcast_to(np.arange(4, dtype=np.float32), (1, 4, 4))
    lin = baselines.interpolate(ramp, 8, mode="bilinear")
    # interior: linear in x between cell centres 3.5 + 8 i
    np.testing.assert_allclose(lin[0, 0, 4:28], (np.arange(4, 28) - 3.5) / 8, atol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        baselines.interpolate(const, 8, mode="nearest")
    np.testing.assert_allclose(baselines.coarse_precipitation(np.ones((1, 16, 16)), 8), 1.0)


def test_regression_baseline_shape():
    n = Normaliser(STATS, ["tp", "tcwv"], ["orography"])
    m = DownscalingModel(3, residual=True, channels=[8, 16], attention_levels=[False, False])
    out = baselines.regression_mean(
        m,
        n,
        np.random.default_rng(0).random((3, 2, 16, 16)).astype(np.float32),
        np.random.default_rng(1).random((1, 16, 16)).astype(np.float32),
        batch=2,
    )
    assert out.shape == (3, 16, 16) and (out >= 0).all()
    with pytest.raises(ValueError, match="no regression"):
        baselines.regression_mean(
            DownscalingModel(3, residual=False, channels=[8, 16], attention_levels=[False, False]),
            n,
            np.zeros((1, 2, 16, 16)),
            None,
        )


def test_sample_ensemble_can_run_on_the_cores_few_step_schedule():
    from diffsci.core.schedules import default_sigmas, karras

    torch.manual_seed(0)
    m = DownscalingModel(3, residual=True, channels=[8, 16], attention_levels=[False, False])
    c = torch.randn(1, 3, 16, 16)
    noise = torch.randn(2, 1, 1, 16, 16)
    seen: dict[str, list[float]] = {"karras": [], "default": []}
    for schedule, levels in seen.items():
        sample_ensemble(
            m,
            c,
            members=2,
            steps=4,
            sampler="unipc",
            sigma_max=20.0,
            schedule=schedule,
            noise=noise,
            callback=lambda info, levels=levels: levels.append(float(info["sigma"])),
        )
    # the default follows the model's sigma_data (0.5) and training range, not sigma_min/max
    expect = default_sigmas(m.denoiser, 4)
    np.testing.assert_allclose(seen["default"], expect[:-1].tolist(), rtol=1e-6)
    np.testing.assert_allclose(seen["karras"], karras(4, 0.002, 20.0)[:-1].tolist(), rtol=1e-6)
    assert seen["default"][0] < 20.0 and seen["default"][-1] > 0.002
    with pytest.raises(ValueError, match="schedule"):
        sample_ensemble(m, c, members=2, steps=2, schedule="cosine", noise=noise)
