"""The wavelet codec of trajectories (WDNO: diffusion in the wavelet domain).

A trajectory ``u(t, x)`` ``(B, nt, nx)`` is divided by a global scale and transformed by the
orthonormal 2-D DWT of :mod:`diffsci.domains.pde.wavelets` into ``4**level`` coefficient
channels; with a reference grid each band is also multiplied by its :func:`band_gain`, so the
bands of a smooth field have the same amplitude on every grid (multi-resolution training).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..wavelets import dwt2, idwt2

__all__ = ["TrajectoryChunks", "band_gain", "codec", "decode", "encode"]


def band_gain(level: int, nx: int, nx_ref: int | None) -> Tensor | None:
    """Per-channel gains ``(4**level, 1, 1)`` that make the wavelet bands resolution-invariant.

    For a field that is smooth at the grid scale, a band that was high-pass filtered ``p``
    times along space (axis -1) holds ``~ dx**p * d^p u / dx^p``: its amplitude falls as
    ``nx**-p`` when the grid is refined, and a model trained on coarser grids would predict
    those bands at the training grids' amplitude. Multiplying each band by
    ``(nx / nx_ref)**p`` gives every grid the amplitudes of the reference grid. Returns
    ``None`` (identity) when ``nx_ref`` is ``None`` or equals ``nx``. Channel order is
    :func:`~diffsci.domains.pde.wavelets.dwt2`'s: band ``b`` of each level is
    ``[LL, cH, cV, cD]``, and ``cV``, ``cD`` are x-high-pass.
    """
    if nx_ref is None or nx == nx_ref:
        return None
    p = torch.zeros(4**level, dtype=torch.float64)
    for c in range(4**level):
        p[c] = sum(((c // 4**j) % 4) in (2, 3) for j in range(level))
    return ((nx / nx_ref) ** p).reshape(-1, 1, 1)


def encode(
    u: Tensor, *, scale: float, wavelet: str, level: int, nx_ref: int | None = None
) -> Tensor:
    """Trajectories ``(B, nt, nx)`` -> wavelet coefficients ``(B, 4**level, nt/2^l, nx/2^l)``,
    each band times its :func:`band_gain` when ``nx_ref`` is given."""
    c = dwt2(u / scale, wavelet=wavelet, level=level)
    g = band_gain(level, u.shape[-1], nx_ref)
    return c if g is None else c * g.to(c)


def decode(
    c: Tensor, *, scale: float, wavelet: str, level: int, nx_ref: int | None = None
) -> Tensor:
    """Inverse of :func:`encode`."""
    g = band_gain(level, c.shape[-1] * 2**level, nx_ref)
    return idwt2(c if g is None else c / g.to(c), wavelet=wavelet, level=level) * scale


def codec(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`encode` / :func:`decode` /
    :class:`~diffsci.domains.pde.operators.FrameMask` for a config: the wavelet, the level and,
    with ``model.band_scaling: grid``, the reference grid (the finest training grid, so a
    single-grid model's transform is the plain DWT)."""
    m = cfg["model"]
    ref = max(cfg["data"]["train_nx"]) if m.get("band_scaling", "grid") == "grid" else None
    return {"wavelet": m["wavelet"], "level": m["level"], "nx_ref": ref}


class TrajectoryChunks(torch.utils.data.Dataset):
    """Training items in the codec's representation: each item is a chunk of ``chunk``
    trajectories of ONE grid, so a training step never mixes shapes (multi-resolution
    training).

    Items are ``{"x": (chunk, C, h, w), "cond": (chunk, C, h, w)}``: the encoded trajectory and
    the encoded initial state broadcast over time.
    """

    def __init__(
        self,
        trajectories: list[Tensor],
        *,
        chunk: int,
        scale: float,
        wavelet: str,
        level: int,
        nx_ref: int | None = None,
    ) -> None:
        self.items: list[tuple[Tensor, Tensor]] = []
        kw = {"scale": scale, "wavelet": wavelet, "level": level, "nx_ref": nx_ref}
        for u in trajectories:
            x = encode(u, **kw)
            c = encode(u[:, :1].expand_as(u), **kw)
            for i in range(0, len(u) - chunk + 1, chunk):
                self.items.append((x[i : i + chunk], c[i : i + chunk]))
        if not self.items:
            raise ValueError(f"not enough trajectories for one chunk of {chunk}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        x, c = self.items[i]
        return {"x": x, "cond": c}
