"""Undersampled single-coil Cartesian MRI ``A x = M F x`` (fastMRI's single-coil task)."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from diffsci.core.operators import LinearOperator, Mask

from .kspace import check_mask, fft2c, ifft2c, to_complex

__all__ = ["SingleCoilMRI"]


class SingleCoilMRI(LinearOperator):
    """Undersampled single-coil Cartesian MRI ``A x = M F x``.

    ``F`` is :func:`~.kspace.fft2c` (unitary) and ``M`` a 0/1 mask, so ``A A^H = M`` is a
    projector: the pseudo-inverse is the adjoint, and the hard data-consistency step
    ``x - A^H (A x - y)`` (``= x + A^+ (y - A x)``) makes ``A x == y`` exactly for any
    measured ``y = M y``.

    The image domain is complex: ``forward`` accepts real or complex ``(B, 1, H, W)`` (any
    ``(..., H, W)`` in fact) and returns complex k-space of the same shape, zero off the mask;
    ``adjoint``, ``pinv`` and ``prox_l2`` return complex images. For real-valued images take
    ``.real`` of the result, or see :class:`~.real_image.RealImageMRI`.

    Parameters
    ----------
    mask
        0/1 mask broadcastable to ``(..., H, W)``, e.g. the ``(W,)`` output of
        :func:`~.kspace.kspace_mask` or a per-item ``(B, 1, 1, W)`` tensor.
    """

    def __init__(self, mask: Tensor | np.ndarray) -> None:
        self.mask = check_mask(mask)
        self.sampling = Mask(self.mask)  # the core's k-space sampling step (shape-checked)

    def forward(self, x: Tensor) -> Tensor:
        """Masked k-space ``M F x`` (complex, shape of ``x``)."""
        return self.sampling.forward(fft2c(x))

    def adjoint(self, y: Tensor) -> Tensor:
        """Zero-filled reconstruction ``F^H M y`` (complex image)."""
        return ifft2c(self.sampling.forward(to_complex(y)))

    def pinv(self, y: Tensor, **_: Any) -> Tensor:
        """``A^+ y = A^H y`` (``A A^H = M`` is a projector)."""
        return self.adjoint(y)

    def normal(self, x: Tensor) -> Tensor:
        """``A^H A x = F^H M F x``."""
        return self.adjoint(self.forward(x))

    def prox_l2(
        self,
        z: Tensor,
        y: Tensor,
        rho: float | Tensor,
        *,
        noise_std: float = 1.0,
        **_: Any,
    ) -> Tensor:
        """``argmin_x |A x - y|^2 / (2 s^2) + rho / 2 |x - z|^2`` in closed form.

        The FFT is unitary, so this is the core :class:`~diffsci.core.operators.Mask`'s prox
        in k-space: sampled entries become ``(y / s^2 + rho F z) / (1 / s^2 + rho)``, the
        others keep ``F z``. ``rho`` may be a tensor broadcastable to ``z``.
        """
        kz = fft2c(z)
        k = self.sampling.prox_l2(kz, to_complex(y).to(kz.dtype), rho, noise_std=noise_std)
        return ifft2c(k)

    def data_consistency(self, x: Tensor, y: Tensor) -> Tensor:
        """Hard projection onto ``{x : A x = y}``: replace the sampled k-space by ``y``."""
        return x - self.adjoint(self.forward(x) - y)
