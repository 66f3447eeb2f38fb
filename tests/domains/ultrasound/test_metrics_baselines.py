"""Metrics against hand-computed values, baselines on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffsci.domains.ultrasound import baselines, metrics


def test_gcnr_hand_computed():
    # disjoint ranges: perfectly separable -> 1; identical samples -> 0
    assert metrics.gcnr([0, 0, 1], [5, 6, 6]) == pytest.approx(1.0)
    assert metrics.gcnr([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(0.0)
    # 256 bins over [0, 1]: a = {0, 0, 1, 1}, b = {0, 1, 1, 1}: min(1/2, 1/4) + min(1/2, 3/4)
    assert metrics.gcnr([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(1 - (0.25 + 0.5))
    # one shared histogram: values 0.3 and 0.31 fall in different bins of [0, 1] (width 1/256)
    assert metrics.gcnr([0.0, 0.3], [0.31, 1.0]) == pytest.approx(1.0)
    # ... but in the same bin when the shared range is wider: [0, 100]
    assert metrics.gcnr([0.0, 0.3], [0.31, 100.0]) == pytest.approx(0.5)


def test_cnr_three_conventions_hand_computed():
    a, b = np.array([1.0, 3.0]), np.array([5.0, 9.0])  # mu 2, 7; var (population) 1, 4
    assert metrics.cnr_db_picmus(a, b) == pytest.approx(20 * math.log10(5 / math.sqrt(2.5)))
    assert metrics.cnr_challenge(a, b) == pytest.approx(-5 / math.sqrt(5))  # signed
    assert metrics.cnr_challenge(b, a) == pytest.approx(5 / math.sqrt(5))
    assert metrics.cnr_textbook(a, b) == pytest.approx(5 / 2)  # background std only
    assert metrics.contrast_ratio_db([1.0, 1.0], [10.0, 10.0]) == pytest.approx(-20.0)


def test_ks_and_psnr_hand_computed():
    assert metrics.ks_statistic([1, 2, 3, 4], [3, 4, 5, 6]) == pytest.approx(0.5)
    r = metrics.ks_challenge([5, 6, 7, 8], [1, 2, 3, 4])  # dehazed darker
    assert r["statistic"] == pytest.approx(1.0) and r["direction"] == 1.0
    ref = np.full((4, 4), -30.0)
    test = ref.copy()
    test[0, 0] = -26.0  # MSE = 16 / 16 = 1 -> 10 log10(60^2)
    assert metrics.bmode_psnr(test, ref, 60) == pytest.approx(10 * math.log10(3600))
    test[0, 0] = -100.0  # clipped to -60 first: error 30 -> MSE 900 / 16
    assert metrics.bmode_psnr(test, ref, 60) == pytest.approx(10 * math.log10(3600 / (900 / 16)))


def test_fwhm_interpolates_the_crossings():
    # peak 1 at index 2; half-amplitude level (-6.02 dB) = 0.5012
    p = np.array([0.0, 0.4, 1.0, 0.6, 0.0])
    thr = 10 ** (-6 / 20)
    left = 1 + (thr - 0.4) / (1.0 - 0.4)
    right = 3 + (0.6 - thr) / 0.6
    assert metrics.fwhm(p, 0.5) == pytest.approx((right - left) * 0.5)
    # a Gaussian of std s has FWHM(-6 dB amplitude) ~ 2 sqrt(2 ln(1/thr)) s
    x = np.linspace(-10, 10, 2001)
    s = 1.3
    g = np.exp(-0.5 * (x / s) ** 2)
    assert metrics.fwhm(g, x[1] - x[0]) == pytest.approx(
        2 * s * math.sqrt(2 * math.log(1 / thr)), rel=1e-4
    )
    with pytest.raises(ValueError, match="both sides"):
        metrics.fwhm([1.0, 0.9, 0.8], 1.0)


def test_roi_masks_and_frame_metrics():
    x = np.linspace(-5e-3, 5e-3, 81)
    z = np.linspace(2e-3, 12e-3, 81)
    cysts = [{"x": 0.0, "z": 7e-3, "radius": 2e-3, "kind": "anechoic"}]
    m = metrics.roi_masks(cysts, [], x, z)
    assert m["anechoic_in"].sum() > 0 and not (m["anechoic_in"] & m["anechoic_out"]).any()
    assert not (m["tissue"] & m["anechoic_in"]).any()
    rng = np.random.default_rng(0)
    env = rng.rayleigh(1.0, (81, 81))
    dark = env.copy()
    dark[m["anechoic_in"]] *= 1e-3
    row = metrics.frame_metrics(dark, dark, env, m, 60.0)
    assert row["gCNR anechoic"] > 0.99 and row["KS vs clean (tissue)"] == 0.0
    assert row["B-mode PSNR (dB, DR 60 dB)"] == float("inf")
    # the challenge's KS in the cyst: hazy (env) vs dehazed (dark): dehazed darker -> +1
    assert row["KS hazy vs dehazed (anechoic cyst)"] > 0.9
    assert row["KS direction (anechoic cyst; +1 = dehazed darker)"] == 1.0
    # no contrast: only the finite-sample histogram mismatch remains
    assert metrics.frame_metrics(env, dark, env, m, 60.0)["gCNR anechoic"] < 0.35


def test_lee_filter_keeps_constants_and_reduces_speckle():
    const = np.full((16, 16), 3.0)
    np.testing.assert_allclose(baselines.lee_filter(const), const)
    env = np.random.default_rng(1).rayleigh(1.0, (64, 64))
    out = baselines.lee_filter(env, 7)
    assert out.std() < 0.6 * env.std() and abs(out.mean() - env.mean()) < 0.05
    with pytest.raises(ValueError, match="odd"):
        baselines.lee_filter(env, 4)


def test_svd_clutter_filter_removes_the_static_component():
    g = torch.Generator().manual_seed(0)
    static = torch.randn(8, 8, generator=g, dtype=torch.complex128) * 10
    moving = torch.stack(
        [torch.roll(torch.randn(8, 8, generator=g, dtype=torch.complex128), k, 1) for k in range(6)]
    )
    moving = moving - moving.mean(0)  # zero temporal mean: orthogonal to the static frame
    frames = static + 0.1 * moving
    out = baselines.svd_clutter_filter(frames, rank=1)
    assert float((out - 0.1 * moving).abs().max()) < 0.05 * float(static.abs().max())
    torch.testing.assert_close(baselines.svd_clutter_filter(frames, 0), frames)
    with pytest.raises(ValueError, match="rank"):
        baselines.svd_clutter_filter(frames, 6)


def test_wiener_split_of_disjoint_spectra():
    g = torch.Generator().manual_seed(0)
    n = 64
    f = torch.fft.fftfreq(n).abs()
    low = ((f[:, None] < 0.15) & (f[None] < 0.15)).double()

    def field(mask: torch.Tensor, count: int) -> torch.Tensor:
        w = torch.randn(count, n, n, generator=g, dtype=torch.complex128)
        return torch.fft.ifft2(torch.fft.fft2(w) * mask)

    def chans(c: torch.Tensor) -> torch.Tensor:
        return torch.stack([c.real, c.imag], -3).float()

    x, h = field(low, 1)[0], field(1 - low, 1)[0]
    mask32 = (
        (torch.fft.fftfreq(32).abs()[:, None] < 0.15) & (torch.fft.fftfreq(32).abs()[None] < 0.15)
    ).double()
    px, ph = mask32 + 1e-6, 1 - mask32 + 1e-6  # the patches' spectra (32 x 32)
    y = chans(x + 0.8 * h).numpy()
    est = baselines.wiener_separation(y, px, ph, 0.8)
    c = np.corrcoef(est.ravel(), chans(x).numpy().ravel())[0, 1]
    assert c > 0.9, c  # per-patch FFTs are circular: the blended borders cost a little
    assert np.corrcoef(y.ravel(), chans(x).numpy().ravel())[0, 1] < 0.6
    # no haze power: the identity
    np.testing.assert_allclose(
        baselines.wiener_separation(y, px * 0 + 1, px * 0, 0.8), y, atol=1e-5
    )
    patches = chans(field(torch.ones(n, n), 4))[:, :, :32, :32]  # white: flat spectrum
    spec = baselines.patch_spectra(patches)
    assert spec.shape == (32, 32) and float(spec.std() / spec.mean()) < 0.5
