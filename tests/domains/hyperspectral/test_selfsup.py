"""The self-supervised (DDS2M-like) mode: the untrained denoiser and the restoration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsci.domains.hyperspectral import metrics, simulate
from diffsci.domains.hyperspectral.selfsup import DeepImagePriorDenoiser, restore_self_supervised

WL = np.linspace(400.0, 700.0, 12)


def test_deep_image_prior_fits_its_target_and_is_reproducible():
    torch.manual_seed(123)  # the denoiser must not depend on the global RNG
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    target = torch.stack([torch.sin(3 * xx), yy**2])[None]
    den = DeepImagePriorDenoiser(2, channels=(16, 32), iters=20, lr=0.01, ema=0.0, seed=1)
    first = den(target).clone()
    for _ in range(9):
        out = den(target)
    assert den.calls == 10
    assert float((out - target).pow(2).mean()) < 0.2 * float((first - target).pow(2).mean())
    torch.manual_seed(999)
    again = DeepImagePriorDenoiser(2, channels=(16, 32), iters=20, lr=0.01, ema=0.0, seed=1)
    torch.testing.assert_close(again(target), first)
    den.reset()
    assert den.net is None and den.calls == 0
    with pytest.raises(ValueError, match="one state of 2 channels"):
        den(torch.zeros(2, 2, 16, 16))
    with pytest.raises(ValueError, match="iters"):
        DeepImagePriorDenoiser(2, iters=0)


def test_self_supervised_restoration_beats_the_noisy_cube_without_training_data():
    rng = np.random.default_rng(5)
    x = simulate.minmax_normalize(simulate.make_scene(WL, 32, rng))
    y, _ = simulate.add_noise(x, "gaussian50", rng)
    settings = {"channels": (16, 32)}  # the default schedule and iterations
    r = restore_self_supervised(y, settings=settings, seed=0)
    assert r.cube.shape == x.shape and r.cube.dtype == np.float32
    gain = metrics.mpsnr(np.clip(r.cube, 0, 1), x) - metrics.mpsnr(y, x)
    assert gain > 6.0, gain  # noisy input ~14 dB
    again = restore_self_supervised(y, settings=settings, seed=0)
    np.testing.assert_array_equal(again.cube, r.cube)
    with pytest.raises(ValueError, match="unknown self-supervised settings"):
        restore_self_supervised(y, settings={"step": 3})


def test_runs_average_independent_runs_and_report_their_spread():
    rng = np.random.default_rng(5)
    x = simulate.minmax_normalize(simulate.make_scene(WL, 16, rng))
    y, _ = simulate.add_noise(x, "gaussian50", rng)
    settings = {"channels": (8, 16), "steps": 10, "runs": 1}
    one = [restore_self_supervised(y, settings=settings, seed=s) for s in (3, 4)]
    two = restore_self_supervised(y, settings={**settings, "runs": 2}, seed=3)
    np.testing.assert_allclose(two.cube, (one[0].cube + one[1].cube) / 2, rtol=1e-5, atol=1e-6)
    assert (two.posterior_std > 0).mean() > 0.9 and not one[0].posterior_std.any()
