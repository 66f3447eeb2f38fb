"""The domain's linear forward model: coarse-graining by block means.

A coarse input cell is the mean of the ``factor x factor`` fine cells it covers (CorrDiff's
coarse fields, regridded onto the fine grid, are block-constant), so the coarse field is
``y = A x`` with ``A`` the block-mean operator; the mass constraint of the downscaling
(:func:`.downscale.enforce_mass`) and the evaluation's mass error measure ``A x - y``.

The pipeline applies ``A`` to numpy arrays with :func:`block_mean` and lays coarse values out
on the fine grid with :func:`upsample_nearest` (``factor^2 A^T``); :func:`coarse_graining` is
the same operator as a :class:`diffsci.core.operators.BlockMean` (with its adjoint), which the
registry :data:`OPERATORS` hands to the shared adjoint test.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from diffsci.core.operators import BlockMean, OperatorCase

__all__ = ["block_mean", "upsample_nearest", "coarse_graining", "OPERATORS"]


def block_mean(x: np.ndarray, factor: int) -> np.ndarray:
    """Mean over non-overlapping ``factor x factor`` blocks of the last two axes."""
    *lead, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(f"spatial shape {(h, w)} not divisible by factor {factor}")
    return x.reshape(*lead, h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


def upsample_nearest(x: np.ndarray, factor: int) -> np.ndarray:
    """Block-constant (nearest) replication of the last two axes: the adjoint layout of
    :func:`block_mean` (``block_mean(upsample_nearest(c)) == c``)."""
    return np.repeat(np.repeat(x, factor, axis=-2), factor, axis=-1)


def coarse_graining(factor: int) -> BlockMean:
    """:func:`block_mean` as a linear operator on ``(B, C, H, W)`` tensors, with its adjoint."""
    return BlockMean(factor, spatial_dims=2)


#: Zero-argument factories of the domain's operators on a small input, for the shared
#: adjoint test (:func:`diffsci.core.operators.check_adjoint`).
OPERATORS: dict[str, Callable[[], OperatorCase]] = {
    "coarse_graining": lambda: OperatorCase(coarse_graining(8), (2, 1, 16, 16)),
}
