"""Parallel-beam Radon transform: exact adjoint, skimage agreement, FBP scale."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.transform import iradon, radon

from diffsci.core.operators import check_adjoint
from diffsci.domains.medical.baselines import fbp
from diffsci.domains.medical.operators import (
    ParallelBeamRadon,
    limited_angle_angles,
    sparse_view_angles,
)


def _disk(n: int, r: float, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    return (((xx - cx) ** 2 + (yy - cy) ** 2) < r**2).astype(np.float64)


def test_angles():
    np.testing.assert_allclose(sparse_view_angles(4), [0, 45, 90, 135])
    np.testing.assert_allclose(limited_angle_angles(3, 90), [0, 30, 60])
    with pytest.raises(ValueError):
        limited_angle_angles(3, 200)


@pytest.mark.parametrize("n,views", [(16, 7), (33, 12)])
def test_radon_adjoint_exact(n, views):
    op = ParallelBeamRadon(n, sparse_view_angles(views))
    assert op.n_det == math.ceil(n * math.sqrt(2))
    assert check_adjoint(op, (2, 1, n, n)) < 1e-10
    assert check_adjoint(op, (2, 1, n, n), dtype=torch.float32, rtol=1e-5) < 1e-5
    lim = ParallelBeamRadon(n, limited_angle_angles(5, 60), n_det=n)
    assert check_adjoint(lim, (1, 1, n, n)) < 1e-10


def test_radon_shapes_mass_and_grad():
    n = 24
    op = ParallelBeamRadon(n, sparse_view_angles(6))
    x = torch.rand(3, 1, n, n, dtype=torch.float64) * torch.tensor(_disk(n, n / 2 - 2))
    x.requires_grad_(True)
    s = op(x)
    assert s.shape == (3, 1, 6, op.n_det) and s.dtype == torch.float64
    # every projection carries the image's mass (unit ray and detector spacing; the
    # bilinear weights lose mass at the border, here zero, and alias by < 1 % at oblique angles)
    mass = x.detach().sum(dim=(-2, -1))
    assert torch.allclose(s.detach().sum(-1), mass.unsqueeze(-1).expand(3, 1, 6), rtol=1.5e-2)
    s.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert op(x.detach().float()).dtype == torch.float32
    with pytest.raises(ValueError, match="expected images"):
        op(torch.zeros(1, 1, n, n + 1))


def test_sinogram_matches_skimage():
    # odd N: skimage's rotation centre (index N_det // 2) coincides with ours
    n = 33
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    img = np.exp(-((xx - 3) ** 2 + (yy + 4) ** 2) / 30) + 0.5 * _disk(n, 5, -6, 7)
    ang = np.array([0.0, 17.0, 45.0, 90.0, 123.0, 160.0])
    ours = ParallelBeamRadon(n, ang)(torch.tensor(img)).numpy()
    ref = radon(img, theta=ang, circle=False).T  # (angles, n_det)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).sum() / np.abs(ref).sum() < 0.02
    np.testing.assert_allclose(ours.sum(1), ref.sum(1), rtol=1e-3)


def test_fbp_scale_disk_and_skimage():
    n = 48
    img = _disk(n, 14, 3, -2)
    ang = sparse_view_angles(90)
    op = ParallelBeamRadon(n, ang)
    sino = op(torch.tensor(img)[None, None])
    rec = fbp(sino, op)[0, 0].numpy()
    inner = _disk(n, 10, 3, -2).astype(bool)
    assert abs(rec[inner].mean() - 1.0) < 0.03  # reconstructs the disk's value
    sk = iradon(radon(img, theta=ang, circle=False), theta=ang, circle=False, filter_name="ramp")
    assert abs(rec[inner].mean() - sk[inner].mean()) < 0.02
    assert np.abs(rec - img).mean() < 1.5 * np.abs(sk - img).mean()
    for f in ("shepp-logan", "cosine", "hann"):
        r = fbp(sino, op, filter=f)[0, 0].numpy()
        assert abs(r[inner].mean() - 1.0) < 0.05
    with pytest.raises(ValueError, match="filter"):
        fbp(sino, op, filter="box")
