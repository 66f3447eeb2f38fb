"""Cartesian MRI forward models: centered orthonormal FFTs, k-space masks, coil operators.

Conventions (fastMRI's):

- Images are ``(B, 1, H, W)`` (single coil) or coil images ``(B, C, H, W)``; k-space has the
  same layout. The phase-encode (undersampled) direction is the last dim ``W``.
- :func:`fft2c` is ``fftshift(fft2(ifftshift(x), norm="ortho"))`` over the last two dims, so
  the DC sample sits at index ``(H // 2, W // 2)`` and ``ifft2c(fft2c(x)) == x``.
- K-space is complex (``complex64`` for ``float32``/``complex64`` inputs, ``complex128`` for
  64-bit inputs). Real images are promoted to complex.
- Masks are 0/1 ``float32`` vectors over ``W`` (shape ``(W,)``), drawn by MONAI's
  ``RandomKspaceMask`` / ``EquispacedKspaceMask`` themselves, so a seed gives the same lines
  here and in a MONAI pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffsci.core.operators import LinearOperator, Mask

__all__ = [
    "fft2c",
    "ifft2c",
    "kspace_mask",
    "DEFAULT_CENTER_FRACTIONS",
    "SingleCoilMRI",
    "MultiCoilMRI",
    "rss",
    "simulate_sensitivity_maps",
]

#: fastMRI's pairing of acceleration and fully sampled centre fraction.
DEFAULT_CENTER_FRACTIONS: dict[int, float] = {4: 0.08, 8: 0.04}


def _complex(x: Tensor) -> Tensor:
    """Promote a real tensor to the matching complex dtype (64-bit -> complex128)."""
    if x.is_complex():
        return x
    if x.dtype == torch.float64:
        return x.to(torch.complex128)
    return x.to(torch.complex64)


def fft2c(x: Tensor) -> Tensor:
    """Centered orthonormal 2-D FFT over the last two dims (fastMRI's ``fft2c``).

    Parameters
    ----------
    x
        Real or complex tensor ``(..., H, W)``; real input is promoted to complex.

    Returns
    -------
    Tensor
        Complex k-space ``(..., H, W)`` with the DC sample at ``(H // 2, W // 2)``.
    """
    x = _complex(x)
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    k = torch.fft.fft2(x, dim=(-2, -1), norm="ortho")
    return torch.fft.fftshift(k, dim=(-2, -1))


def ifft2c(k: Tensor) -> Tensor:
    """Centered orthonormal inverse 2-D FFT over the last two dims (inverse of :func:`fft2c`).

    Parameters
    ----------
    k
        Complex (or real) k-space ``(..., H, W)``.

    Returns
    -------
    Tensor
        Complex image ``(..., H, W)``.
    """
    k = _complex(k)
    k = torch.fft.ifftshift(k, dim=(-2, -1))
    x = torch.fft.ifft2(k, dim=(-2, -1), norm="ortho")
    return torch.fft.fftshift(x, dim=(-2, -1))


def kspace_mask(
    shape: int | Sequence[int],
    *,
    acceleration: float = 4,
    center_fraction: float | None = None,
    kind: str = "random",
    seed: int | None = 0,
) -> Tensor:
    """A Cartesian undersampling mask over the phase-encode (last) dim, drawn by MONAI.

    The mask is produced by ``monai.apps.reconstruction.transforms.array.RandomKspaceMask``
    (``kind="random"``: every non-centre line is kept independently with probability
    ``(W / R - n_low) / (W - n_low)``, i.e. sampling *without* replacement) or
    ``EquispacedKspaceMask`` (``kind="equispaced"``: lines at spacing
    ``R (n_low - W) / (n_low R - W)`` from a random offset), seeded with
    ``set_random_state(seed)``; both keep the ``n_low = round(W * center_fraction)`` centre
    lines. The same seed gives the identical mask in a MONAI pipeline.

    Parameters
    ----------
    shape
        ``W`` or any shape whose last entry is ``W`` (e.g. ``(H, W)`` or ``(B, C, H, W)``).
    acceleration
        Nominal acceleration ``R``.
    center_fraction
        Fraction of fully sampled centre lines; default fastMRI's pairing
        (4x -> 0.08, 8x -> 0.04, otherwise ``0.32 / R``).
    kind
        ``"random"`` or ``"equispaced"``.
    seed
        Seed of MONAI's ``numpy.random.RandomState``; ``None`` draws a fresh mask.

    Returns
    -------
    Tensor
        ``float32`` 0/1 tensor of shape ``(W,)``, broadcastable to ``(..., H, W)``.
    """
    from monai.apps.reconstruction.transforms.array import (
        EquispacedKspaceMask,
        RandomKspaceMask,
    )

    w = int(shape) if isinstance(shape, int | np.integer) else int(tuple(shape)[-1])
    if w < 2:
        raise ValueError(f"the phase-encode dim must have at least 2 lines, got {w}")
    if acceleration < 1:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}")
    if center_fraction is None:
        center_fraction = DEFAULT_CENTER_FRACTIONS.get(int(acceleration), 0.32 / acceleration)
    if not 0 < center_fraction <= 1:
        raise ValueError(f"center_fraction must lie in (0, 1], got {center_fraction}")
    if center_fraction * acceleration > 1 and acceleration > 1:
        raise ValueError(
            f"center_fraction {center_fraction} keeps more than 1/{acceleration} of the lines"
        )
    classes = {"random": RandomKspaceMask, "equispaced": EquispacedKspaceMask}
    if kind not in classes:
        raise ValueError(f"kind must be 'random' or 'equispaced', got {kind!r}")
    tf = classes[kind](
        center_fractions=[center_fraction],
        accelerations=[acceleration],
        spatial_dims=2,
        is_complex=False,
    )
    if seed is not None:
        tf.set_random_state(seed=int(seed))
    tf(torch.zeros(1, 1, w))
    return torch.as_tensor(tf.mask).reshape(w).to(torch.float32)


def _check_mask(mask: Tensor | np.ndarray) -> Tensor:
    m = torch.as_tensor(mask)
    if m.is_complex():
        raise ValueError("mask must be real 0/1")
    m = m.to(torch.float32)
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask must contain only 0 and 1")
    return m


class SingleCoilMRI(LinearOperator):
    """Undersampled single-coil Cartesian MRI ``A x = M F x``.

    ``F`` is :func:`fft2c` (unitary) and ``M`` a 0/1 mask, so ``A A^H = M`` is a projector:
    the pseudo-inverse is the adjoint, and the hard data-consistency step
    ``x - A^H (A x - y)`` (``= x + A^+ (y - A x)``) makes ``A x == y`` exactly for any
    measured ``y = M y``.

    The image domain is complex: ``forward`` accepts real or complex ``(B, 1, H, W)`` (any
    ``(..., H, W)`` in fact) and returns complex k-space of the same shape, zero off the mask;
    ``adjoint``, ``pinv`` and ``prox_l2`` return complex images. For real-valued images take
    ``.real`` of the result, or see the Hermitian-completed operator used by the task.

    Parameters
    ----------
    mask
        0/1 mask broadcastable to ``(..., H, W)``, e.g. the ``(W,)`` output of
        :func:`kspace_mask` or a per-item ``(B, 1, 1, W)`` tensor.
    """

    def __init__(self, mask: Tensor | np.ndarray) -> None:
        self.mask = _check_mask(mask)
        self.sampling = Mask(self.mask)  # the core's k-space sampling step (shape-checked)

    def forward(self, x: Tensor) -> Tensor:
        """Masked k-space ``M F x`` (complex, shape of ``x``)."""
        return self.sampling.forward(fft2c(x))

    def adjoint(self, y: Tensor) -> Tensor:
        """Zero-filled reconstruction ``F^H M y`` (complex image)."""
        return ifft2c(self.sampling.forward(_complex(y)))

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
        k = self.sampling.prox_l2(kz, _complex(y).to(kz.dtype), rho, noise_std=noise_std)
        return ifft2c(k)

    def data_consistency(self, x: Tensor, y: Tensor) -> Tensor:
        """Hard projection onto ``{x : A x = y}``: replace the sampled k-space by ``y``."""
        return x - self.adjoint(self.forward(x) - y)


class MultiCoilMRI(LinearOperator):
    """Undersampled multi-coil (SENSE) MRI ``A x = M F (S_c x)`` for every coil ``c``.

    Parameters
    ----------
    mask
        0/1 mask broadcastable to ``(B, C, H, W)`` (e.g. ``(W,)`` from :func:`kspace_mask`).
    sens_maps
        Complex coil sensitivities ``(B, C, H, W)`` or ``(C, H, W)`` (broadcast over the
        batch); normalised (``sum_c |S_c|^2 = 1``) maps make ``A^H A`` a contraction.

    Notes
    -----
    ``forward``: image ``(B, 1, H, W)`` (real or complex) -> coil k-space ``(B, C, H, W)``
    complex. ``adjoint``: ``sum_c conj(S_c) F^H (M y_c)`` -> ``(B, 1, H, W)`` complex.
    ``pinv`` and ``prox_l2`` use the core's conjugate-gradient fallbacks.
    """

    def __init__(self, mask: Tensor | np.ndarray, sens_maps: Tensor) -> None:
        self.mask = _check_mask(mask)
        self.sampling = Mask(self.mask)
        s = torch.as_tensor(sens_maps)
        if s.dim() == 3:
            s = s.unsqueeze(0)
        if s.dim() != 4:
            raise ValueError(f"sens_maps must be (B, C, H, W) or (C, H, W), got {tuple(s.shape)}")
        self.sens = _complex(s)

    def _s(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != tuple(self.sens.shape[-2:]):
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} != sensitivity maps {tuple(self.sens.shape[-2:])}"
            )
        return self.sens.to(device=x.device, dtype=x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Coil k-space ``M F (S x)``, ``(B, 1, H, W)`` -> ``(B, C, H, W)`` complex."""
        x = _complex(x)
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected an image (B, 1, H, W), got {tuple(x.shape)}")
        return self.sampling.forward(fft2c(self._s(x) * x))

    def adjoint(self, y: Tensor) -> Tensor:
        """Coil combination ``sum_c conj(S_c) F^H (M y_c)``, ``(B, C, H, W)`` -> ``(B, 1, H, W)``."""
        y = _complex(y)
        if y.dim() != 4:
            raise ValueError(f"expected coil k-space (B, C, H, W), got {tuple(y.shape)}")
        img = ifft2c(self.sampling.forward(y))
        return (self._s(img).conj() * img).sum(dim=1, keepdim=True)


def rss(images: Tensor, dim: int = 1, *, keepdim: bool = False) -> Tensor:
    """Root sum of squares over the coil dim: ``sqrt(sum_c |x_c|^2)`` (fastMRI's ``rss``).

    Parameters
    ----------
    images
        Real or complex coil images, e.g. ``(B, C, H, W)``.
    dim
        Coil dimension.
    keepdim
        Keep the reduced dimension (size 1).
    """
    mag2 = images.real.square() + images.imag.square() if images.is_complex() else images.square()
    return mag2.sum(dim=dim, keepdim=keepdim).sqrt()


def simulate_sensitivity_maps(
    n_coils: int,
    shape: tuple[int, int],
    *,
    width: float = 0.6,
    seed: int | None = 0,
    dtype: torch.dtype = torch.complex64,
) -> Tensor:
    """Smooth birdcage-like complex coil sensitivities, normalised to ``sum_c |S_c|^2 = 1``.

    Coil ``c`` sits on a circle of radius 1.2 (in units of the half field of view) at angle
    ``2 pi c / C`` (plus a small random jitter); its magnitude is a Gaussian of the distance
    to the coil (std ``width``) and its phase the coil angle plus a smooth random linear
    ramp, so neighbouring coils overlap and the maps vary slowly, like measured ones.

    Parameters
    ----------
    n_coils
        Number of coils ``C``.
    shape
        Image size ``(H, W)``.
    width
        Gaussian width of each coil's profile, in half-fields of view.
    seed
        Seed for the jitter and phase ramps (``None``: no randomness).
    dtype
        Complex dtype of the result.

    Returns
    -------
    Tensor
        ``(1, C, H, W)`` complex maps with ``sum_c |S_c|^2 = 1`` at every pixel.
    """
    if n_coils < 1:
        raise ValueError(f"n_coils must be >= 1, got {n_coils}")
    h, w = (int(v) for v in shape)
    rng = np.random.default_rng(seed) if seed is not None else None
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    maps = np.empty((n_coils, h, w), dtype=np.complex128)
    for c in range(n_coils):
        ang = 2 * math.pi * c / n_coils
        jitter = rng.normal(0, 0.1, size=3) if rng is not None else np.zeros(3)
        cx, cy = 1.2 * math.cos(ang + jitter[0]), 1.2 * math.sin(ang + jitter[0])
        mag = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2))
        phase = ang + jitter[1] * math.pi * xx + jitter[2] * math.pi * yy
        maps[c] = mag * np.exp(1j * phase)
    maps /= np.sqrt((np.abs(maps) ** 2).sum(axis=0, keepdims=True))
    return torch.as_tensor(maps).to(dtype).unsqueeze(0)
