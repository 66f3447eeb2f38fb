"""Noise estimation, the robust subspace, baselines, operators and the subspace prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsci.core.operators import check_adjoint
from diffsci.domains.hyperspectral import baselines as bl
from diffsci.domains.hyperspectral import metrics as m
from diffsci.domains.hyperspectral import models, subspace
from diffsci.domains.hyperspectral import simulate as sim
from diffsci.domains.hyperspectral.operators import ComponentWeight, SubspaceSynthesis

WL = np.linspace(400, 700, 31)


@pytest.fixture(scope="module")
def scene():
    return sim.make_scenes(1, 64, WL, seed=11)[0]


def test_noise_estimate_per_band(scene):
    y, c = sim.add_noise(scene, "noniid", np.random.default_rng(0))
    est = subspace.estimate_sigma(y)
    np.testing.assert_allclose(est, c.sigma, rtol=0.1, atol=5 / 255)
    y, c = sim.add_noise(scene, "stripe", np.random.default_rng(0))  # diagonal Haar ignores stripes
    np.testing.assert_allclose(subspace.estimate_sigma(y), c.sigma, rtol=0.1, atol=5 / 255)


def test_invalid_mask_finds_dead_columns_pixels_and_bands(scene):
    y, c = sim.add_noise(scene, "deadline", np.random.default_rng(0))
    bad = subspace.invalid_mask(y)
    for b in range(31):
        assert bad[b].all(0).any() == (b in c.deadline_bands)
    y, c = sim.add_noise(scene, "dropped", np.random.default_rng(0))
    assert subspace.invalid_mask(y)[c.dropped_bands].all()
    y, c = sim.add_noise(scene, "deadpixels", np.random.default_rng(0))
    assert subspace.invalid_mask(y)[:, c.dead_pixels].all()


def test_fill_levels_find_impulse_not_continuous_or_quantised_values(scene):
    y, c = sim.add_noise(scene, "impulse", np.random.default_rng(4))
    valid = ~subspace.invalid_mask(y)
    lev = subspace.fill_levels(y, valid)
    imp = np.zeros_like(lev)
    imp[c.impulse_bands] = (y[c.impulse_bands] == 0) | (y[c.impulse_bands] == 1)
    assert (lev == imp).all()  # every salt and pepper entry, nothing else
    assert not subspace.fill_levels(
        sim.add_noise(scene, "noniid", np.random.default_rng(4))[0], valid
    ).any()
    rng = np.random.default_rng(4)
    for levels, noise in ((4095, 2.0), (255, 1.0)):  # digital numbers stored as float
        dn = np.round((scene + rng.standard_normal(scene.shape) * noise / levels) * levels)
        assert not subspace.fill_levels((dn / levels).astype(np.float32), valid).any()
    assert not subspace.fill_levels(np.round(scene * 400).astype(np.int16), valid).any()


def test_robust_fit_recovers_bands_mostly_covered_by_impulse(scene):
    """A band 70% salt-and-pepper inflates its own robust noise estimate, so only the
    fill-level test keeps the impulse out of the fit: the band is then restored from the
    others (plain fit: the basis row is fitted to the impulse)."""
    rng = np.random.default_rng(5)
    y = (scene + rng.standard_normal(scene.shape) * 10 / 255).astype(np.float32)
    hit = rng.random(y.shape[1:]) < 0.7
    y[3][hit] = (rng.random(hit.sum()) < 0.5).astype(np.float32)
    est = subspace.robust_subspace(y, 4).cube()
    plain = subspace.robust_subspace(y, 4, robust=False).cube()
    assert m.band_psnr(est, scene)[3] > 30
    assert m.band_psnr(plain, scene)[3] < 20


def test_clip_levels_stay_in_the_fit(scene):
    """Noisy data clipped at 0 (a censored dark pixel, not impulse): the zeros are the pixels
    the other bands call dark, so they stay (masking them would bias the bands)."""
    y, _ = sim.add_noise(scene, "gaussian30", np.random.default_rng(6))
    y = np.clip(y, 0, None)
    assert subspace.fill_levels(y, ~subspace.invalid_mask(y))[y == 0].all()
    assert subspace.robust_subspace(y, 4).valid[y == 0].all()


def test_robust_subspace_removes_stripes(scene):
    y, c = sim.add_noise(scene, "stripe", np.random.default_rng(2))
    plain = subspace.robust_subspace(y, 4, robust=False).cube()
    robust = subspace.robust_subspace(y, 4).cube()
    r_plain = m.stripe_residual(plain, scene, c.stripe_bands)
    r_robust = m.stripe_residual(robust, scene, c.stripe_bands)
    assert r_robust < 0.6 * r_plain


def test_weighted_coefficients_recover_a_low_rank_cube_with_missing_bands():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((20, 3)))
    z = rng.standard_normal((3, 8, 8))
    x = np.einsum("bk,khw->bhw", basis, z)
    w = np.ones_like(x)
    w[[2, 7, 11]] = 0  # dropped bands: recovered from the others through the subspace
    zhat, std = subspace.weighted_coefficients(x, basis, w)
    np.testing.assert_allclose(zhat, z, atol=1e-5)
    assert (std > 0).all()


def test_baselines_improve_on_the_noisy_cube_and_rank_ordering(scene):
    y, _ = sim.add_noise(scene, "gaussian50", np.random.default_rng(1))
    noisy = m.mpsnr(y, scene)
    got = {name: m.mpsnr(f(y), scene) for name, f in bl.BASELINES.items()}
    assert got["per-band Gaussian (SURE)"] > noisy + 4
    assert got["SVD truncation (Gavish-Donoho rank)"] > got["per-band Gaussian (SURE)"] + 2
    at_rank = m.mpsnr(bl.robust_subspace_tv(y, k=4), scene)
    assert at_rank > got["robust subspace + TV (LRTV-like)"]  # the automatic rank is too low


def test_svd_rank_of_an_exactly_low_rank_cube():
    rng = np.random.default_rng(0)
    x = np.einsum("bk,khw->bhw", rng.random((31, 3)), rng.random((3, 40, 40)))
    y = x + 0.01 * rng.standard_normal(x.shape)
    assert bl.mp_rank(y, np.full(31, 0.01)) == 3


def test_tv_denoise_solves_rof():
    rng = np.random.default_rng(0)
    f = np.zeros((32, 32))
    f[:, 16:] = 1
    noisy = f + 0.2 * rng.standard_normal(f.shape)
    u = bl.tv_denoise(noisy, 0.2, iters=200)
    assert np.abs(u - f).mean() < 0.5 * np.abs(noisy - f).mean()
    assert bl.tv_denoise(noisy, 0.0) == pytest.approx(noisy)


def test_operators_adjoint_and_closed_form_prox():
    basis, _ = torch.linalg.qr(torch.randn(12, 3, dtype=torch.float64))
    check_adjoint(SubspaceSynthesis(basis), (3, 5, 5))
    w = torch.rand(3, 5, 5, dtype=torch.float64) + 0.1
    op = ComponentWeight(w)
    z, y = torch.randn(3, 5, 5, dtype=torch.float64), torch.randn(3, 5, 5, dtype=torch.float64)
    from diffsci.core.operators import LinearOperator

    generic = LinearOperator.prox_l2(op, z, y, 0.7, noise_std=0.5, iters=200)
    torch.testing.assert_close(op.prox_l2(z, y, 0.7, noise_std=0.5), generic)
    with pytest.raises(ValueError, match=">= 0"):
        ComponentWeight(-w)


def test_coefficient_images_have_unit_rms(scene):
    c = models.coefficient_images(scene, 4)
    np.testing.assert_allclose(np.sqrt((c**2).mean(axis=(1, 2))), 1.0, rtol=1e-5)
    assert c[0].mean() > 0  # sign fixed


def _small_prior(k: int):
    """An untrained prior of ``k`` components (seeded): shapes and data terms, not quality."""
    torch.manual_seed(0)
    return models.build_prior(
        {
            "components": k,
            "channels": [8, 16],
            "attention_levels": [False, False],
            "num_res_blocks": 1,
            "sigma_data": 1.0,
        }
    )


@pytest.mark.parametrize("signal", [0.0, 0.02, 0.3, 4.0])
def test_spiked_signal_energy_debiases_the_sample_axis(signal):
    """One spike of known energy (noise units) in white noise, 31 x 4096 as a 64x64x31 cube: the
    de-biased energy matches the signal energy the sample axis really carries, where the plain
    ``lambda - 1`` overstates weak components (what the prior's scaling suffered from)."""
    rng = np.random.default_rng(3)
    b, n = 31, 4096
    v = rng.normal(size=b)
    v /= np.linalg.norm(v)
    amp = rng.normal(size=n) * np.sqrt(signal)
    x = v[:, None] * amp[None]
    est, naive, truth = [], [], []
    for _ in range(20):
        y = x + rng.normal(size=(b, n))
        u = np.linalg.svd(y, full_matrices=False)[0][:, 0]
        lam = float(np.mean((u @ y) ** 2))
        est.append(models.spiked_signal_energy(np.array([lam]), b / n)[0])
        naive.append(lam - 1.0)
        truth.append(float(np.mean((u @ x) ** 2)))
    err, naive_err = abs(np.mean(est) - np.mean(truth)), abs(np.mean(naive) - np.mean(truth))
    assert err < 0.03 + 0.05 * np.mean(truth)
    if signal <= 0.3:  # the plain estimate keeps the selection excess (0.18 for pure noise)
        assert err < naive_err / 2 and naive_err > 0.05


def test_restore_serves_another_band_count_and_shape():
    """A prior built for k components restores a 100-band, 20x24 cube (band axis never seen)."""
    prior = _small_prior(3)
    wl = np.linspace(400, 2500, 100)
    x = sim.make_scenes(1, 24, wl, seed=0)[0][:, :20]
    y, _ = sim.add_noise(x, "gaussian30", np.random.default_rng(0))
    s = {
        "steps": 3,
        "sigma_min": 0.01,
        "sigma_max": 5.0,
        "sampler": "euler",
        "lam": 1.0,
        "samples": 2,
    }
    r = models.restore(prior, y, sampling=s, generator=torch.Generator().manual_seed(0))
    assert r.cube.shape == x.shape and np.isfinite(r.cube).all()
    assert r.posterior_std.shape == (3, 20, 24) and (r.posterior_std > 0).any()


def test_dropped_bands_and_dead_pixels_are_completed_not_fitted(scene):
    """Band-missing completion: a dropped band (0 everywhere) is filled from the subspace of
    the others; dead pixels (0 in every band) are left to the prior (huge coefficient std)."""
    y, c = sim.add_noise(scene, "dropped", np.random.default_rng(3))
    est = subspace.robust_subspace(y, 4).cube()
    lost = c.dropped_bands
    assert m.band_psnr(est, scene)[lost].min() > 20  # spectral interpolation, then the subspace
    assert m.band_psnr(y, scene)[lost].max() < 15
    y, c = sim.add_noise(scene, "deadpixels", np.random.default_rng(3))
    sub = subspace.robust_subspace(y, 4)
    assert (sub.coef_std[:, c.dead_pixels] > 100).all()
    assert (sub.coef_std[:, ~c.dead_pixels] < 10).all()


def test_super_resolve_keeps_the_block_means_of_the_low_resolution_subspace(scene):
    """With a negligible prior weight the proximal data step makes the fine coefficients'
    block means equal the low-resolution coefficients: the operator is block averaging
    (factor 2) after the per-pixel whitening."""
    prior = _small_prior(4)
    lr = scene[:, :32, :32].reshape(31, 16, 2, 16, 2).mean((2, 4))
    lr = lr + np.random.default_rng(0).normal(0, 0.02, lr.shape)
    s = {"steps": 3, "sigma_min": 0.01, "sigma_max": 5.0, "sampler": "euler", "lam": 1e-8}
    r = models.super_resolve(
        prior, lr, 2, sampling={**s, "samples": 1}, generator=torch.Generator().manual_seed(0)
    )
    assert r.cube.shape == (31, 32, 32) and np.isfinite(r.cube).all()
    block = r.cube.reshape(31, 16, 2, 16, 2).mean((2, 4))
    np.testing.assert_allclose(block, r.subspace.cube(), atol=2e-3)
    assert np.abs(r.cube - np.repeat(np.repeat(block, 2, 1), 2, 2)).max() > 1e-3  # not flat
    with pytest.raises(ValueError, match="positive integer"):
        models.super_resolve(prior, lr, 0, sampling={**s, "samples": 1})
    with pytest.raises(ValueError, match="multiple of 2"):
        models.super_resolve(prior, lr[:, :15, :15], 3, sampling={**s, "samples": 1})


def test_bm4d_missing_package_is_refused_naming_the_extra(scene, monkeypatch):
    monkeypatch.setattr(bl, "have_bm4d", lambda: False)
    with pytest.raises(ImportError, match=r"pip install 'diffsci\[bm4d\]'"):
        bl.bm4d_denoise(scene)


def test_bm4d_whitens_band_dependent_noise():
    """Only where the optional package is installed (``diffsci[bm4d]``, non-commercial): with
    noise 10x stronger in half the bands, BM4D on the bands divided by their std beats one
    BM4D at the average std, and the input is left unchanged."""
    pytest.importorskip("bm4d")
    x = sim.make_scenes(1, 32, np.linspace(400, 700, 12), seed=3)[0]
    sigma = np.where(np.arange(12) % 2 == 0, 0.02, 0.2)
    y = (x + sigma[:, None, None] * np.random.default_rng(0).standard_normal(x.shape)).astype(
        np.float32
    )
    before = y.copy()
    white = m.mpsnr(bl.bm4d_denoise(y, sigma), x)
    flat = m.mpsnr(bl.bm4d_denoise(y, np.full(12, sigma.mean())), x)
    assert white > m.mpsnr(y, x) + 2
    assert white > flat + 1
    np.testing.assert_array_equal(y, before)
