"""The Fourier Neural Operator baseline: shapes, spectral truncation, a tiny operator fit."""

from __future__ import annotations

import math

import pytest
import torch

from diffsci.domains.pde.models.fno import FNO2d, SpectralConv2d, count_parameters


def test_same_weights_run_at_two_resolutions():
    torch.manual_seed(0)
    net = FNO2d(1, 2, modes=(4, 5), width=8, depth=2)
    n_params = count_parameters(net)
    for shape in ((16, 16), (32, 48)):
        y = net(torch.randn(3, 1, *shape))
        assert y.shape == (3, 2, *shape)
    assert count_parameters(net) == n_params


def test_grid_smaller_than_the_modes_uses_the_modes_it_holds():
    net = FNO2d(1, 1, modes=(12, 12), width=4, depth=1)
    assert net(torch.randn(2, 1, 8, 6)).shape == (2, 1, 8, 6)


def test_parameter_count_matches_the_architecture():
    i, o, w, d, m1, m2, q = 1, 1, 8, 3, 4, 5, 16
    net = FNO2d(i, o, modes=(m1, m2), width=w, depth=d, projection_width=q)
    lifting = (i + 2) * w + w
    fourier = d * (2 * 2 * w * w * m1 * m2 + w * w + w)  # 2 complex blocks (2 reals each) + 1x1
    projection = w * q + q + q * o + o
    expected = lifting + fourier + projection
    assert count_parameters(net) == expected


def test_spectral_conv_annihilates_modes_above_the_cutoff():
    torch.manual_seed(0)
    conv = SpectralConv2d(2, 3, 4, 4).double()
    n = 32
    i = torch.arange(n, dtype=torch.float64)
    # wavenumbers (10, 0), (0, 9) and (7, 11): all outside the kept block
    hf = torch.stack(
        [
            torch.cos(2 * math.pi * 10 * i / n)[:, None].expand(n, n),
            torch.sin(2 * math.pi * 9 * i / n)[None, :].expand(n, n)
            + torch.cos(2 * math.pi * (7 * i[:, None] + 11 * i[None, :]) / n),
        ]
    )[None]
    assert conv(hf).abs().max() < 1e-12
    # a kept mode is not annihilated
    lf = torch.cos(2 * math.pi * 2 * i / n)[:, None].expand(n, n)[None, None].repeat(1, 2, 1, 1)
    assert conv(lf).abs().max() > 1e-3


def test_spectral_conv_negative_first_axis_modes_use_the_second_block():
    conv = SpectralConv2d(1, 1, 2, 2).double()
    with torch.no_grad():
        conv.weights1.zero_()
        conv.weights2.zero_()
        conv.weights2[..., 1, 1, 0] = 1.0  # identity on k1 = -1, k2 = 1
    n = 16
    i = torch.arange(n, dtype=torch.float64)
    phase = 2 * math.pi * (i[:, None] - i[None, :]) / n  # wavenumber (-1, 1) (and (1, -1))
    x = torch.cos(phase)[None, None]
    torch.testing.assert_close(conv(x), x, rtol=0, atol=1e-12)
    y = torch.cos(2 * math.pi * (i[:, None] + i[None, :]) / n)[None, None]  # (1, 1): block 1
    assert conv(y).abs().max() < 1e-12


def test_gradients_flow_to_every_parameter():
    torch.manual_seed(0)
    net = FNO2d(1, 1, modes=(3, 3), width=6, depth=2, padding=(2, 0))
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    net(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_float64_and_bfloat16_autocast():
    torch.manual_seed(0)
    net = FNO2d(1, 1, modes=(3, 3), width=4, depth=1)
    x = torch.randn(2, 1, 8, 8)
    y32 = net(x)
    y64 = net.double()(x.double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y32, rtol=1e-4, atol=1e-5)
    net.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = net(x)
    assert torch.isfinite(yb).all()
    assert (yb.float() - y32).abs().max() < 0.05 * y32.abs().max()


def test_bad_inputs_raise():
    net = FNO2d(2, 1, modes=(2, 2), width=4, depth=1)
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        net(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="modes"):
        FNO2d(1, 1, modes=(2,))
    with pytest.raises(ValueError, match="padding"):
        FNO2d(1, 1, padding=-1)


def _heat(n: int, *, seed: int, nt: int = 16, nx: int = 16, nu: float = 0.02) -> torch.Tensor:
    """Exact periodic heat-equation trajectories ``(n, 1, nt, nx)``, three random modes."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, nt)[:, None]
    x = torch.arange(nx) / nx
    u = torch.zeros(n, nt, nx)
    for k in (1, 2, 3):
        a = torch.randn(n, 1, 1, generator=g) / k
        phi = 2 * math.pi * torch.rand(n, 1, 1, generator=g)
        u += a * torch.exp(-nu * (2 * math.pi * k) ** 2 * t) * torch.sin(2 * math.pi * k * x + phi)
    return u[:, None]


def test_fno_learns_the_heat_solution_operator():
    torch.manual_seed(0)
    train, test = _heat(256, seed=0), _heat(64, seed=1)
    net = FNO2d(1, 1, modes=(6, 6), width=16, depth=2, projection_width=32)
    steps = 250
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        u = train[torch.randint(0, len(train), (32,))]
        loss = (net(u[:, :, :1].expand_as(u)) - u).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        pred = net(test[:, :, :1].expand_as(test))
    rel = ((pred - test).flatten(1).norm(dim=1) / test.flatten(1).norm(dim=1)).mean()
    assert rel < 0.1, float(rel)


def test_denoiser_net_runs_at_two_resolutions_and_depends_on_noise_and_condition():
    from diffsci.domains.pde.models.fno import FNODenoiserNet

    torch.manual_seed(0)
    net = FNODenoiserNet(4, 4, cond_channels=4, modes=(4, 6), width=8, depth=2, padding=(2, 0))
    # FiLM starts at zero (the net is the plain FNO at init); perturb it so sigma matters
    torch.nn.init.normal_(net.film.weight, std=0.1)
    for shape in ((8, 16), (8, 32)):
        x, c = torch.randn(3, 4, *shape), torch.randn(3, 4, *shape)
        y = net(x, torch.zeros(3), c)
        assert y.shape == (3, 4, *shape)
        assert not torch.allclose(y, net(x, torch.full((3,), 1.5), c))
        assert not torch.allclose(y, net(x, torch.zeros(3), torch.zeros_like(c)))
    loss = net(x, torch.zeros(3), c).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_denoiser_net_names_a_bad_condition():
    from diffsci.domains.pde.models.fno import FNODenoiserNet

    net = FNODenoiserNet(4, 4, cond_channels=4, modes=(2, 2), width=4, depth=1)
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"cond must be \(B, 4, 8, 8\), got None"):
        net(x, torch.zeros(1))
    with pytest.raises(ValueError, match="cond must be"):
        net(x, torch.zeros(1), torch.randn(1, 4, 8, 4))
    with pytest.raises(ValueError, match="unconditional"):
        FNODenoiserNet(4, 4, modes=(2, 2), width=4, depth=1)(x, torch.zeros(1), x)
