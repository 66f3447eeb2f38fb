"""Orthogonal 2-D discrete wavelet transform in torch (WDNO: diffusion in the wavelet domain).

WDNO (wavelet diffusion neural operator) trains its diffusion model on the 2-D DWT of whole
trajectories over (time, space). The transform has to be differentiable, batched and run on the
accelerator next to the network; PyWavelets is numpy-only (no autograd, no GPU) and ``ptwt``
is not a dependency, so it is written here with ``conv2d`` / ``conv_transpose2d``.

Conventions
-----------
- Boundary handling is PyWavelets' ``mode="periodization"``: each level maps ``(H, W)`` to
  ``(H/2, W/2)`` exactly and, with an orthonormal filter bank, the transform is an orthogonal
  matrix. :func:`idwt2` is therefore both the exact inverse and the adjoint of :func:`dwt2`
  (norms and inner products are preserved), which posterior samplers rely on.
- Level 1 returns the four sub-bands as channels ``(..., 4, H/2, W/2)`` in PyWavelets' order
  ``cA, (cH, cV, cD)`` of ``pywt.dwt2(x, wavelet, mode="periodization")``, i.e.
  ``[LL, LH, HL, HH]`` where the first letter is the filter along axis -2 (time) and the
  second along axis -1 (space): ``cH`` is low-pass along axis -1 and high-pass along axis -2.
- Level ``L > 1`` uses *space-to-depth* (full wavelet packet) stacking, not the pyramid of
  ``pywt.wavedec2``: the level-1 transform is applied again to **every** channel, giving
  ``4**L`` channels of equal size ``(H/2^L, W/2^L)`` that a network can take as one tensor.
  Channel ``c = 4^(L-1) b_1 + ... + 4 b_(L-1) + b_L`` holds band ``b_1`` of the first level,
  then band ``b_2`` of that, and so on; channel 0 is the level-``L`` approximation (the same
  array as ``pywt.wavedec2(x, wavelet, mode="periodization", level=L)[0]``).
- The transform runs in the input's dtype with autocast disabled, so coefficients computed
  inside a bf16 autocast region stay float32 (and exactly invertible).
- Wavelets: ``"haar"`` (= ``"db1"``) and ``"db2"`` are built in; any other orthogonal
  PyWavelets name (``"db4"``, ``"sym4"``, ``"coif1"``...) is accepted when PyWavelets is
  installed. Biorthogonal wavelets are refused (the transform would not be orthogonal).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DWT2", "IDWT2", "dwt2", "filters", "idwt2"]

_S2, _S3 = math.sqrt(2.0), math.sqrt(3.0)
# Reconstruction low-pass filters (PyWavelets' ``rec_lo``); decomposition filters follow.
_BUILTIN: dict[str, tuple[float, ...]] = {
    "haar": (1 / _S2, 1 / _S2),
    "db1": (1 / _S2, 1 / _S2),
    "db2": (
        (1 + _S3) / (4 * _S2),
        (3 + _S3) / (4 * _S2),
        (3 - _S3) / (4 * _S2),
        (1 - _S3) / (4 * _S2),
    ),
}


@lru_cache(maxsize=32)
def filters(wavelet: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Decomposition filters ``(dec_lo, dec_hi)`` of an orthogonal wavelet, PyWavelets' values.

    Parameters
    ----------
    wavelet
        ``"haar"``, ``"db1"``, ``"db2"``, or another orthogonal PyWavelets wavelet name (needs
        PyWavelets).

    Raises
    ------
    ValueError
        Unknown or non-orthogonal wavelet.
    """
    if not isinstance(wavelet, str):
        raise ValueError(f"wavelet must be a name, got {wavelet!r}")
    name = wavelet.lower()
    if name in _BUILTIN:
        rec_lo = _BUILTIN[name]
        dec_lo = tuple(reversed(rec_lo))
        # quadrature mirror: dec_hi[k] = (-1)^(k+1) rec_lo[k]
        dec_hi = tuple((-1) ** (k + 1) * h for k, h in enumerate(rec_lo))
        return dec_lo, dec_hi
    try:
        import pywt
    except ImportError:  # pragma: no cover - PyWavelets is an optional extra
        raise ValueError(
            f"wavelet {wavelet!r} is not built in (haar, db1, db2); other orthogonal wavelets "
            "need PyWavelets"
        ) from None
    try:
        w = pywt.Wavelet(name)
    except ValueError:
        raise ValueError(f"unknown wavelet {wavelet!r}") from None
    if not w.orthogonal:
        raise ValueError(
            f"wavelet {wavelet!r} is not orthogonal: only orthonormal filter banks give an "
            "orthogonal transform (use haar, db*, sym*, coif*)"
        )
    return tuple(w.dec_lo), tuple(w.dec_hi)


