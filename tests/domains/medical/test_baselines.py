"""Classical baselines beat the naive reconstructions on textured phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsci.domains.medical.baselines import (
    div2d,
    fbp_baseline,
    grad2d,
    pocs_tv,
    tv_denoise,
    tv_iterative,
    zero_filled,
)
from diffsci.domains.medical.metrics import psnr
from diffsci.domains.medical.operators import (
    ParallelBeamRadon,
    SingleCoilMRI,
    kspace_mask,
    sparse_view_angles,
)
from diffsci.domains.medical.simulate import random_ellipse_phantoms


@pytest.fixture(scope="module")
def phantoms() -> torch.Tensor:
    return torch.tensor(random_ellipse_phantoms(3, 48, seed=11))[:, None]


def _psnrs(rec: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    return np.array([float(psnr(rec[i], ref[i])) for i in range(len(ref))])


def test_grad_div_adjoint():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 7, 9, generator=g, dtype=torch.float64)
    p = torch.randn(2, 2, 1, 7, 9, generator=g, dtype=torch.float64)
    assert torch.allclose((grad2d(x) * p).sum(), -(x * div2d(p)).sum())


def test_tv_denoise_reduces_tv_and_noise():
    g = torch.Generator().manual_seed(0)
    clean = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    clean[..., 8:24, 8:24] = 1.0
    noisy = clean + 0.2 * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    den = tv_denoise(noisy, 0.15, iters=100)

    def tv(u):
        return grad2d(u).square().sum(0).sqrt().sum()

    assert tv(den) < 0.3 * tv(noisy)
    assert (den - clean).square().mean() < 0.3 * (noisy - clean).square().mean()
    assert torch.equal(tv_denoise(noisy, 0.0), noisy)
    # complex input: joint TV keeps the shape and dtype
    z = tv_denoise(noisy.to(torch.complex128) * (1 + 1j), 0.1, iters=10)
    assert z.dtype == torch.complex128 and z.shape == noisy.shape


def test_pocs_tv_beats_zero_filled_8x_equispaced(phantoms):
    op = SingleCoilMRI(kspace_mask(48, acceleration=8, kind="equispaced", seed=0))
    y = op(phantoms)
    zf = _psnrs(zero_filled(y, op).abs(), phantoms)
    rec = pocs_tv(y, op, iters=50, tv_iters=10)
    assert rec.shape == phantoms.shape and not rec.is_complex()
    gain = _psnrs(rec, phantoms) - zf
    assert gain.mean() > 3.0 and gain.min() > 1.5, gain
    # data consistency holds on the sampled lines (up to the final real-part projection)
    assert float((op(rec) - y).abs().norm() / y.abs().norm()) < 0.1


def test_tv_iterative_beats_fbp_8_views(phantoms):
    op = ParallelBeamRadon(48, sparse_view_angles(8))
    y = op(phantoms)
    f = _psnrs(fbp_baseline(y, op), phantoms)
    clipped = fbp_baseline(y, op, clip=(0.0, 1.0))
    assert float(clipped.min()) >= 0 and float(clipped.max()) <= 1
    assert (_psnrs(clipped, phantoms) >= f - 1e-9).all()
    rec = tv_iterative(y, op, iters=200)
    assert rec.shape == phantoms.shape and bool((rec >= 0).all())
    gain = _psnrs(rec, phantoms) - f
    assert gain.min() > 5.0, gain
