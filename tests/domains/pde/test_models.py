"""The wavelet codec, the grids a model serves, the denoiser's backbones and schedules."""

from __future__ import annotations

import pytest
import torch

from diffsci.domains.pde.models import band_gain, check_grid, codec, decode, encode
from diffsci.domains.pde.task import PDETask
from diffsci.domains.pde.wavelets import dwt2


def test_encode_decode_round_trip():
    u = torch.randn(2, 16, 32, dtype=torch.float64)
    c = encode(u, scale=0.7, wavelet="db2", level=1)
    assert c.shape == (2, 4, 8, 16)
    assert torch.allclose(decode(c, scale=0.7, wavelet="db2", level=1), u, atol=1e-12)
    assert torch.allclose(c, dwt2(u / 0.7, wavelet="db2", level=1))


def _smooth(nx: int, nt: int = 16) -> torch.Tensor:
    t = torch.linspace(0, 1, nt, dtype=torch.float64)[:, None]
    x = torch.arange(nx, dtype=torch.float64)[None] / nx
    return (
        torch.sin(2 * torch.pi * x + 0.3) * torch.cos(2 * t) + 0.5 * torch.cos(4 * torch.pi * x) * t
    )[None]


@pytest.mark.parametrize("level", [1, 2])
def test_band_gain_makes_smooth_bands_grid_invariant(level):
    # x-high-pass bands of a smooth field shrink ~2x per grid doubling; the gains undo it
    rms = {}
    for nx in (64, 128):
        u = _smooth(nx)
        plain = encode(u, scale=1.0, wavelet="haar", level=level)
        scaled = encode(u, scale=1.0, wavelet="haar", level=level, nx_ref=64)
        assert torch.allclose(
            decode(scaled, scale=1.0, wavelet="haar", level=level, nx_ref=64), u, atol=1e-12
        )
        rms[nx] = (plain.square().mean((0, 2, 3)).sqrt(), scaled.square().mean((0, 2, 3)).sqrt())
    xhigh = 2 if level == 1 else 8  # band cV (level 1); LL then cV (level 2)
    assert rms[128][0][xhigh] / rms[64][0][xhigh] < 0.55  # plain: halves
    assert rms[128][1][xhigh] / rms[64][1][xhigh] == pytest.approx(1.0, abs=0.03)
    assert torch.allclose(rms[128][1][0], rms[64][1][0], rtol=0.02)  # LL needs no gain
    g = band_gain(level, 128, 64)
    assert g.shape == (4**level, 1, 1) and g[0].item() == 1.0 and g.max().item() == 2.0**level
    assert band_gain(level, 64, 64) is None and band_gain(level, 128, None) is None


def test_codec_reference_grid_is_the_finest_training_grid(make_cfg):
    cfg = make_cfg()
    cfg["data"]["train_nx"] = [32, 64]
    assert codec(cfg) == {"wavelet": "haar", "level": 1, "nx_ref": 64}
    cfg["model"]["band_scaling"] = "none"
    assert codec(cfg)["nx_ref"] is None


def test_grid_the_model_cannot_serve_is_named(make_cfg):
    cfg = make_cfg(channels=[16, 32, 32])  # level 1 + 3 UNet levels -> multiples of 8
    check_grid(cfg, 16, 64, source="ok")
    with pytest.raises(ValueError, match=r"nt=16, nx=36 cannot be served.*multiples of 8"):
        check_grid(cfg, 16, 36, source="test.h5")


def test_fno_backbone_serves_any_even_grid_and_uses_the_training_sigmas(make_cfg):
    from diffsci.core.schedules import LogNormalSigma
    from diffsci.domains.pde.models.fno import FNODenoiserNet

    cfg = make_cfg(backbone="fno", modes=[4, 4], width=8, depth=2, p_mean=0.5, p_std=0.7)
    check_grid(cfg, 8, 36, source="ok")  # only the wavelet level constrains the grid
    with pytest.raises(ValueError, match="backbone fno"):
        check_grid(cfg, 8, 35, source="odd.h5")
    den = PDETask().build_model(cfg)
    assert isinstance(den.net, FNODenoiserNet)
    assert isinstance(den.train_sigma, LogNormalSigma)
    assert (den.train_sigma.p_mean, den.train_sigma.p_std) == (0.5, 0.7)
    x = torch.randn(2, 4, 4, 18)
    assert den(x, torch.ones(2), torch.zeros_like(x)).shape == x.shape


def test_refiner_schedule_trains_and_samples_on_the_same_levels(make_cfg):
    from diffsci.core.schedules import DiscreteSigma
    from diffsci.domains.pde.models import sampling_sigmas

    cfg = make_cfg(
        backbone="fno",
        modes=[4, 4],
        width=8,
        depth=2,
        sigma_schedule="refiner",
        refiner_k=2,
        refiner_sigma_min=0.01,
        refiner_sigma_max=80.0,
        refiner_regression_weight=2.0,
    )
    den = PDETask().build_model(cfg)
    assert isinstance(den.train_sigma, DiscreteSigma)
    assert den.train_sigma.levels.tolist() == pytest.approx([80.0, 0.1, 0.01])
    assert den.train_sigma.cdf.tolist() == pytest.approx([0.5, 0.75, 1.0])
    assert sampling_sigmas(cfg).tolist() == pytest.approx([80.0, 0.1, 0.01, 0.0])
    # the exact regression step is the default: the regression level (and nothing below it)
    # gets the zero input
    assert 0.1 < den.regression_sigma < 80.0
    cfg["model"]["refiner_zero_input"] = False
    assert PDETask().build_model(cfg).regression_sigma is None
    bad = make_cfg(
        sigma_schedule="refiner", refiner_k=1, refiner_sigma_min=0.5, refiner_sigma_max=0.4
    )
    with pytest.raises(ValueError, match="model.refiner_"):
        PDETask().build_model(bad)
    # the default stays the EDM log-normal training and a Karras sampling schedule
    cfg = make_cfg()
    cfg["sampling"].update(steps=5, sigma_min=0.002, sigma_max=80.0)
    sig = sampling_sigmas(cfg)
    assert len(sig) == 6 and sig[0] == 80.0 and sig[-1] == 0.0