@lru_cache(maxsize=64)
def _kernel_cached(wavelet: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    lo, hi = (torch.tensor(f, dtype=torch.float64).flip(0) for f in filters(wavelet))
    k = torch.stack(
        [torch.outer(a, b) for a, b in ((lo, lo), (hi, lo), (lo, hi), (hi, hi))]
    )  # first factor acts on axis -2, second on axis -1
    return k[:, None].to(device=device, dtype=dtype)


def _kernel(wavelet: str, like: Tensor) -> Tensor:
    """``(4, 1, F, F)`` conv2d weights of the bands LL, LH, HL, HH (flipped for cross-corr.)."""
    return _kernel_cached(wavelet, like.device, like.dtype)


def _check_level(level: int) -> int:
    if isinstance(level, bool) or int(level) != level or level < 1:
        raise ValueError(f"level must be an integer >= 1, got {level!r}")
    return int(level)


def _check_float(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a real floating tensor, got dtype {x.dtype}")


def _wrap_index(n: int, pad: int, device: torch.device) -> Tensor:
    """Indices of the periodic extension of ``0..n-1`` by ``pad`` on both sides."""
    return torch.arange(-pad, n + pad, device=device) % n


def _analysis(x: Tensor, wavelet: str) -> Tensor:
    """One level: ``(N, H, W) -> (N, 4, H/2, W/2)``."""
    k = _kernel(wavelet, x)
    pad = k.shape[-1] // 2 - 1
    x = x[:, None]
    if pad:  # periodic extension (any number of wraps, unlike F.pad(mode="circular"))
        h, w = x.shape[-2:]
        x = x.index_select(-2, _wrap_index(h, pad, x.device))
        x = x.index_select(-1, _wrap_index(w, pad, x.device))
    return F.conv2d(x, k, stride=2)


def _synthesis(c: Tensor, wavelet: str) -> Tensor:
    """Adjoint (= inverse) of :func:`_analysis`: ``(N, 4, h, w) -> (N, 2h, 2w)``."""
    k = _kernel(wavelet, c)
    pad = k.shape[-1] // 2 - 1
    y = F.conv_transpose2d(c, k, stride=2)[:, 0]
    if pad:  # fold the periodic extension back (adjoint of the index_select above)
        h, w = 2 * c.shape[-2], 2 * c.shape[-1]
        y = y.new_zeros(y.shape[0], h, y.shape[-1]).index_add(1, _wrap_index(h, pad, y.device), y)
        y = y.new_zeros(y.shape[0], h, w).index_add(2, _wrap_index(w, pad, y.device), y)
    return y


def dwt2(x: Tensor, *, wavelet: str = "haar", level: int = 1) -> Tensor:
    """Orthogonal 2-D DWT over the last two axes, sub-bands stacked as channels.

    Parameters
    ----------
    x
        Real tensor ``(..., H, W)`` with ``H`` and ``W`` divisible by ``2**level``.
    wavelet
        Orthogonal wavelet name (see :func:`filters`).
    level
        Number of levels; ``level > 1`` transforms every band again (space-to-depth, see
        the module docstring).

    Returns
    -------
    Tensor
        ``(..., 4**level, H / 2**level, W / 2**level)``; for ``level=1`` the channels are
        ``[cA, cH, cV, cD]`` of ``pywt.dwt2(x, wavelet, mode="periodization")``.
    """
    _check_float(x, "x")
    level = _check_level(level)
    if x.ndim < 2:
        raise ValueError(
            f"x must have at least 2 dimensions (..., H, W), got shape {tuple(x.shape)}"
        )
    h, w = x.shape[-2:]
    f = 2**level
    if h % f or w % f or h == 0 or w == 0:
        raise ValueError(
            f"the last two dimensions of x must be positive multiples of 2**level = {f} for "
            f"level={level}, got shape {tuple(x.shape)}"
        )
    filters(wavelet)  # validate the name before any work
    lead = x.shape[:-2]
    c = x.reshape(math.prod(lead), h, w)
    with torch.autocast(device_type=x.device.type, enabled=False):  # exact in x's dtype
        for _ in range(level):
            n, hh, ww = c.shape
            c = _analysis(c, wavelet).reshape(n * 4, hh // 2, ww // 2)
    return c.reshape(*lead, 4**level, h // f, w // f)


def idwt2(c: Tensor, *, wavelet: str = "haar", level: int = 1) -> Tensor:
    """Inverse (and adjoint) of :func:`dwt2`.

    Parameters
    ----------
    c
        Coefficients ``(..., 4**level, h, w)`` as returned by :func:`dwt2`.
    wavelet, level
        As given to :func:`dwt2`.

    Returns
    -------
    Tensor
        ``(..., h * 2**level, w * 2**level)``.
    """
    _check_float(c, "c")
    level = _check_level(level)
    nb = 4**level
    if c.ndim < 3 or c.shape[-3] != nb:
        raise ValueError(
            f"c must have shape (..., 4**level = {nb}, h, w) for level={level}, got shape "
            f"{tuple(c.shape)}"
        )
    h, w = c.shape[-2:]
    if h == 0 or w == 0:
        raise ValueError(f"c has an empty spatial dimension: shape {tuple(c.shape)}")
    filters(wavelet)
    lead = c.shape[:-3]
    n = math.prod(lead)
    y = c
    with torch.autocast(device_type=c.device.type, enabled=False):  # exact in c's dtype
        for i in range(level):  # the innermost band index is the last level's: undo it first
            y = _synthesis(y.reshape(n * 4 ** (level - 1 - i), 4, h * 2**i, w * 2**i), wavelet)
    f = 2**level
    return y.reshape(*lead, h * f, w * f)


class DWT2(nn.Module):
    """Module wrapper of :func:`dwt2` (no parameters)."""

    def __init__(self, *, wavelet: str = "haar", level: int = 1) -> None:
        super().__init__()
        filters(wavelet)
        self.wavelet, self.level = wavelet, _check_level(level)

    def forward(self, x: Tensor) -> Tensor:
        return dwt2(x, wavelet=self.wavelet, level=self.level)

    def extra_repr(self) -> str:
        return f"wavelet={self.wavelet!r}, level={self.level}"


class IDWT2(nn.Module):
    """Module wrapper of :func:`idwt2` (no parameters)."""

    def __init__(self, *, wavelet: str = "haar", level: int = 1) -> None:
        super().__init__()
        filters(wavelet)
        self.wavelet, self.level = wavelet, _check_level(level)

    def forward(self, c: Tensor) -> Tensor:
        return idwt2(c, wavelet=self.wavelet, level=self.level)

    def extra_repr(self) -> str:
        return f"wavelet={self.wavelet!r}, level={self.level}"
