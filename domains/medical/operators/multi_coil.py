"""Undersampled multi-coil (SENSE) MRI ``A x = M F (S_c x)`` (Pruessmann et al. 1999)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffsci.core.operators import LinearOperator, Mask

from .kspace import check_mask, fft2c, ifft2c, to_complex

__all__ = ["MultiCoilMRI"]


class MultiCoilMRI(LinearOperator):
    """Undersampled multi-coil (SENSE) MRI ``A x = M F (S_c x)`` for every coil ``c``.

    Parameters
    ----------
    mask
        0/1 mask broadcastable to ``(B, C, H, W)`` (e.g. ``(W,)`` from
        :func:`~.kspace.kspace_mask`).
    sens_maps
        Complex coil sensitivities ``(B, C, H, W)`` or ``(C, H, W)`` (broadcast over the
        batch); normalised (``sum_c |S_c|^2 = 1``) maps make ``A^H A`` a contraction (see
        :func:`~diffsci.domains.medical.simulate.simulate_sensitivity_maps`).

    Notes
    -----
    ``forward``: image ``(B, 1, H, W)`` (real or complex) -> coil k-space ``(B, C, H, W)``
    complex. ``adjoint``: ``sum_c conj(S_c) F^H (M y_c)`` -> ``(B, 1, H, W)`` complex.
    ``pinv`` and ``prox_l2`` use the core's conjugate-gradient fallbacks.
    """

    def __init__(self, mask: Tensor | np.ndarray, sens_maps: Tensor) -> None:
        self.mask = check_mask(mask)
        self.sampling = Mask(self.mask)
        s = torch.as_tensor(sens_maps)
        if s.dim() == 3:
            s = s.unsqueeze(0)
        if s.dim() != 4:
            raise ValueError(f"sens_maps must be (B, C, H, W) or (C, H, W), got {tuple(s.shape)}")
        self.sens = to_complex(s)

    def _s(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != tuple(self.sens.shape[-2:]):
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} != sensitivity maps {tuple(self.sens.shape[-2:])}"
            )
        return self.sens.to(device=x.device, dtype=x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Coil k-space ``M F (S x)``, ``(B, 1, H, W)`` -> ``(B, C, H, W)`` complex."""
        x = to_complex(x)
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected an image (B, 1, H, W), got {tuple(x.shape)}")
        return self.sampling.forward(fft2c(self._s(x) * x))

    def adjoint(self, y: Tensor) -> Tensor:
        """Coil combination ``sum_c conj(S_c) F^H (M y_c)``, ``(B, C, H, W)`` -> ``(B, 1, H, W)``."""
        y = to_complex(y)
        if y.dim() != 4:
            raise ValueError(f"expected coil k-space (B, C, H, W), got {tuple(y.shape)}")
        img = ifft2c(self.sampling.forward(y))
        return (self._s(img).conj() * img).sum(dim=1, keepdim=True)
