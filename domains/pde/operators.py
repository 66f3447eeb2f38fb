"""Forward models of the PDE domain: observing a trajectory through a space-time mask.

The diffusion model's variable is the (band-scaled) wavelet coefficients of a trajectory
(:mod:`diffsci.domains.pde.models.codec`); :class:`FrameMask` observes masked entries of the
physical trajectory from them. Forecasts observe the whole first frame
(:func:`initial_frame_mask`, noiseless: hard data consistency); data assimilation observes
sparse sensors on some frames (:func:`observation_mask`, noisy).

``OPERATORS`` is the registry on which the shared contract test runs
:func:`~diffsci.core.operators.check_adjoint`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from diffsci.core.operators import LinearOperator, OperatorCase

from .models.codec import band_gain
from .wavelets import dwt2, idwt2

__all__ = ["OPERATORS", "FrameMask", "initial_frame_mask", "observation_mask"]


class FrameMask(LinearOperator):
    """Observe masked entries of the physical trajectory from (band-scaled) wavelet
    coefficients: ``A(c) = M * idwt(c / g)`` with the
    :func:`~diffsci.domains.pde.models.codec.band_gain` ``g`` (1 without ``nx_ref``).

    The DWT is orthonormal, so ``A^H y = dwt(M y) / g``. ``pinv`` returns ``g * dwt(M y)``:
    the correction that sets the observed physical values and leaves the others, so
    ``A pinv(y) = M y`` exactly (hard data consistency). With ``g = 1`` it is the
    Moore-Penrose pseudo-inverse (``A A^H = M``); with band gains it is a right inverse, not
    the minimum-norm one. ``prox_l2`` is closed-form for ``g = 1`` and falls back to the
    generic conjugate-gradient solve otherwise.

    Parameters
    ----------
    mask
        0/1 mask ``(1, nt, nx)`` (or ``(B, nt, nx)``) of the observed physical entries.
    wavelet, level, nx_ref
        The codec's settings (:func:`~diffsci.domains.pde.models.codec.codec`).
    """

    def __init__(
        self, mask: Tensor, *, wavelet: str, level: int, nx_ref: int | None = None
    ) -> None:
        self.mask, self.wavelet, self.level = mask, wavelet, level
        self.gain = band_gain(level, mask.shape[-1], nx_ref)

    def _g(self, c: Tensor) -> Tensor | float:
        return 1.0 if self.gain is None else self.gain.to(c)

    def forward(self, c: Tensor) -> Tensor:
        return self.mask.to(c) * idwt2(c / self._g(c), wavelet=self.wavelet, level=self.level)

    def adjoint(self, y: Tensor) -> Tensor:
        c = dwt2(self.mask.to(y) * y, wavelet=self.wavelet, level=self.level)
        return c / self._g(c)

    def pinv(self, y: Tensor, **_: Any) -> Tensor:
        c = dwt2(self.mask.to(y) * y, wavelet=self.wavelet, level=self.level)
        return c * self._g(c)

    def prox_l2(
        self, z: Tensor, y: Tensor, rho: float | Tensor, *, noise_std: float = 1.0, **kw: Any
    ) -> Tensor:
        def per_sample(v: Tensor) -> float | Tensor:  # a per-sample rho broadcast over v
            if not isinstance(rho, Tensor):
                return rho
            return rho.reshape(rho.shape[0], *([1] * (v.dim() - 1)))

        if self.gain is not None:
            return super().prox_l2(z, y, per_sample(z), noise_std=noise_std, **kw)
        # On the observed entries (in physical space) the solution averages data and estimate.
        a = 1.0 / noise_std**2
        u = idwt2(z, wavelet=self.wavelet, level=self.level)
        m, rho_p = self.mask.to(u), per_sample(u)
        u = m * (a * y + rho_p * u) / (a + rho_p) + (1 - m) * u
        return dwt2(u, wavelet=self.wavelet, level=self.level)


def initial_frame_mask(nt: int, nx: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """0/1 mask ``(1, nt, nx)`` of the first frame (a forecast's initial state)."""
    mask = torch.zeros(1, nt, nx, dtype=dtype)
    mask[:, 0] = 1
    return mask


def observation_mask(nt: int, nx: int, *, sensor_every: int, frame_every: int) -> Tensor:
    """0/1 mask ``(1, nt, nx)``: sensors every ``sensor_every`` points, every ``frame_every``
    frames (frame 0 included)."""
    m = torch.zeros(1, nt, nx)
    m[:, ::frame_every, ::sensor_every] = 1
    return m


def _random_mask(nt: int, nx: int, p: float) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(1, nt, nx, generator=g) > p).double()


def _case(mask: Tensor, batch: int, **codec: Any) -> OperatorCase:
    level = codec["level"]
    nt, nx = mask.shape[-2:]
    shape = (batch, 4**level, nt // 2**level, nx // 2**level)
    return OperatorCase(FrameMask(mask, **codec), shape, torch.float64, 1e-12)


#: Small instances of every operator: plain DWT (Haar, db2, two levels), band-scaled, and the
#: two masks the task uses (first frame; sparse sensors).
OPERATORS: dict[str, Callable[[], OperatorCase]] = {
    "frame_mask_haar": lambda: _case(_random_mask(16, 32, 0.7), 3, wavelet="haar", level=1),
    "frame_mask_db2": lambda: _case(_random_mask(16, 32, 0.7), 3, wavelet="db2", level=1),
    "frame_mask_level2": lambda: _case(_random_mask(16, 32, 0.7), 3, wavelet="haar", level=2),
    "frame_mask_band_gain": lambda: _case(
        _random_mask(8, 16, 0.6), 2, wavelet="haar", level=2, nx_ref=8
    ),
    "initial_frame": lambda: _case(
        initial_frame_mask(8, 16, dtype=torch.float64), 2, wavelet="haar", level=1
    ),
    "sensors": lambda: _case(
        observation_mask(8, 16, sensor_every=4, frame_every=2).double(),
        2,
        wavelet="db2",
        level=1,
        nx_ref=32,
    ),
}
