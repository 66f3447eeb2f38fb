"""The labelled metrics against hand-computed values and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest

from diffsci.domains.hyperspectral import metrics as m


def test_mpsnr_is_the_mean_of_per_band_psnr_with_range_one():
    ref = np.zeros((2, 4, 4))
    x = ref.copy()
    x[0] += 0.1  # MSE 0.01 -> 20 dB
    x[1] += 0.01  # MSE 1e-4 -> 40 dB
    np.testing.assert_allclose(m.band_psnr(x, ref), [20, 40])
    assert m.mpsnr(x, ref) == pytest.approx(30.0)  # not the PSNR of the pooled MSE (23.0 dB)


@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_ssim_matches_scikit_image(data_range):
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    ref = rng.random((3, 20, 24))
    x = np.clip(ref + 0.1 * rng.standard_normal(ref.shape), 0, 1)
    want = np.mean(
        [
            skm.structural_similarity(a, b, win_size=7, data_range=data_range)
            for a, b in zip(x, ref, strict=True)
        ]
    )
    assert m.mssim(x, ref, data_range=data_range) == pytest.approx(want, rel=1e-10)
    if data_range == 2.0:
        assert m.mssim_legacy(x, ref) == pytest.approx(want, rel=1e-10)
        assert m.mssim_legacy(x, ref) > m.mssim(x, ref)


def test_sam_by_hand():
    ref = np.zeros((2, 1, 2))
    ref[0] = 1.0
    x = np.zeros((2, 1, 2))
    x[1, 0, 0] = 1.0  # orthogonal: pi/2
    x[:, 0, 1] = [1.0, 1.0]  # 45 degrees
    assert m.sam(x, ref) == pytest.approx((np.pi / 2 + np.pi / 4) / 2, abs=1e-6)
    assert m.sam(x, ref, degrees=True) == pytest.approx(67.5, abs=1e-4)
    assert m.sam(ref * 3, ref) == pytest.approx(0.0, abs=1e-3)  # scale-invariant


def test_ergas_by_hand():
    ref = np.stack([np.full((3, 3), 0.5), np.full((3, 3), 0.25)])
    x = ref + np.array([0.05, 0.05])[:, None, None]
    # RMSE/mu = 0.1 and 0.2 -> 100 * sqrt((0.01 + 0.04)/2)
    assert m.ergas(x, ref) == pytest.approx(100 * np.sqrt(0.025))
    assert m.ergas(x, ref, ratio=0.25) == pytest.approx(25 * np.sqrt(0.025))


def test_stripe_residual_by_hand():
    ref = np.zeros((3, 4, 5))
    x = ref.copy()
    x[1, :, 2] = 0.2  # a stripe left in band 1: column means differ by 0.2 in one of 5 columns
    x[0] = 1.0  # not a striped band: ignored
    assert m.stripe_residual(x, ref, [1]) == pytest.approx(0.04)
    assert m.stripe_residual(x, ref, [1, 2]) == pytest.approx(0.02)
    assert np.isnan(m.stripe_residual(x, ref, []))


def test_score_keys_and_shape_errors():
    ref = np.random.default_rng(0).random((4, 8, 8))
    s = m.score(ref, ref, stripe_bands=[1])
    assert s["MPSNR"] > 150 and s["MSSIM"] == pytest.approx(1.0) and s["stripe residual"] == 0
    assert set(m.LOWER_IS_BETTER) - {"seconds"} <= set(s)
    with pytest.raises(ValueError, match="one shape"):
        m.mpsnr(ref, ref[:3])
