"""Classical baselines for dehazing and despeckling beamformed ultrasound.

- :func:`no_processing`: the hazy image as it is (the floor every method must beat).
- :func:`lee_filter`: Lee's local-statistics despeckle filter (J.-S. Lee, "Digital image
  enhancement and noise filtering by use of local statistics", IEEE TPAMI 1980) on the
  envelope: ``m + k (I - m)`` with ``k = max(v - s_n^2 m^2, 0) / v`` over a ``size x size``
  window (``m``, ``v``: local mean and variance; ``s_n``: the speckle coefficient of
  variation, sqrt(4/pi - 1) = 0.523 for a Rayleigh envelope).
- :func:`svd_clutter_filter`: the spatiotemporal SVD clutter filter of Demené et al.
  ("Spatiotemporal clutter filtering of ultrafast ultrasound data", IEEE TMI 2015) on a
  sequence: the Casorati matrix (pixels x frames) of the beamformed IQ frames loses its
  ``rank`` largest singular components (the static part, where stationary reverberation
  haze lives), keeping the rest.
- :func:`wiener_separation`: the linear (second-order) split of tissue and haze with the
  training patches' power spectra: what a Gaussian prior of each would give.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

__all__ = [
    "no_processing",
    "lee_filter",
    "svd_clutter_filter",
    "patch_spectra",
    "wiener_separation",
    "apply_tiled",
    "RAYLEIGH_CV",
]

#: Coefficient of variation of a Rayleigh-distributed envelope: sqrt(4/pi - 1).
RAYLEIGH_CV = math.sqrt(4 / math.pi - 1)


def no_processing(iq: Tensor) -> Tensor:
    """The input unchanged (a copy)."""
    return iq.clone()


def lee_filter(env: np.ndarray | Tensor, size: int = 5, cv: float = RAYLEIGH_CV) -> np.ndarray:
    """Lee filter of an envelope image ``(..., nz, nx)`` (each image separately)."""
    e = np.asarray(env, dtype=np.float64)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd integer, got {size}")
    win = (1,) * (e.ndim - 2) + (size, size)
    m = ndimage.uniform_filter(e, win, mode="reflect")
    v = np.maximum(ndimage.uniform_filter(e * e, win, mode="reflect") - m * m, 0.0)
    k = np.where(v > 0, np.maximum(v - (cv * m) ** 2, 0.0) / np.maximum(v, 1e-300), 0.0)
    return m + k * (e - m)


def svd_clutter_filter(frames: Tensor, rank: int = 1) -> Tensor:
    """Remove the ``rank`` largest singular components of a sequence ``(T, nz, nx)``."""
    if frames.dim() != 3:
        raise ValueError(f"frames must be (T, nz, nx), got {tuple(frames.shape)}")
    t = frames.shape[0]
    if not 0 <= rank < t:
        raise ValueError(f"rank must be in [0, {t}) for {t} frames, got {rank}")
    cas = frames.reshape(t, -1).T  # (pixels, frames)
    u, s, vh = torch.linalg.svd(cas, full_matrices=False)
    s = s.clone()
    s[:rank] = 0
    out = (u * s.to(u.dtype)) @ vh
    return out.T.reshape(frames.shape)


def patch_spectra(patches: Tensor) -> Tensor:
    """Mean power spectrum ``E|FFT2(p)|^2`` of IQ patches ``(N, 2, p, p)`` (I, Q channels)."""
    c = torch.complex(patches[:, 0].double(), patches[:, 1].double())
    return (torch.fft.fft2(c).abs() ** 2).mean(0)


def wiener_separation(
    y: np.ndarray, p_tissue: Tensor, p_haze: Tensor, gamma: float, *, overlap: int | None = None
) -> np.ndarray:
    """Linear MMSE (Wiener) estimate of the tissue from ``y = x + gamma h`` per patch, for
    stationary Gaussian tissue and haze with the power spectra ``p_tissue``, ``p_haze`` (from
    the training patches, :func:`patch_spectra`): ``X = P_x / (P_x + gamma^2 P_h) Y``
    (N. Wiener, "Extrapolation, Interpolation, and Smoothing of Stationary Time Series", 1949).
    Frames ``(2, nz, nx)`` in model units are processed patch-wise with the core's overlap
    blending (:func:`diffsci.core.tiling.tiled_map`); this is the second-order baseline the
    two diffusion priors must beat."""
    from diffsci.core.tiling import tiled_map

    p = p_tissue.shape[-1]
    gain = p_tissue / (p_tissue + gamma**2 * p_haze).clamp_min(1e-30)

    def fn(tiles: np.ndarray, origins) -> np.ndarray:
        c = torch.complex(
            torch.from_numpy(tiles[:, 0]).double(), torch.from_numpy(tiles[:, 1]).double()
        )
        r = torch.fft.ifft2(torch.fft.fft2(c) * gain)
        return np.stack([r.real.numpy(), r.imag.numpy()], 1)

    src = np.asarray(y, np.float32)
    out = np.zeros_like(src)
    tiled_map(fn, src, out, tile=p, overlap=p // 2 if overlap is None else overlap, batch=32)
    return out


@torch.no_grad()
def apply_tiled(net: torch.nn.Module, y: Tensor, tile: int, overlap: int) -> Tensor:
    """A patch network ``net(y_tiles) -> x_tiles`` ``(n, 2, tile, tile)`` over frames
    ``(T, 2, nz, nx)``, tiles blended by the core's :func:`~diffsci.core.tiling.tiled_map`."""
    from diffsci.core.tiling import tiled_map

    out = []
    for frame in y:
        src = frame.numpy().astype(np.float32)
        tgt = np.zeros_like(src)
        tiled_map(
            lambda t, o: net(torch.from_numpy(t)).numpy(),
            src,
            tgt,
            tile=tile,
            overlap=overlap,
            batch=32,
        )
        out.append(torch.from_numpy(tgt))
    return torch.stack(out)
