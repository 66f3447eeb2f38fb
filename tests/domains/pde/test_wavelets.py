"""The torch DWT against PyWavelets, and its orthogonality (inverse = adjoint)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsci.domains.pde.wavelets import DWT2, IDWT2, dwt2, filters, idwt2

WAVELETS = ["haar", "db2"]


@pytest.fixture
def pywt():
    """PyWavelets, the reference (a test extra, not a dependency of the package)."""
    return pytest.importorskip("pywt", reason="PyWavelets is the reference for these tests")


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("wavelet", [*WAVELETS, "db1", "db4", "sym4"])
def test_filters_match_pywavelets(pywt, wavelet):
    lo, hi = filters(wavelet)
    w = pywt.Wavelet(wavelet)
    np.testing.assert_allclose(lo, w.dec_lo, rtol=0, atol=1e-15)
    np.testing.assert_allclose(hi, w.dec_hi, rtol=0, atol=1e-15)


@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("shape", [(8, 12), (16, 4), (2, 2)])
def test_level1_matches_pywt_dwt2_with_channel_order(pywt, wavelet, shape):
    x = _rand(*shape)
    ca, (ch, cv, cd) = pywt.dwt2(x.numpy(), wavelet, mode="periodization")
    c = dwt2(x, wavelet=wavelet)
    assert c.shape == (4, shape[0] // 2, shape[1] // 2)
    for got, ref in zip(c, (ca, ch, cv, cd), strict=True):
        np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-12)


def test_detail_bands_are_the_documented_directions():
    # A field varying only along axis -2 has detail in cH (high-pass along axis -2) only.
    x = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(4)[:, None].expand(8, 8)
    c = dwt2(x, wavelet="haar")
    energy = c.square().sum(dim=(-2, -1))
    assert energy[1] > 0 and torch.allclose(energy[[0, 2, 3]], torch.zeros(3, dtype=x.dtype))


@pytest.mark.filterwarnings("ignore:Level value of 3 is too high")
@pytest.mark.parametrize("wavelet", WAVELETS)
def test_level_l_approximation_matches_pywt_wavedec2(pywt, wavelet):
    x = _rand(2, 32, 16)
    for level in (2, 3):
        c = dwt2(x, wavelet=wavelet, level=level)
        assert c.shape == (2, 4**level, 32 // 2**level, 16 // 2**level)
        ref = pywt.wavedec2(x.numpy(), wavelet, mode="periodization", level=level)[0]
        np.testing.assert_allclose(c[:, 0].numpy(), ref, rtol=0, atol=1e-12)


def test_level2_is_level1_applied_to_every_band():
    x = _rand(3, 16, 8)
    c1 = dwt2(x, wavelet="db2")
    c2 = dwt2(x, wavelet="db2", level=2)
    expected = dwt2(c1, wavelet="db2").reshape(3, 16, 4, 2)  # channel = 4 * band1 + band2
    torch.testing.assert_close(c2, expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("level", [1, 2])
def test_perfect_reconstruction_and_orthogonality(wavelet, level):
    x = _rand(2, 3, 16, 32)
    c = dwt2(x, wavelet=wavelet, level=level)
    torch.testing.assert_close(idwt2(c, wavelet=wavelet, level=level), x, rtol=0, atol=1e-12)
    # norm preserved
    assert abs(c.norm() - x.norm()) < 1e-12 * x.norm()
    # adjoint: <dwt(x), y> == <x, idwt(y)>
    y = _rand(*c.shape, seed=1)
    lhs = (c * y).sum()
    rhs = (x * idwt2(y, wavelet=wavelet, level=level)).sum()
    assert abs(lhs - rhs) < 1e-12 * max(1.0, abs(float(lhs)))
    # and the transform is onto: dwt(idwt(y)) == y
    torch.testing.assert_close(
        dwt2(idwt2(y, wavelet=wavelet, level=level), wavelet=wavelet, level=level),
        y,
        rtol=0,
        atol=1e-12,
    )


def test_shapes_2d_and_4d_and_batch_consistency():
    x4 = _rand(2, 3, 8, 8)
    c4 = dwt2(x4, wavelet="db2")
    assert c4.shape == (2, 3, 4, 4, 4)
    c2 = dwt2(x4[1, 2], wavelet="db2")
    assert c2.shape == (4, 4, 4)
    torch.testing.assert_close(c4[1, 2], c2, rtol=0, atol=1e-14)
    assert idwt2(c2, wavelet="db2").shape == (8, 8)


def test_modules_and_gradients_and_float32():
    x = _rand(2, 1, 8, 16).float().requires_grad_()
    c = DWT2(wavelet="db2", level=2)(x)
    assert c.dtype == torch.float32 and c.shape == (2, 1, 16, 2, 4)
    IDWT2(wavelet="db2", level=2)(c).square().sum().backward()
    # ||idwt(dwt(x))||^2 = ||x||^2 has gradient 2x
    torch.testing.assert_close(x.grad, 2 * x.detach(), rtol=1e-5, atol=1e-5)


def test_exact_inside_bf16_autocast():
    x = _rand(2, 8, 16).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = dwt2(x, wavelet="db2", level=2)
        xr = idwt2(c, wavelet="db2", level=2)
    assert c.dtype == xr.dtype == torch.float32
    torch.testing.assert_close(xr, x, rtol=0, atol=1e-5)


def test_odd_or_indivisible_sizes_raise_naming_the_shape():
    with pytest.raises(ValueError, match=r"\(4, 7\)"):
        dwt2(torch.zeros(4, 7))
    with pytest.raises(ValueError, match=r"\(2, 12, 8\)"):
        dwt2(torch.zeros(2, 12, 8), level=3)  # 12 is not a multiple of 8
    with pytest.raises(ValueError, match="4\\*\\*level = 16"):
        idwt2(torch.zeros(2, 4, 3, 3), level=2)
    with pytest.raises(ValueError, match="level"):
        dwt2(torch.zeros(4, 4), level=0)


def test_unknown_or_biorthogonal_wavelets_raise(pywt):
    with pytest.raises(ValueError, match="unknown"):
        dwt2(torch.zeros(4, 4), wavelet="nope")
    with pytest.raises(ValueError, match="not orthogonal"):
        dwt2(torch.zeros(4, 4), wavelet="bior2.2")
