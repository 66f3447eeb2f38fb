"""The sliced-Wasserstein regulariser (against an exact 1-D W2) and the training loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsci.core.rng import ShardedRNG
from diffsci.domains.precipitation.losses import downscaling_loss, sw_regulariser
from diffsci.domains.precipitation.models import DownscalingModel


def test_pixel_sw_is_exact_w2_per_image():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g) * 2 + 1
    want = np.mean(
        [
            np.sqrt(np.mean((np.sort(x.ravel()) - np.sort(y.ravel())) ** 2))
            for x, y in zip(a.numpy(), b.numpy(), strict=True)
        ]
    )
    assert float(sw_regulariser(a, b)) == pytest.approx(want, rel=1e-5)
    assert float(sw_regulariser(a, a)) == 0.0


def test_patch_sw_uses_projections_and_is_differentiable():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 1, 8, 8, generator=g, requires_grad=True)
    b = torch.randn(2, 1, 8, 8, generator=g)
    v = sw_regulariser(a, b, patch=2, n_projections=50, rng=torch.Generator().manual_seed(2))
    v.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="patch=3"):
        sw_regulariser(a, b, patch=3)


def test_sw_gradient_descent_matches_distribution():
    # minimising the regulariser alone moves the pixel distribution onto the target's
    # every draw from its own generator: the result must not depend on the test order (the
    # global RNG made it flaky under pytest-xdist)
    g = torch.Generator().manual_seed(4)
    tgt = torch.randn(1, 1, 16, 16, generator=g).exp()  # log-normal(0, 1)
    x = torch.zeros(1, 1, 16, 16).normal_(generator=g).requires_grad_()
    opt = torch.optim.Adam([x], lr=0.05)
    directions = torch.Generator().manual_seed(5)

    def evaluate() -> float:  # the same projections before and after
        return float(sw_regulariser(x, tgt, rng=torch.Generator().manual_seed(6)).detach())

    start = evaluate()
    for _ in range(300):
        opt.zero_grad()
        sw_regulariser(x, tgt, rng=directions).backward()
        opt.step()
    assert evaluate() < 0.05 * start


def test_downscaling_loss_terms():
    torch.manual_seed(0)
    m = DownscalingModel(3, residual=True, channels=[8, 16], attention_levels=[False, False])
    y, c = torch.randn(4, 1, 16, 16), torch.randn(4, 3, 16, 16)
    rng = ShardedRNG(torch.Generator().manual_seed(0))
    off = downscaling_loss(m, y, c, rng, sw_weight=0.0)
    assert set(off) == {"loss", "regression_mse", "edm", "sw"} and float(off["sw"]) == 0
    assert float(off["loss"]) == pytest.approx(float(off["regression_mse"] + off["edm"]), rel=1e-5)
    rng = ShardedRNG(torch.Generator().manual_seed(0))
    on = downscaling_loss(m, y, c, rng, sw_weight=0.5, sw_sigma_max=1e9)
    # same draws: only the regulariser term differs
    assert float(on["edm"]) == pytest.approx(float(off["edm"]), rel=1e-5)
    assert float(on["sw"]) > 0
    assert float(on["loss"]) == pytest.approx(float(off["loss"] + 0.5 * on["sw"]), rel=1e-5)
    on["loss"].backward()
    assert all(p.grad is not None for p in m.regression.parameters())


def test_sw_only_on_noise_levels_up_to_sigma_max():
    # two images at sigma 0.05 and two at 2.0: sw_sigma_max=0.2 compares the first two only
    torch.manual_seed(0)
    m = DownscalingModel(3, residual=True, channels=[8, 16], attention_levels=[False, False])
    sig = torch.tensor([0.05, 2.0, 0.05, 2.0])
    m.denoiser.train_sigma = lambda n, rng, device=None: sig.to(device)
    y, c = torch.randn(4, 1, 16, 16), torch.randn(4, 3, 16, 16)
    out = downscaling_loss(
        m, y, c, ShardedRNG(torch.Generator().manual_seed(0)), sw_weight=1.0, sw_sigma_max=0.2
    )
    noise = ShardedRNG(torch.Generator().manual_seed(0)).randn(y.shape)
    with torch.no_grad():
        mean, full = m.condition(c)
        x0 = y - mean
        d = m.denoiser(x0 + sig.reshape(-1, 1, 1, 1) * noise, sig, full)
        keep = sig <= 0.2
        want = sw_regulariser(d[keep] + mean[keep], y[keep])
    assert float(out["sw"]) == pytest.approx(float(want), rel=1e-5)
    none = downscaling_loss(
        m, y, c, ShardedRNG(torch.Generator().manual_seed(0)), sw_weight=1.0, sw_sigma_max=0.01
    )
    assert float(none["sw"]) == 0.0


def test_pixel_sw1_is_exact_w1_per_image():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g) * 2 + 1
    want = np.mean(
        [
            np.mean(np.abs(np.sort(x.ravel()) - np.sort(y.ravel())))
            for x, y in zip(a.numpy(), b.numpy(), strict=True)
        ]
    )
    assert float(sw_regulariser(a, b, p=1)) == pytest.approx(want, rel=1e-5)
    m = DownscalingModel(3, residual=True, channels=[8, 16], attention_levels=[False, False])
    y, c = torch.randn(2, 1, 16, 16), torch.randn(2, 3, 16, 16)
    kw = dict(sw_weight=1.0, sw_sigma_max=1e9)
    w1 = downscaling_loss(m, y, c, ShardedRNG(torch.Generator().manual_seed(0)), sw_p=1, **kw)
    w2 = downscaling_loss(m, y, c, ShardedRNG(torch.Generator().manual_seed(0)), **kw)
    assert 0 < float(w1["sw"]) <= float(w2["sw"]) + 1e-7  # W1 <= W2 (Jensen)


def test_sw_floor_clamps_the_denoised_estimate_before_the_comparison():
    # sw_floor: values of x0_hat below the dry level count as the dry level (they decode to
    # 0 mm/h), so they cost nothing and get no gradient; values above it are compared as before
    torch.manual_seed(0)
    m = DownscalingModel(3, residual=True, channels=[8, 16], attention_levels=[False, False])
    sig = torch.tensor([0.05, 0.1, 0.2])
    m.denoiser.train_sigma = lambda n, rng, device=None: sig.to(device)
    y, c = torch.randn(3, 1, 16, 16), torch.randn(3, 3, 16, 16)
    floor = float(y.min()) + 1.0  # inside the targets' range: some pixels are clamped
    kw = dict(sw_weight=1.0, sw_sigma_max=1e9, sw_p=1)
    out = downscaling_loss(
        m, y, c, ShardedRNG(torch.Generator().manual_seed(0)), sw_floor=floor, **kw
    )
    noise = ShardedRNG(torch.Generator().manual_seed(0)).randn(y.shape)
    with torch.no_grad():
        mean, full = m.condition(c)
        d = m.denoiser(y - mean + sig.reshape(-1, 1, 1, 1) * noise, sig, full)
        x0_hat = d + mean
        want = sw_regulariser(x0_hat.clamp_min(floor), y, p=1)
        plain = sw_regulariser(x0_hat, y, p=1)
    assert bool((x0_hat < floor).any())
    assert float(out["sw"]) == pytest.approx(float(want), rel=1e-5)
    assert float(out["sw"]) != pytest.approx(float(plain), rel=1e-3)
    # exact 1-D check of the clamped W1 against numpy
    a = x0_hat.clamp_min(floor).numpy()
    ref = np.mean(
        [
            np.mean(np.abs(np.sort(u.ravel()) - np.sort(v.ravel())))
            for u, v in zip(a, y.numpy(), strict=True)
        ]
    )
    assert float(out["sw"]) == pytest.approx(ref, rel=1e-5)


def test_image_points_compare_the_batch_as_wassdiff_does():
    """``points="images"``: the batch's images are the points; a batch and the same images in
    another order are at distance 0 (per-image pairing would not be), and the term is
    differentiable."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 1, 4, 4, generator=g)
    perm = a[torch.tensor([3, 0, 4, 1, 2])]
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert float(sw_regulariser(a, perm, points="images", p=1, rng=gen())) < 1e-6
    assert float(sw_regulariser(a, perm, points="pixels", p=1)) > 0.05
    b = (a + 0.5).requires_grad_()
    v = sw_regulariser(b, a, points="images", p=1, n_projections=64, rng=gen())
    assert float(v) > 0
    v.backward()
    assert b.grad is not None and torch.isfinite(b.grad).all()
    with pytest.raises(ValueError, match="points must be"):
        sw_regulariser(a, a, points="batch")
