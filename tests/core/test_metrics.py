"""Metrics against independent computations (numpy loops, scipy, skimage, MONAI, properscoring)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from diffsci.core import metrics as M

RNG = np.random.default_rng


def _image(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 2.0) -> np.ndarray:
    """A smooth non-negative test image (so SSIM is far from 0 and 1)."""
    return ndimage.gaussian_filter(rng.random(shape), sigma) * 3.0


# ------------------------------------------------------------------------------------------
# image metrics
# ------------------------------------------------------------------------------------------


def test_psnr_matches_formula_and_fastmri_convention():
    rng = RNG(0)
    gt = _image(rng, (4, 32, 32))
    pred = gt + 0.05 * rng.standard_normal(gt.shape)
    mse = np.mean((pred - gt) ** 2)
    ref = 10 * np.log10(gt.max() ** 2 / mse)  # fastMRI: data_range = gt.max() of the volume
    assert float(M.psnr(pred, gt)) == pytest.approx(ref, rel=1e-12)
    skm = pytest.importorskip("skimage.metrics")
    ref_sk = skm.peak_signal_noise_ratio(gt, pred, data_range=gt.max())
    assert float(M.psnr(torch.as_tensor(pred), torch.as_tensor(gt))) == pytest.approx(
        ref_sk, rel=1e-12
    )
    assert float(M.psnr(pred, gt, data_range=2.0)) == pytest.approx(
        10 * np.log10(4.0 / mse), rel=1e-12
    )
    # Per-slice PSNR with its own peak.
    per = M.psnr(pred, gt, dim=(1, 2), reduction="none")
    ref_per = [
        10 * np.log10(g.max() ** 2 / np.mean((p - g) ** 2)) for p, g in zip(pred, gt, strict=True)
    ]
    np.testing.assert_allclose(per.numpy(), ref_per, rtol=1e-12)
    assert float(M.psnr(pred, gt, dim=(1, 2))) == pytest.approx(np.mean(ref_per), rel=1e-12)


def test_nmse_matches_formula():
    rng = RNG(1)
    gt = rng.standard_normal((3, 8, 8))
    pred = gt + 0.1 * rng.standard_normal(gt.shape)
    ref = np.linalg.norm(pred - gt) ** 2 / np.linalg.norm(gt) ** 2
    assert float(M.nmse(pred, gt)) == pytest.approx(ref, rel=1e-12)
    per = M.nmse(pred, gt, dim=(-2, -1), reduction="none")
    ref_per = [np.sum((p - g) ** 2) / np.sum(g**2) for p, g in zip(pred, gt, strict=True)]
    np.testing.assert_allclose(per.numpy(), ref_per, rtol=1e-12)


def test_ssim_uniform_matches_skimage_fastmri():
    skm = pytest.importorskip("skimage.metrics")
    rng = RNG(2)
    gt = _image(rng, (3, 40, 36))
    pred = gt + 0.1 * rng.standard_normal(gt.shape)
    dr = gt.max()
    per = M.ssim(pred, gt, data_range=dr, reduction="none")
    ref = [
        skm.structural_similarity(g, p, data_range=dr, win_size=7)
        for g, p in zip(gt, pred, strict=True)
    ]
    assert 0.2 < min(ref) < max(ref) < 0.95
    np.testing.assert_allclose(per.numpy(), ref, atol=1e-6, rtol=0)
    # fastMRI volume SSIM: the mean over slices.
    assert float(M.ssim(pred, gt, data_range=dr)) == pytest.approx(np.mean(ref), abs=1e-6)
    # Single image, other window size, population covariance.
    v = M.ssim(pred[0], gt[0], data_range=dr, win_size=5, sample_covariance=False)
    r = skm.structural_similarity(
        gt[0], pred[0], data_range=dr, win_size=5, use_sample_covariance=False
    )
    assert v.shape == () and float(v) == pytest.approx(r, abs=1e-6)


def test_ssim_uniform_3d_matches_skimage():
    skm = pytest.importorskip("skimage.metrics")
    rng = RNG(3)
    gt = _image(rng, (12, 14, 16))
    pred = gt + 0.1 * rng.standard_normal(gt.shape)
    v = M.ssim(pred, gt, data_range=gt.max(), spatial_dims=3)
    r = skm.structural_similarity(gt, pred, data_range=gt.max(), win_size=7)
    assert float(v) == pytest.approx(r, abs=1e-6)


def test_ssim_gaussian_matches_monai_and_skimage():
    from monai.metrics import SSIMMetric

    rng = RNG(4)
    gt = _image(rng, (3, 1, 48, 40), sigma=1.0)
    gt = (gt - gt.min()) / (
        gt.max() - gt.min()
    )  # in [0, 1] with structure: float32 MONAI is exact to ~1e-6
    pred = np.clip(gt + 0.05 * rng.standard_normal(gt.shape), 0, None)
    ref = SSIMMetric(
        spatial_dims=2, data_range=1.0, kernel_type="gaussian", win_size=11, kernel_sigma=1.5
    )(torch.as_tensor(pred, dtype=torch.float32), torch.as_tensor(gt, dtype=torch.float32))
    ours = M.ssim(pred, gt, data_range=1.0, window="gaussian", win_size=11, reduction="none")
    assert ours.shape == (3, 1)
    np.testing.assert_allclose(ours.numpy(), ref.double().numpy(), atol=1e-5, rtol=0)
    skm = pytest.importorskip("skimage.metrics")
    r = skm.structural_similarity(
        gt[0, 0],
        pred[0, 0],
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert float(ours[0, 0]) == pytest.approx(r, abs=1e-6)
    # win_size defaults to 11 for the Gaussian window.
    assert torch.equal(ours, M.ssim(pred, gt, data_range=1.0, window="gaussian", reduction="none"))


def test_ssim_properties_and_gradient():
    rng = RNG(5)
    gt = torch.as_tensor(_image(rng, (2, 20, 20)))
    assert float(M.ssim(gt, gt, data_range=3.0)) == pytest.approx(1.0, abs=1e-12)
    pred = (
        gt + 0.1 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(0), dtype=gt.dtype)
    ).requires_grad_()
    M.ssim(pred, gt, data_range=3.0, window="gaussian").backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    # Per-image data range broadcasts over the batch.
    a = M.ssim(pred.detach(), gt, data_range=torch.tensor([1.0, 3.0]), reduction="none")
    b0 = M.ssim(pred.detach()[0], gt[0], data_range=1.0)
    b1 = M.ssim(pred.detach()[1], gt[1], data_range=3.0)
    torch.testing.assert_close(a, torch.stack([b0, b1]))


# ------------------------------------------------------------------------------------------
# CRPS
# ------------------------------------------------------------------------------------------


def _crps_integral(members: np.ndarray, y: float) -> float:
    """Exact integral of (F_ens(z) - 1{z >= y})^2 dz: the integrand is piecewise constant."""
    pts = np.sort(np.append(members, y))
    mids = (pts[1:] + pts[:-1]) / 2
    f = (members[None, :] <= mids[:, None]).mean(axis=1)
    h = (mids >= y).astype(float)
    return float(np.sum((f - h) ** 2 * np.diff(pts)))


def _crps_grid(members: np.ndarray, y: float, n: int = 400_001) -> float:
    lo, hi = min(members.min(), y) - 1.0, max(members.max(), y) + 1.0
    z = np.linspace(lo, hi, n)
    f = (np.sort(members)[None, :] <= z[:, None]).mean(axis=1)
    return float(np.trapezoid((f - (z >= y)) ** 2, z))


def test_crps_matches_integral_definition():
    rng = RNG(6)
    ens = rng.standard_normal((13, 50))  # member_dim = 0
    obs = rng.standard_normal(50) * 1.5
    ours = M.crps_ensemble(ens, obs, reduction="none").numpy()
    ref = np.array([_crps_integral(ens[:, i], obs[i]) for i in range(50)])
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-13)
    assert float(M.crps_ensemble(ens, obs)) == pytest.approx(ref.mean(), rel=1e-12)
    # A brute-force grid quadrature for a couple of points.
    for i in range(2):
        assert ours[i] == pytest.approx(_crps_grid(ens[:, i], obs[i]), abs=1e-4)
    # member_dim and pairwise formula agree.
    ours_last = M.crps_ensemble(
        torch.as_tensor(ens.T), obs, member_dim=-1, reduction="none"
    ).numpy()
    np.testing.assert_allclose(ours_last, ours, rtol=1e-12)
    pair = np.abs(ens - obs).mean(0) - np.abs(ens[:, None] - ens[None]).sum((0, 1)) / (2 * 13**2)
    np.testing.assert_allclose(ours, pair, rtol=1e-12, atol=1e-13)


def test_crps_matches_properscoring():
    ps = pytest.importorskip("properscoring")
    rng = RNG(7)
    ens = rng.standard_normal((4, 5, 20))
    obs = rng.standard_normal((4, 5))
    ref = ps.crps_ensemble(obs, ens, axis=-1)
    np.testing.assert_allclose(
        M.crps_ensemble(ens, obs, member_dim=-1, reduction="none").numpy(), ref, rtol=1e-10
    )


def test_crps_identical_members_is_mae_and_gradient():
    rng = RNG(8)
    x = rng.standard_normal(30)
    obs = rng.standard_normal(30)
    ens = np.repeat(x[None], 7, axis=0)
    assert float(M.crps_ensemble(ens, obs)) == pytest.approx(np.abs(x - obs).mean(), rel=1e-12)
    assert float(M.crps_ensemble(ens, obs, fair=True)) == pytest.approx(
        np.abs(x - obs).mean(), rel=1e-12
    )
    e = torch.as_tensor(rng.standard_normal((7, 30)), dtype=torch.float64).requires_grad_()
    M.crps_ensemble(e, obs).backward()
    assert torch.isfinite(e.grad).all() and e.grad.abs().sum() > 0


def test_crps_fair_formula_and_unbiased():
    rng = RNG(9)
    m, n = 5, 200_000
    ens = rng.standard_normal((m, 6))
    obs = rng.standard_normal(6)
    fair = M.crps_ensemble(ens, obs, fair=True, reduction="none").numpy()
    ref = np.abs(ens - obs).mean(0) - np.abs(ens[:, None] - ens[None]).sum((0, 1)) / (
        2 * m * (m - 1)
    )
    np.testing.assert_allclose(fair, ref, rtol=1e-12, atol=1e-13)
    # Expectation: the fair score of an M-member N(0,1) ensemble is unbiased for the CRPS of
    # N(0,1) itself; the standard one is biased up by E|X-X'|/(2M) = 1/(M sqrt(pi)) = 0.113.
    ens = torch.as_tensor(rng.standard_normal((m, n)))
    obs = torch.as_tensor(rng.standard_normal(n) * 1.3)
    y = obs.numpy()
    exact = np.mean(y * (2 * stats.norm.cdf(y) - 1) + 2 * stats.norm.pdf(y) - 1 / np.sqrt(np.pi))
    assert float(M.crps_ensemble(ens, obs, fair=True)) == pytest.approx(exact, abs=0.005)
    assert float(M.crps_ensemble(ens, obs)) - exact == pytest.approx(
        1 / (m * np.sqrt(np.pi)), abs=0.005
    )


# ------------------------------------------------------------------------------------------
# sample distances
# ------------------------------------------------------------------------------------------


def test_energy_distance_vs_scipy_1d_and_loop_3d():
    rng = RNG(10)
    u, v = rng.standard_normal(60), rng.standard_normal(45) + 0.5
    assert float(M.energy_distance(u, v)) == pytest.approx(
        stats.energy_distance(u, v) ** 2, rel=1e-10
    )
    x, y = rng.standard_normal((20, 3)), rng.standard_normal((15, 3)) + 0.3

    def e(a, b):
        return np.mean([[np.linalg.norm(ai - bj) for bj in b] for ai in a])

    ref = 2 * e(x, y) - e(x, x) - e(y, y)
    assert float(M.energy_distance(x, y)) == pytest.approx(ref, rel=1e-12)
    assert float(M.energy_distance(x, x)) == pytest.approx(0.0, abs=1e-12)
    xt = torch.as_tensor(x).requires_grad_()
    M.energy_distance(xt, y).backward()
    assert torch.isfinite(xt.grad).all() and xt.grad.abs().sum() > 0


def _mmd_loop(x, y, bws, unbiased):
    def k(a, b):
        return sum(np.exp(-np.sum((a - b) ** 2) / (2 * s**2)) for s in bws)

    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if (i != j or not unbiased))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if (i != j or not unbiased))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
    if unbiased:
        return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)
    return sxx / n**2 + syy / m**2 - 2 * sxy / (n * m)


@pytest.mark.parametrize("unbiased", [True, False])
def test_mmd_vs_loop(unbiased):
    rng = RNG(11)
    x, y = rng.standard_normal((12, 2)), rng.standard_normal((9, 2)) * 1.5 + 0.2
    for bw in (0.7, [0.5, 1.0, 2.0]):
        bws = [bw] if np.isscalar(bw) else bw
        ref = _mmd_loop(x, y, bws, unbiased)
        assert float(M.mmd(x, y, bandwidth=bw, unbiased=unbiased)) == pytest.approx(ref, rel=1e-10)
    z = np.concatenate([x, y])
    d = np.array([np.linalg.norm(z[i] - z[j]) for i in range(len(z)) for j in range(i + 1, len(z))])
    med = np.median(d)
    ref = _mmd_loop(x, y, [med], unbiased)
    assert float(M.mmd(x, y, unbiased=unbiased)) == pytest.approx(ref, rel=1e-10)


def test_mmd_gradient_and_separation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g, dtype=torch.float64)
    y = torch.randn(200, 2, generator=g, dtype=torch.float64)
    assert abs(float(M.mmd(x, y))) < 0.01 < float(M.mmd(x, y + 1.0))
    xr = x.clone().requires_grad_()
    M.mmd(xr, y + 1.0).backward()
    assert torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0


def test_sliced_wasserstein_1d_and_identical():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64)
    assert float(M.sliced_wasserstein(x, x, generator=torch.Generator().manual_seed(0))) == 0.0
    # In 1-D every direction is +-1: SW_p = W_p. N(0,1) vs N(m,1): W_2 = |m|.
    a = torch.randn(20000, generator=g, dtype=torch.float64)
    b = torch.randn(20000, generator=g, dtype=torch.float64) + 0.7
    assert float(M.sliced_wasserstein(a, b, n_projections=4)) == pytest.approx(0.7, abs=0.02)
    # Exact empirical W_p, also for unequal sizes, against scipy (p = 1) and sorted (p = 2).
    rng = RNG(12)
    u, v = rng.standard_normal(37), rng.standard_normal(23) * 2 + 0.4
    assert float(M.sliced_wasserstein(u, v, p=1, n_projections=3)) == pytest.approx(
        stats.wasserstein_distance(u, v), rel=1e-12
    )
    w = rng.standard_normal(37) + 1
    ref2 = np.sqrt(np.mean((np.sort(u) - np.sort(w)) ** 2))
    assert float(M.sliced_wasserstein(u, w, n_projections=3)) == pytest.approx(ref2, rel=1e-12)
    # Unequal sizes, p = 2: replicating each sample n/m times gives equal-size sets.
    ref_rep = np.sqrt(np.mean((np.sort(np.repeat(u[:10], 3)) - np.sort(np.repeat(v[:15], 2))) ** 2))
    assert float(M.sliced_wasserstein(u[:10], v[:15], n_projections=2)) == pytest.approx(
        ref_rep, rel=1e-12
    )


def test_sliced_wasserstein_multivariate():
    rng = RNG(13)
    x, y = rng.standard_normal((40, 3)), rng.standard_normal((40, 3)) + [1.0, -0.5, 0.2]
    theta = rng.standard_normal((5, 3))
    th = theta / np.linalg.norm(theta, axis=1, keepdims=True)
    ref = np.sqrt(np.mean([np.mean((np.sort(x @ t) - np.sort(y @ t)) ** 2) for t in th]))
    assert float(M.sliced_wasserstein(x, y, projections=theta)) == pytest.approx(ref, rel=1e-12)
    # Gaussians with a mean shift s: E_theta (theta.s)^2 = |s|^2 / d.
    g = torch.Generator().manual_seed(2)
    s = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64)
    a = torch.randn(1500, 3, generator=g, dtype=torch.float64)
    b = torch.randn(1500, 3, generator=g, dtype=torch.float64) + s
    sw = M.sliced_wasserstein(a, b, n_projections=1000, generator=g)
    assert float(sw) == pytest.approx(float(s.norm()) / math.sqrt(3), rel=0.06)
    ar = a.clone().requires_grad_()
    M.sliced_wasserstein(ar, b, generator=torch.Generator().manual_seed(3)).backward()
    assert torch.isfinite(ar.grad).all() and ar.grad.abs().sum() > 0


def test_ks_statistic():
    rng = RNG(14)
    x = rng.standard_normal((300, 2))
    y = rng.standard_normal((250, 2)) + [0.0, 0.8]
    stat, p = M.ks_statistic(x, y)
    assert stat.shape == p.shape == (2,)
    for j in range(2):
        z = np.sort(np.concatenate([x[:, j], y[:, j]]))
        fx = np.searchsorted(np.sort(x[:, j]), z, side="right") / len(x)
        fy = np.searchsorted(np.sort(y[:, j]), z, side="right") / len(y)
        assert float(stat[j]) == pytest.approx(np.max(np.abs(fx - fy)), rel=1e-12)
    assert p[0] > 0.01 and p[1] < 1e-10


# ------------------------------------------------------------------------------------------
# ensemble calibration
# ------------------------------------------------------------------------------------------


def _ensembles(m: int = 10, n: int = 20_000, seed: int = 15):
    """Calibrated (members and truth i.i.d. given a random centre) and under-dispersed."""
    g = torch.Generator().manual_seed(seed)
    centre = 3 * torch.randn(n, generator=g, dtype=torch.float64)
    truth = centre + torch.randn(n, generator=g, dtype=torch.float64)
    calibrated = centre + torch.randn(m, n, generator=g, dtype=torch.float64)
    under = centre + 0.5 * torch.randn(m, n, generator=g, dtype=torch.float64)
    return calibrated, under, truth


def test_spread_skill():
    cal, under, truth = _ensembles()
    assert float(M.spread_skill(cal, truth)) == pytest.approx(1.0, abs=0.03)
    assert float(M.spread_skill(under, truth)) < 0.8
    # The exact formula, and member_dim.
    e, y, m = cal.numpy(), truth.numpy(), cal.shape[0]
    spread = np.sqrt(np.mean(np.var(e, axis=0, ddof=1)))
    rmse = np.sqrt(np.mean((e.mean(0) - y) ** 2))
    assert float(M.spread_skill(e, y, adjusted=False)) == pytest.approx(spread / rmse, rel=1e-12)
    assert float(M.spread_skill(e.T, y, member_dim=1)) == pytest.approx(
        np.sqrt((m + 1) / m) * spread / rmse, rel=1e-12
    )
    # Without the factor a calibrated 5-member ensemble is biased low by sqrt(5/6).
    small = cal[:5]
    assert float(M.spread_skill(small, truth, adjusted=False)) == pytest.approx(
        math.sqrt(5 / 6), abs=0.03
    )


def test_rank_histogram():
    cal, under, truth = _ensembles(m=9, n=10_000)
    h = M.rank_histogram(cal, truth, generator=torch.Generator().manual_seed(0))
    assert h.dtype == torch.int64 and h.shape == (10,) and int(h.sum()) == 10_000
    assert stats.chisquare(h.numpy()).pvalue > 0.01
    hu = M.rank_histogram(under, truth).numpy()
    assert hu[0] > 2 * hu[1:-1].mean() and hu[-1] > 2 * hu[1:-1].mean()
    assert stats.chisquare(hu).pvalue < 1e-10
    # Ranks: count of members strictly below, loop reference (no ties for continuous data).
    e, y = cal[:, :200].numpy(), truth[:200].numpy()
    ref = np.bincount([(e[:, i] < y[i]).sum() for i in range(200)], minlength=10)
    np.testing.assert_array_equal(M.rank_histogram(e, y).numpy(), ref)
    # Ties are broken at random: a discrete ensemble equal to the truth gives a flat histogram.
    ht = M.rank_histogram(
        torch.zeros(4, 5000), torch.zeros(5000), generator=torch.Generator().manual_seed(1)
    )
    assert ht.shape == (5,) and stats.chisquare(ht.numpy()).pvalue > 0.01


def test_interval_coverage():
    g = torch.Generator().manual_seed(16)
    centre = 2 * torch.randn(2000, generator=g, dtype=torch.float64)
    samples = centre + torch.randn(499, 2000, generator=g, dtype=torch.float64)
    truth = centre + torch.randn(2000, generator=g, dtype=torch.float64)
    for level in (0.5, 0.9):
        assert float(M.interval_coverage(samples, truth, level=level)) == pytest.approx(
            level, abs=0.025
        )
    assert float(M.interval_coverage(0.3 * (samples - centre) + centre, truth)) < 0.5
    # Exactly numpy's quantiles.
    s, t = samples[:30, :300].numpy(), truth[:300].numpy()
    lo, hi = np.quantile(s, 0.05, axis=0), np.quantile(s, 0.95, axis=0)
    ref = np.mean((t >= lo) & (t <= hi))
    assert float(M.interval_coverage(s.T, t, member_dim=1)) == pytest.approx(ref, abs=1e-15)


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: M.psnr(np.ones(3), np.ones(4)), "pred and target"),
        (lambda: M.nmse(np.ones(3), np.array([1.0, np.nan, 1.0])), "target"),
        (lambda: M.ssim(np.full((8, 8), np.inf), np.ones((8, 8)), data_range=1.0), "pred"),
        (lambda: M.ssim(np.ones((5, 5)), np.ones((5, 5)), data_range=1.0), "win_size"),
        (lambda: M.crps_ensemble(np.ones((5, 3)), np.ones(4)), "obs"),
        (lambda: M.crps_ensemble(np.array([[np.nan]]), np.ones(1)), "ensemble"),
        (lambda: M.energy_distance(np.ones((3, 2)), np.ones((3, 3))), "x and y"),
        (lambda: M.mmd(np.ones((3, 2)), np.full((3, 2), np.inf)), "y"),
        (lambda: M.sliced_wasserstein(np.ones((3, 2, 2)), np.ones((3, 2))), "x"),
        (lambda: M.spread_skill(np.ones((4, 3)), np.ones(2)), "obs"),
        (lambda: M.rank_histogram(np.ones((4, 3)), np.ones((3, 1))), "obs"),
        (lambda: M.interval_coverage(np.ones((4, 3)), np.ones(2)), "truth"),
        (lambda: M.ks_statistic(np.ones(3), np.array([np.nan])), "y"),
    ],
)
def test_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()
