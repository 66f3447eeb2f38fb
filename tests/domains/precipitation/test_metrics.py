"""Each metric against an independent computation, and statistical sanity at fixed seeds."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from diffsci.core.metrics import sliced_wasserstein
from diffsci.domains.precipitation import metrics as pm


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_crps_brute_force_and_identical_members(rng):
    ens = rng.gamma(1.0, size=(5, 3, 4, 4))
    obs = rng.gamma(1.0, size=(3, 4, 4))
    m = ens.shape[0]
    skill = np.abs(ens - obs).mean(0)
    spread = sum(np.abs(ens[i] - ens[j]) for i, j in itertools.product(range(m), range(m)))
    want = (skill - spread / (2 * m * m)).mean()
    assert pm.crps(ens, obs) == pytest.approx(want, rel=1e-10)
    same = np.repeat(obs[None] + 0.3, 4, axis=0)
    assert pm.crps(same, obs) == pytest.approx(pm.mae(same[0], obs))


def test_mae_rmse_bias():
    p, o = np.array([1.0, 2.0, 4.0]), np.array([0.0, 2.0, 1.0])
    assert pm.mae(p, o) == pytest.approx(4 / 3)
    assert pm.rmse(p, o) == pytest.approx(np.sqrt(10 / 3))
    assert pm.bias(p, o) == pytest.approx(4 / 3)


def test_csi_contingency_table():
    o = np.array([[0, 1, 3], [2, 0, 5]], float)
    p = np.array([[1, 1, 0], [2, 2, 6]], float)
    # >= 1: obs events {(0,1),(0,2),(1,0),(1,2)}, forecast {(0,0),(0,1),(1,0),(1,1),(1,2)}
    hits, misses, fa = 3, 1, 2
    assert pm.csi(p, o, 1.0) == pytest.approx(hits / (hits + misses + fa))
    ens = np.stack([p, o])
    assert pm.csi(ens, o, 1.0, ensemble=True) == pytest.approx((0.5 + 1.0) / 2)


def _fss_loop(p, o, thr, n):
    # direct neighbourhood fractions with zero padding (Roberts & Lean 2008)
    def frac(b):
        h, w = b.shape[-2:]
        r = n // 2
        out = np.zeros(b.shape)
        for i in range(h):
            for j in range(w):
                win = b[..., max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1]
                out[..., i, j] = win.sum(axis=(-2, -1)) / n**2
        return out

    fp, fo = frac((p >= thr).astype(float)), frac((o >= thr).astype(float))
    return 1 - ((fp - fo) ** 2).sum() / ((fp**2).sum() + (fo**2).sum())


def test_fss_against_loop_and_limits(rng):
    o = rng.gamma(0.5, size=(2, 12, 12))
    p = np.roll(o, 2, axis=-1)
    for n in (1, 3, 5):
        assert pm.fss(p, o, 0.5, n) == pytest.approx(_fss_loop(p, o, 0.5, n), rel=1e-10)
    assert pm.fss(o, o, 0.5, 3) == 1.0
    # displacement errors are forgiven at larger scales
    assert pm.fss(p, o, 0.5, 9) > pm.fss(p, o, 0.5, 1)


def test_fss_single_field_and_case_aggregate(rng):
    o = rng.gamma(0.5, size=(3, 12, 12))
    p = np.roll(o, 1, axis=-2)
    p[1] = 0.0  # a case with no forecast events: its own FSS is 0
    # one 2-D field is a single case
    assert pm.fss(p[0], o[0], 0.5, 3) == pytest.approx(_fss_loop(p[:1], o[:1], 0.5, 3))
    # several cases: numerator and reference summed over cases before the ratio (pysteps'
    # fss_accum/fss_compute), which differs from the mean of per-case FSS here
    agg = pm.fss(p, o, 0.5, 3)
    num = sum(((_frac(p[i] >= 0.5, 3) - _frac(o[i] >= 0.5, 3)) ** 2).sum() for i in range(3))
    ref = sum(
        (_frac(p[i] >= 0.5, 3) ** 2).sum() + (_frac(o[i] >= 0.5, 3) ** 2).sum() for i in range(3)
    )
    assert agg == pytest.approx(1 - num / ref, rel=1e-12)
    per_case = np.mean([pm.fss(p[i], o[i], 0.5, 3) for i in range(3)])
    assert abs(agg - per_case) > 0.05
    # an ensemble of one 2-D field: members on axis 0
    ens = np.stack([p[0], o[0]])
    one = pm.fss(p[0], o[0], 0.5, 3)
    assert 0 < one < 1
    assert pm.fss(ens, o[0], 0.5, 3, ensemble=True) == pytest.approx((one + 1.0) / 2)
    with pytest.raises(ValueError, match="do not match"):
        pm.fss(p[:2], o, 0.5, 3)


def _frac(b, n):
    # zero-padded n x n neighbourhood fractions of one 2-D binary field, by an explicit loop
    h, w = b.shape
    r = n // 2
    return np.array(
        [
            [b[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].sum() / n**2 for j in range(w)]
            for i in range(h)
        ]
    )


def test_pixel_emd_against_core_wasserstein(rng):
    a, b = rng.gamma(1.0, size=(3, 8, 8)), rng.gamma(2.0, size=(8, 8))
    want = float(
        sliced_wasserstein(
            torch.as_tensor(a.ravel()), torch.as_tensor(b.ravel()), p=1, projections=[[1.0]]
        )
    )
    assert pm.pixel_emd(a, b) == pytest.approx(want, rel=1e-9)


def test_percentile_error_matches_sorted(rng):
    a, b = rng.gamma(1.0, size=10001), rng.gamma(1.0, size=10001) * 2
    # with 10001 values the 99.9th percentile is exactly the order statistic 9990
    want = abs(np.sort(a)[9990] - np.sort(b)[9990])
    assert pm.percentile_error(a, b) == pytest.approx(want)


def test_radial_psd_loop_and_parseval(rng):
    f = rng.standard_normal((2, 16, 16))
    k, psd = pm.radial_psd(f)
    np.testing.assert_allclose(k, np.arange(1, 9) / 16)  # cycles per pixel
    power = (np.abs(np.fft.fft2(f)) ** 2 / 256).mean(0)
    for kk, val in zip(range(1, 9), psd, strict=True):
        sel = [
            power[i, j]
            for i in range(16)
            for j in range(16)
            if round(np.hypot(min(i, 16 - i), min(j, 16 - j))) == kk
        ]
        assert val == pytest.approx(np.mean(sel))
    # white noise: flat spectrum at the variance
    big = rng.standard_normal((8, 64, 64))
    kk, p = pm.radial_psd(big)
    assert np.allclose(p[kk >= 4 / 64], 1.0, atol=0.15)  # few modes (noisy) below k = 4


def test_radial_psd_non_square_bins_physical_wavenumber():
    # a plane wave of 1/8 cycle per pixel along each axis of a 32 x 64 grid: both must land in
    # the same annulus k = 1/8 (per-axis cycles per domain would put them at 4 and 8)
    h, w = 32, 64
    y, x = np.mgrid[0:h, 0:w]
    for wave in (np.cos(2 * np.pi * y / 8), np.cos(2 * np.pi * x / 8)):
        k, p = pm.radial_psd(wave)
        assert len(k) == 16 and k[-1] == 0.5
        assert k[np.argmax(p)] == pytest.approx(1 / 8)
    # white noise stays flat at its variance on a non-square grid
    noise = np.random.default_rng(5).standard_normal((8, 48, 96))
    k, p = pm.radial_psd(noise)
    assert np.allclose(p[k >= 4 / 48], 1.0, atol=0.15)
    # each annulus averages the modes whose |k| (both axes, cycles per pixel) rounds to it
    power = (np.abs(np.fft.fft2(noise)) ** 2 / (48 * 96)).mean(0)
    kabs = np.hypot(np.fft.fftfreq(48)[:, None], np.fft.fftfreq(96)[None, :])
    for j in (3, 10, 24):
        sel = np.rint(kabs * 48) == j
        assert p[j - 1] == pytest.approx(power[sel].mean())


def test_psd_dex_error_band():
    rng = np.random.default_rng(3)
    f = rng.standard_normal((4, 64, 64))
    d = pm.psd_dex_error(10 * f, f, factor=8)  # power x100 = 2 dex everywhere
    assert d["max"] == pytest.approx(2.0) and d["signed_mean"] == pytest.approx(2.0)


def test_spread_skill_calibrated_and_underdispersed(rng):
    # exchangeable: truth and members iid around a shared centre
    centre = rng.standard_normal((4000,))
    obs = centre + rng.standard_normal(4000)
    ens = centre + rng.standard_normal((5, 4000))
    assert pm.spread_skill(ens, obs) == pytest.approx(1.0, abs=0.05)
    assert pm.spread_skill(centre + 0.3 * rng.standard_normal((5, 4000)), obs) < 0.5
    h = pm.rank_histogram(ens, obs)
    assert h.sum() == 4000 and len(h) == 6
    assert np.abs(h / 4000 - 1 / 6).max() < 0.03


def test_spread_skill_forms_agree_only_when_spread_is_uniform():
    rng = np.random.default_rng(7)
    # calibrated ensemble whose spread varies from pixel to pixel (sd 0.2 or 2)
    sd = np.where(rng.random(20000) < 0.5, 0.2, 2.0)
    centre = rng.standard_normal(20000)
    obs = centre + sd * rng.standard_normal(20000)
    ens = centre + sd * rng.standard_normal((8, 20000))
    assert pm.spread_skill(ens, obs) == pytest.approx(1.0, abs=0.05)
    # E[sample std] = c4 * sd for M = 8 members (c4 = 0.965)
    c4 = np.sqrt(2 / 7) * np.exp(math.lgamma(4) - math.lgamma(3.5))
    # mean std / RMSE -> c4 (0.2 + 2)/2 / sqrt((0.04 + 4)/2) = 0.747: a calibrated ensemble
    # read as under-dispersed
    assert pm.spread_skill(ens, obs, spread="mean_std") == pytest.approx(
        c4 * 1.1 / np.sqrt(2.02), abs=0.03
    )
    # independent computation of the mean-std form
    m = ens.shape[0]
    want = (
        np.sqrt((m + 1) / m)
        * ens.std(0, ddof=1).mean()
        / np.sqrt(np.mean((ens.mean(0) - obs) ** 2))
    )
    assert pm.spread_skill(ens, obs, spread="mean_std") == pytest.approx(want, rel=1e-12)
    uniform = centre + rng.standard_normal((8, 20000))
    obs_u = centre + rng.standard_normal(20000)
    a, b = pm.spread_skill(uniform, obs_u), pm.spread_skill(uniform, obs_u, spread="mean_std")
    assert b == pytest.approx(c4 * a, rel=0.01)  # uniform spread: only the std's bias differs


def test_evaluate_fields_rows(rng):
    o = rng.gamma(0.5, size=(2, 32, 32)).astype(np.float32)
    row = pm.evaluate_fields(
        np.stack([o, o * 1.1]), o, factor=8, thresholds=[1.0], fss_scales=[1, 3], ensemble=True
    )
    assert {
        "CRPS",
        "MAE",
        "RMSE",
        "bias",
        "CSI@1",
        "FSS@1,3px",
        "EMD",
        "p99.9 error",
        "PSD high-k max |dex|",
        "spread-skill (adj.)",
    } <= set(row)
    det = pm.evaluate_fields(o, o, factor=8, thresholds=[1.0], fss_scales=[1], ensemble=False)
    assert det["CRPS"] == det["MAE"] == 0.0 and det["PSD high-k max |dex|"] == 0.0
