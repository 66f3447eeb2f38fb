"""Single-coil Cartesian MRI of *real-valued* images, Hermitian-completed.

The k-space of a real image is Hermitian-symmetric, so observing line ``k`` also observes
``-k``. Over real images the operator ``x -> S F x`` (``S`` = the mask united with its point
reflection) has ``A A^H = S`` on Hermitian data, so its pseudo-inverse is its adjoint and hard
data consistency is an exact projection.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from diffsci.core.operators import LinearOperator

from .kspace import fft2c, ifft2c, reflect

__all__ = ["RealImageMRI"]


class RealImageMRI(LinearOperator):
    """Undersampled single-coil MRI of real images ``(B, 1, H, W)``, Hermitian-completed.

    Parameters
    ----------
    mask
        0/1 sampling mask broadcastable to ``(H, W)`` (e.g. the ``(W,)`` phase-encode lines of
        :func:`~.kspace.kspace_mask`).
    shape
        ``(H, W)`` of the images.
    """

    def __init__(self, mask: Tensor, shape: tuple[int, int]) -> None:
        m = torch.broadcast_to(torch.as_tensor(mask, dtype=torch.float32), shape).clone()
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("mask must hold only 0 and 1")
        self.measured = m
        self.support = torch.maximum(m, reflect(m))  # S = M united with its reflection

    def complete(self, y: Tensor) -> Tensor:
        """Measured k-space (zero off the mask) -> its Hermitian completion on ``S``."""
        m = self.measured.to(y.device)
        s = self.support.to(y.device)
        return m * y + (s - m) * reflect(y).conj()

    def forward(self, x: Tensor) -> Tensor:
        return self.support.to(x.device) * fft2c(
            x.to(torch.complex64 if x.dtype != torch.float64 else torch.complex128)
        )

    def adjoint(self, y: Tensor) -> Tensor:
        return ifft2c(self.support.to(y.device) * y).real

    def pinv(self, y: Tensor, **_: Any) -> Tensor:
        # A A^H = S on Hermitian data: the adjoint is the pseudo-inverse.
        return self.adjoint(y)

    def measured_residual(self, x: Tensor, y: Tensor) -> Tensor:
        """``|M (F x) - y| / |y|`` per item: data consistency on the measured lines only."""
        m = self.measured.to(x.device)
        r = m * fft2c(x.to(torch.complex64)) - m * y
        return r.flatten(1).norm(dim=1) / (m * y).flatten(1).norm(dim=1).clamp_min(1e-30)
