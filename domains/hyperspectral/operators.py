"""Forward models of hyperspectral restoration as :class:`~diffsci.core.operators.LinearOperator`.

- :class:`SubspaceSynthesis`: ``x = E z``, coefficient images ``z (k, H, W)`` to a cube
  ``(B, H, W)`` through an orthonormal spectral basis ``E (B, k)``; adjoint ``E^T``.
- :class:`CubeMask`: dropped bands and dead pixels/columns as a 0/1 mask of the cube
  (:class:`~diffsci.core.operators.Mask`), built by :func:`cube_mask`.
- :class:`ComponentWeight`: the elementwise weighting ``y = w z`` of coefficient images with
  ``w = 1 / std``: the data term of the restoration in the subspace (per-pixel, per-component
  noise std of the weighted least-squares coefficients, :mod:`.subspace`), whitened to unit
  noise so that the core's posterior samplers take one ``noise_std = 1``; closed-form
  ``pinv`` and ``prox_l2``.

``OPERATORS`` is the registry the shared contract test adjoint-checks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffsci.core.operators import LinearOperator, Mask, OperatorCase

__all__ = ["SubspaceSynthesis", "ComponentWeight", "cube_mask", "OPERATORS"]


class SubspaceSynthesis(LinearOperator):
    """``z (..., k, H, W) -> E z (..., B, H, W)`` with ``E (B, k)``."""

    def __init__(self, basis: Tensor | np.ndarray) -> None:
        self.basis = torch.as_tensor(basis)
        if self.basis.ndim != 2:
            raise ValueError(f"basis must be (bands, k), got shape {tuple(self.basis.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bk,...khw->...bhw", self.basis.to(x), x)

    def adjoint(self, y: Tensor) -> Tensor:
        return torch.einsum("bk,...bhw->...khw", self.basis.to(y), y)


def cube_mask(valid: np.ndarray | Tensor) -> Mask:
    """The 0/1 observation mask of a cube (False: dropped band, dead pixel or column)."""
    return Mask(torch.as_tensor(np.asarray(valid), dtype=torch.float64))


CubeMask = Mask


class ComponentWeight(LinearOperator):
    """Elementwise ``y = w z`` (``w >= 0``, broadcast to ``z``); self-adjoint."""

    def __init__(self, weight: Tensor | np.ndarray) -> None:
        self.weight = torch.as_tensor(weight)
        if bool((self.weight < 0).any()):
            raise ValueError("weights must be >= 0")

    def _w(self, x: Tensor) -> Tensor:
        return self.weight.to(device=x.device, dtype=x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return x * self._w(x)

    adjoint = forward

    def pinv(self, y: Tensor, **_) -> Tensor:
        w = self._w(y)
        return torch.where(w > 0, y / w.clamp_min(1e-30), torch.zeros_like(y))

    def prox_l2(self, z, y, rho, *, noise_std=1.0, **_):
        """``argmin |w x - y|^2 / (2 s^2) + rho/2 |x - z|^2 = (w y / s^2 + rho z) / (w^2 / s^2
        + rho)`` elementwise."""
        w = self._w(z)
        a = 1.0 / noise_std**2
        return (a * w * y + rho * z) / (a * w * w + rho)


def _synthesis_case() -> OperatorCase:
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(31, 4, generator=g, dtype=torch.float64))
    return OperatorCase(SubspaceSynthesis(basis), (2, 4, 8, 8))


def _mask_case() -> OperatorCase:
    rng = np.random.default_rng(0)
    valid = rng.random((31, 8, 8)) > 0.2
    valid[3] = False  # a dropped band
    return OperatorCase(cube_mask(valid), (31, 8, 8))


def _weight_case() -> OperatorCase:
    g = torch.Generator().manual_seed(1)
    return OperatorCase(
        ComponentWeight(torch.rand(4, 8, 8, generator=g, dtype=torch.float64)), (2, 4, 8, 8)
    )


OPERATORS = {
    "subspace_synthesis": _synthesis_case,
    "cube_mask": _mask_case,
    "component_weight": _weight_case,
}
