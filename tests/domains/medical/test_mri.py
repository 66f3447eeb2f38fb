"""MRI operators: centered FFT, MONAI-identical masks, single/multi-coil adjoints, DC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.apps.reconstruction.transforms.array import EquispacedKspaceMask, RandomKspaceMask

from diffsci.core.operators import LinearOperator, check_adjoint
from diffsci.domains.medical.operators import (
    MultiCoilMRI,
    SingleCoilMRI,
    fft2c,
    ifft2c,
    kspace_mask,
    rss,
)
from diffsci.domains.medical.simulate import simulate_sensitivity_maps


def test_fft2c_matches_fastmri_formula_and_is_unitary():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 12, 10, generator=g, dtype=torch.float64)
    k = fft2c(x)
    ref = np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    np.testing.assert_allclose(k.numpy(), ref, atol=1e-12)
    assert k.dtype == torch.complex128
    assert torch.allclose(ifft2c(k).real, x, atol=1e-12)
    assert torch.allclose(k.abs().square().sum(), x.square().sum())  # Parseval
    assert fft2c(x.float()).dtype == torch.complex64
    # DC sits at (H // 2, W // 2)
    ones = fft2c(torch.ones(8, 8))
    assert ones.abs().argmax() == 4 * 8 + 4


@pytest.mark.parametrize(
    "kind,cls", [("random", RandomKspaceMask), ("equispaced", EquispacedKspaceMask)]
)
@pytest.mark.parametrize("accel,cf", [(4, 0.08), (8, 0.04)])
@pytest.mark.parametrize("seed", [0, 7])
def test_mask_identical_to_monai(kind, cls, accel, cf, seed):
    ours = kspace_mask((3, 40, 64), acceleration=accel, center_fraction=cf, kind=kind, seed=seed)
    assert ours.shape == (64,) and ours.dtype == torch.float32
    # MONAI on fastMRI-style complex-last k-space (..., H, W, 2): mask along W
    tf = cls(center_fractions=[cf], accelerations=[accel], spatial_dims=2, is_complex=True)
    tf.set_random_state(seed=seed)
    ks = torch.randn(1, 2, 40, 64, 2)
    masked, _ = tf(ks)
    ref = torch.as_tensor(tf.mask).reshape(-1)
    assert torch.equal(ours, ref.float())
    # and the mask really zeroes the other lines
    assert torch.equal((masked[0, 0, 0, :, 0] != 0).float(), ref.float())


def test_mask_defaults_centre_and_rate():
    for accel, cf in [(4, 0.08), (8, 0.04)]:
        w = 320
        m = kspace_mask(w, acceleration=accel, kind="equispaced", seed=1)
        m2 = kspace_mask(w, acceleration=accel, center_fraction=cf, kind="equispaced", seed=1)
        assert torch.equal(m, m2)  # fastMRI's default pairing
        n_low = round(w * cf)
        pad = (w - n_low + 1) // 2
        assert bool(m[pad : pad + n_low].all())
        assert abs(float(m.sum()) - w / accel) <= 2
    # random masks: Bernoulli per line (never with replacement): mean rate over seeds ~ 1/R
    rates = [
        float(kspace_mask(256, acceleration=4, kind="random", seed=s).mean()) for s in range(20)
    ]
    assert abs(np.mean(rates) - 0.25) < 0.02
    assert not torch.equal(kspace_mask(64, seed=1), kspace_mask(64, seed=2))
    with pytest.raises(ValueError, match="kind"):
        kspace_mask(64, kind="poisson")


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_single_coil_adjoint(dtype):
    m = kspace_mask(16, acceleration=4, kind="random", seed=0)
    op = SingleCoilMRI(m)
    assert check_adjoint(op, (2, 1, 12, 16), dtype=dtype) < 1e-5
    assert check_adjoint(op, (2, 1, 12, 16), dtype=torch.complex64, rtol=1e-5) < 1e-5


def test_single_coil_dc_pinv_prox():
    g = torch.Generator().manual_seed(1)
    m = kspace_mask(16, acceleration=4, kind="equispaced", seed=0)
    op = SingleCoilMRI(m)
    x_true = torch.randn(2, 1, 16, 16, generator=g, dtype=torch.float64)
    y = op(x_true)
    assert y.dtype == torch.complex128 and y.shape == x_true.shape
    assert bool((y[..., m == 0] == 0).all())
    z = torch.randn(2, 1, 16, 16, generator=g, dtype=torch.complex128)
    dc = op.data_consistency(z, y)
    assert torch.allclose(op(dc), y, atol=1e-12)  # exact projection
    assert torch.allclose(z + op.pinv(y - op(z)), dc, atol=1e-12)
    assert torch.allclose(op.pinv(y), LinearOperator.pinv(op, y), atol=1e-8)
    rho = 0.7
    assert torch.allclose(
        op.prox_l2(z, y, rho, noise_std=0.5),
        LinearOperator.prox_l2(op, z, y, rho, noise_std=0.5),
        atol=1e-8,
    )
    # differentiable
    xr = x_true.clone().requires_grad_(True)
    (op(xr).abs().square().sum()).backward()
    assert xr.grad is not None and torch.isfinite(xr.grad).all()


def test_sensitivity_maps_and_rss():
    s = simulate_sensitivity_maps(6, (20, 24), seed=0)
    assert s.shape == (1, 6, 20, 24) and s.dtype == torch.complex64
    assert torch.allclose(rss(s, dim=1), torch.ones(1, 20, 24), atol=1e-5)
    assert torch.allclose(rss(s, dim=1, keepdim=True)[:, 0], rss(s, dim=1))
    # maps are smooth: neighbouring pixels differ little
    assert float((s[..., 1:, :] - s[..., :-1, :]).abs().max()) < 0.3
    x = torch.tensor([[3.0, 4.0]]).T
    assert torch.allclose(rss(x, dim=0), torch.tensor([5.0]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_multicoil_adjoint_and_shapes(dtype):
    s = simulate_sensitivity_maps(4, (12, 16), seed=2, dtype=torch.complex128)
    op = MultiCoilMRI(kspace_mask(16, acceleration=4, seed=0), s)
    assert check_adjoint(op, (2, 1, 12, 16), dtype=dtype) < 1e-5
    x = torch.randn(2, 1, 12, 16, dtype=torch.float64)
    y = op(x)
    assert y.shape == (2, 4, 12, 16) and y.is_complex()
    assert op.adjoint(y).shape == (2, 1, 12, 16)
    # fully sampled + normalised maps: A^H A = I
    full = MultiCoilMRI(torch.ones(16), s)
    assert torch.allclose(full.normal(x).real, x, atol=1e-10)
    with pytest.raises(ValueError, match="B, 1, H, W"):
        op(torch.zeros(2, 3, 12, 16))
