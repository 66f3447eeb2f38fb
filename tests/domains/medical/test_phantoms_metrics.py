"""Phantoms and the fastMRI-style metric wrappers (checked against skimage / MONAI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from diffsci.domains.medical.metrics import nmse, psnr, ssim_fastmri, ssim_gaussian
from diffsci.domains.medical.simulate import pydicom_examples, random_ellipse_phantoms


def test_random_ellipse_phantoms():
    p = random_ellipse_phantoms(4, 32, seed=3)
    assert p.shape == (4, 32, 32) and p.dtype == np.float32
    assert p.min() >= 0 and np.allclose(p.max(axis=(1, 2)), 1.0)
    np.testing.assert_array_equal(p, random_ellipse_phantoms(4, 32, seed=3))
    assert not np.array_equal(p, random_ellipse_phantoms(4, 32, seed=4))
    flat = random_ellipse_phantoms(4, 32, seed=3, textured=False)
    # textured: many distinct grey levels; untextured: piecewise constant (few levels)
    assert len(np.unique(p[0])) > 5 * len(np.unique(flat[0]))


def test_pydicom_examples():
    ex = pydicom_examples(32)
    assert set(ex) == {"CT_small", "MR_small"}
    for v in ex.values():
        assert v.shape == (32, 32) and v.dtype == np.float32
        assert v.min() == 0 and v.max() == 1
    assert pydicom_examples()["CT_small"].shape == (128, 128)


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    gt = rng.random((3, 24, 24)) * 2
    pred = gt + 0.1 * rng.standard_normal(gt.shape)
    return pred, gt


def test_psnr_nmse_match_fastmri(pair):
    pred, gt = pair
    ref = peak_signal_noise_ratio(gt, pred, data_range=gt.max())
    assert float(psnr(pred, gt)) == pytest.approx(ref, rel=1e-10)
    assert float(nmse(pred, gt)) == pytest.approx(
        np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2, rel=1e-10
    )


def test_ssim_fastmri_matches_skimage(pair):
    pred, gt = pair
    ref = np.mean(
        [
            structural_similarity(g, p, data_range=gt.max(), win_size=7)
            for g, p in zip(gt, pred, strict=True)
        ]
    )
    assert float(ssim_fastmri(pred, gt)) == pytest.approx(ref, abs=1e-8)


def test_ssim_gaussian_matches_monai(pair):
    from monai.metrics import SSIMMetric

    pred, gt = pair
    m = SSIMMetric(spatial_dims=2, data_range=float(gt.max()))
    ref = m(torch.tensor(pred)[:, None], torch.tensor(gt)[:, None]).mean()
    assert float(ssim_gaussian(pred, gt)) == pytest.approx(float(ref), abs=1e-6)
    # the two conventions give different numbers on a structured image: label which is used
    img = torch.tensor(random_ellipse_phantoms(1, 32, seed=0), dtype=torch.float64)
    noisy = img + 0.2 * torch.randn(
        img.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    assert abs(float(ssim_gaussian(noisy, img)) - float(ssim_fastmri(noisy, img))) > 0.01
