"""Cartesian k-space helpers shared by the MRI operators: centered FFTs, masks, reflection.

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

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "fft2c",
    "ifft2c",
    "kspace_mask",
    "DEFAULT_CENTER_FRACTIONS",
    "reflect",
    "rss",
]

#: fastMRI's pairing of acceleration and fully sampled centre fraction.
DEFAULT_CENTER_FRACTIONS: dict[int, float] = {4: 0.08, 8: 0.04}


def to_complex(x: Tensor) -> Tensor:
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
    x = to_complex(x)
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
    k = to_complex(k)
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
    lines (fastMRI's ``MaskFunc``; Zbontar et al. 2018). The same seed gives the identical
    mask in a MONAI pipeline.

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


def check_mask(mask: Tensor | np.ndarray) -> Tensor:
    """``mask`` as a ``float32`` tensor; raises unless it is real and holds only 0 and 1."""
    m = torch.as_tensor(mask)
    if m.is_complex():
        raise ValueError("mask must be real 0/1")
    m = m.to(torch.float32)
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask must contain only 0 and 1")
    return m


def _reflect_index(n: int) -> Tensor:
    """Index map of the point reflection ``k -> -k`` on a centered (fftshifted) axis."""
    freqs = torch.fft.fftshift(torch.fft.fftfreq(n) * n).round().long()
    where = {int(f): i for i, f in enumerate(freqs)}
    # the Nyquist bin of an even axis is its own reflection (-n/2 == n/2 mod n)
    return torch.tensor(
        [where.get(int(-f), where.get(int(-f) - n, i)) for i, f in enumerate(freqs)]
    )


def reflect(k: Tensor) -> Tensor:
    """``k(-f)`` for a centered 2-D spectrum over the last two dims."""
    h, w = k.shape[-2:]
    return k.index_select(-2, _reflect_index(h).to(k.device)).index_select(
        -1, _reflect_index(w).to(k.device)
    )


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
