"""Networks and codecs of the PDE domain.

- :mod:`.codec`: the wavelet codec of trajectories (:func:`encode`, :func:`decode`, per-grid
  :func:`band_gain`) and the training dataset in its representation (:class:`TrajectoryChunks`).
- :mod:`.denoiser`: the diffusion model over the coefficients (:func:`build_denoiser`), its
  noise schedules (:func:`sampling_sigmas`) and loss (:func:`chunk_loss`).
- :mod:`.fno`: the Fourier Neural Operator (Li et al. 2021), the baseline's network and the
  denoiser's alternative backbone.
"""

from __future__ import annotations

from .codec import TrajectoryChunks, band_gain, codec, decode, encode
from .denoiser import (
    build_denoiser,
    check_grid,
    chunk_loss,
    grid_multiple,
    refiner_sigmas,
    sampling_sigmas,
    serves_prior,
)
from .fno import FNO2d, FNODenoiserNet, SpectralConv2d

__all__ = [
    "FNO2d",
    "FNODenoiserNet",
    "SpectralConv2d",
    "TrajectoryChunks",
    "band_gain",
    "build_denoiser",
    "check_grid",
    "chunk_loss",
    "codec",
    "decode",
    "encode",
    "grid_multiple",
    "refiner_sigmas",
    "sampling_sigmas",
    "serves_prior",
]
