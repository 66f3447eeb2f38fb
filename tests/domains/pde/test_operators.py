"""The wavelet-domain observation operator: adjoint, exact pseudo-inverse, proximal map."""

from __future__ import annotations

import pytest
import torch

from diffsci.core.operators import check_adjoint
from diffsci.domains.pde.models import decode
from diffsci.domains.pde.operators import FrameMask


@pytest.mark.parametrize("wavelet,level", [("haar", 1), ("db2", 1), ("haar", 2)])
def test_frame_mask_is_adjoint_and_pinv_is_exact(wavelet, level):
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(1, 16, 32, generator=g) > 0.7).double()
    op = FrameMask(mask, wavelet=wavelet, level=level)
    check_adjoint(op, (3, 4**level, 16 // 2**level, 32 // 2**level), rtol=1e-12)
    y = mask * torch.randn(3, 16, 32, generator=g, dtype=torch.float64)
    assert torch.allclose(op.forward(op.pinv(y)), y, atol=1e-12)


def test_prox_matches_dense_solution():
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(1, 8, 8, generator=g) > 0.5).double()
    op = FrameMask(mask, wavelet="haar", level=1)
    z = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64)
    y = mask * torch.randn(2, 8, 8, generator=g, dtype=torch.float64)
    rho = torch.tensor([0.5, 3.0], dtype=torch.float64).reshape(2, 1, 1, 1)
    got = op.prox_l2(z, y, rho, noise_std=0.2)
    ref = type(op).__mro__[1].prox_l2(op, z, y, rho, noise_std=0.2, iters=200, tol=1e-14)
    assert torch.allclose(got, ref, atol=1e-8)


@pytest.mark.parametrize("level", [1, 2])
def test_frame_mask_with_band_gains(level):
    g = torch.Generator().manual_seed(3)
    mask = (torch.rand(1, 8, 16, generator=g) > 0.6).double()
    op = FrameMask(mask, wavelet="haar", level=level, nx_ref=8)
    shape = (2, 4**level, 8 // 2**level, 16 // 2**level)
    check_adjoint(op, shape, rtol=1e-12)
    y = mask * torch.randn(2, 8, 16, generator=g, dtype=torch.float64)
    assert torch.allclose(op.forward(op.pinv(y)), y, atol=1e-12)
    # forward is mask * decode(c): the operator sees the physical trajectory
    c = torch.randn(shape, generator=g, dtype=torch.float64)
    assert torch.allclose(
        op.forward(c), mask * decode(c, scale=1.0, wavelet="haar", level=level, nx_ref=8)
    )
    # prox_l2 (CG fallback with gains) against a dense solve of the normal equations
    n = c[0].numel()
    A = torch.stack(
        [
            op.forward(e.reshape(1, *shape[1:]))[0].flatten()
            for e in torch.eye(n, dtype=torch.float64)
        ],
        1,
    )
    rho = torch.tensor([0.5, 3.0], dtype=torch.float64)
    got = op.prox_l2(c, y, rho, noise_std=0.2, iters=400, tol=1e-20)
    for b in range(2):
        lhs = A.T @ A / 0.04 + rho[b] * torch.eye(n, dtype=torch.float64)
        ref = torch.linalg.solve(lhs, A.T @ y[b].flatten() / 0.04 + rho[b] * c[b].flatten())
        assert torch.allclose(got[b].flatten(), ref, atol=1e-8)


def test_registry_operators_are_adjoint_with_exact_pinv():
    from diffsci.domains.pde.operators import OPERATORS

    assert {"initial_frame", "sensors", "frame_mask_band_gain"} <= set(OPERATORS)
    g = torch.Generator().manual_seed(4)
    for name, make in OPERATORS.items():
        case = make()
        assert check_adjoint(case.op, case.x_shape, dtype=case.dtype, rtol=case.rtol) <= case.rtol
        mask = case.op.mask
        y = mask * torch.randn(case.x_shape[0], *mask.shape[1:], generator=g, dtype=case.dtype)
        assert torch.allclose(case.op.forward(case.op.pinv(y)), y, atol=1e-12), name


def test_masks_of_the_forecast_and_the_sensors():
    from diffsci.domains.pde.operators import initial_frame_mask, observation_mask

    m = initial_frame_mask(6, 8)
    assert m.shape == (1, 6, 8) and m[0, 0].eq(1).all() and m[0, 1:].eq(0).all()
    s = observation_mask(5, 16, sensor_every=4, frame_every=2)
    assert s.shape == (1, 5, 16) and s.sum() == 3 * 4
    assert s[0, ::2, ::4].eq(1).all() and s[0, 1].eq(0).all()
