"""Synthetic precipitation cases in CorrDiff's schema, generated offline.

Fine-scale precipitation is an intermittent, log-normal transform of a Gaussian random field
(GRF) with a power-law spectrum, modulated by an orography-like invariant; the coarse inputs
are ``factor x factor`` block means of fine fields, stored on the fine grid as block-constant
values (CorrDiff stores its coarse inputs regridded onto the target grid):

- ``g``: GRF with 2-D power spectral density ``P(k) ~ k^-slope`` (slope 3 by default),
  unit variance; ``k`` in cycles per domain.
- ``orography`` (m): a smoother GRF (``k^-4``) mapped to ``[0, max_elevation]``; fixed for
  the domain (an invariant), it multiplies intensity by ``1 + orographic_gain * z / z_max``.
- ``tp`` (mm h-1): wet where ``g > t`` with ``t`` the ``1 - wet_fraction`` normal quantile;
  intensity ``scale * (exp(s g) - exp(s t))``: zero at the edge of rain cells, a log-normal
  tail inside them.
- context variables (coarse, block-mean): ``tcwv`` (kg m-2, total column water vapour,
  ``30 + 8 g`` plus independent large-scale noise) and ``t2m`` (K, lapse rate 6.5 K/km on
  orography plus noise).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import fft as sfft
from scipy.special import ndtri

from .operators import block_mean, upsample_nearest

__all__ = [
    "INPUT_VARIABLES",
    "INPUT_UNITS",
    "PARAMS",
    "TEST_SEED_OFFSET",
    "VALIDATION_STREAM",
    "gaussian_random_field",
    "orography",
    "precipitation_from_grf",
    "make_case",
    "make_dataset",
    "make_split",
    "make_validation",
]

INPUT_VARIABLES = ("tp", "tcwv", "t2m")
INPUT_UNITS = {"tp": "mm h-1", "tcwv": "kg m-2", "t2m": "K"}
#: Options of :func:`precipitation_from_grf` (the config's ``data`` keys of the same names).
PARAMS = ("wet_fraction", "shape_s", "scale", "orographic_gain", "max_elevation")
#: Default height (m) of the highest orography point.
MAX_ELEVATION_M = 2000.0
#: Offset of the held-out set's seed from the training set's (:func:`make_split`).
TEST_SEED_OFFSET = 10_000
#: Random stream of the validation cases (:func:`make_validation`): the training cases use
#: stream 2 of ``seed`` and the held-out cases stream 2 of ``seed + TEST_SEED_OFFSET``, so
#: validation cases are drawn apart from both and adding them changes neither.
VALIDATION_STREAM = 3


def gaussian_random_field(
    shape: tuple[int, int], *, slope: float = 3.0, rng: np.random.Generator
) -> np.ndarray:
    """Periodic zero-mean, unit-variance GRF with power spectral density ``~ k^-slope``.

    White noise is filtered in Fourier space by ``k^(-slope/2)`` (``k = 0`` removed);
    float32 throughout (``scipy.fft`` keeps single precision), and each intermediate is freed
    as soon as it is used, so a large field holds at most a few float32 copies at once.
    """
    h, w = shape
    white = rng.standard_normal((h, w), dtype=np.float32)
    f = sfft.rfft2(white, workers=1)
    del white
    ky = np.fft.fftfreq(h, d=1.0 / h).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(w, d=1.0 / w).astype(np.float32)[None, :]
    k = np.sqrt(ky**2 + kx**2)
    k[0, 0] = np.inf  # zero mean
    f *= k ** np.float32(-slope / 2)
    del k
    g = sfft.irfft2(f, s=(h, w), workers=1).astype(np.float32, copy=False)
    del f
    g -= g.mean()
    g /= g.std()
    return g


def orography(
    shape: tuple[int, int], *, max_elevation: float = MAX_ELEVATION_M, rng: np.random.Generator
) -> np.ndarray:
    """Orography-like invariant (m): a ``k^-4`` GRF mapped to ``[0, max_elevation]``."""
    z = gaussian_random_field(shape, slope=4.0, rng=rng)
    z -= z.min()
    z *= np.float32(max_elevation / max(float(z.max()), 1e-12))
    return z


def precipitation_from_grf(
    g: np.ndarray,
    oro: np.ndarray,
    *,
    wet_fraction: float = 0.4,
    shape_s: float = 1.0,
    scale: float = 1.0,
    orographic_gain: float = 1.0,
    max_elevation: float = MAX_ELEVATION_M,
) -> np.ndarray:
    """Intermittent log-normal precipitation (mm h-1) from a unit GRF ``g`` (see module doc)."""
    if not 0 < wet_fraction < 1:
        raise ValueError(f"wet_fraction must be in (0, 1), got {wet_fraction}")
    t = float(ndtri(1.0 - wet_fraction))
    rain = np.float32(scale) * (np.exp(np.float32(shape_s) * g) - np.float32(math.exp(shape_s * t)))
    np.maximum(rain, 0, out=rain)
    rain *= 1 + np.float32(orographic_gain / max_elevation) * oro
    return rain


def make_case(
    g: np.ndarray, oro: np.ndarray, *, factor: int, rng: np.random.Generator, params: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """One time step: ``(inputs (3, H, W) block-constant, truth tp (H, W))``."""
    p = {k: params[k] for k in PARAMS if k in params}
    tp = precipitation_from_grf(g, oro, **p)
    shape = g.shape
    tcwv = 30.0 + 8.0 * g + 3.0 * gaussian_random_field(shape, slope=4.0, rng=rng)
    t2m = 288.0 - 6.5e-3 * oro + 1.5 * gaussian_random_field(shape, slope=4.0, rng=rng)
    fields = (tp, tcwv.astype(np.float32), t2m.astype(np.float32))
    inputs = np.stack([upsample_nearest(block_mean(v, factor), factor) for v in fields])
    return inputs.astype(np.float32), tp.astype(np.float32)


def make_dataset(
    n_times: int,
    size: int | tuple[int, int],
    *,
    factor: int = 8,
    seed: int = 0,
    slope: float = 3.0,
    oro_seed: int | None = None,
    stream: int = 2,
    **params: Any,
):
    """A CorrDiff-style :class:`xarray.Dataset` of ``n_times`` synthetic cases (in memory).

    Variables: ``input(time, input_variable, y, x)``, ``output(time, output_variable, y, x)``,
    ``invariant(invariant_variable, y, x)``; coordinates ``lat(y)``, ``lon(x)``, ``time``,
    units per variable in ``input_units``/``output_units``/``invariant_units`` and in the
    variables' CF attributes. The orography uses ``oro_seed`` (default ``seed``), so a train
    and a test set of the same domain share it. The cases are drawn from the random stream
    ``(seed, stream)`` (:data:`VALIDATION_STREAM` for validation cases).

    Parameters
    ----------
    params
        Options of :func:`precipitation_from_grf` (``wet_fraction``, ``shape_s``, ``scale``,
        ``orographic_gain``, ``max_elevation``).
    """
    from .io import build_dataset

    h, w = (size, size) if isinstance(size, int) else size
    if h % factor or w % factor:
        raise ValueError(f"size {(h, w)} must be divisible by factor={factor}")
    oro_rng = np.random.default_rng([oro_seed if oro_seed is not None else seed, 1])
    oro = orography((h, w), max_elevation=params.get("max_elevation", 2000.0), rng=oro_rng)
    rng = np.random.default_rng([seed, stream])
    ins, outs = [], []
    for _ in range(n_times):
        g = gaussian_random_field((h, w), slope=slope, rng=rng)
        i, o = make_case(g, oro, factor=factor, rng=rng, params=params)
        ins.append(i)
        outs.append(o[None])
    return build_dataset(np.stack(ins), np.stack(outs), oro[None], factor=factor)


def make_split(n_train: int, n_test: int, size: int | tuple[int, int], *, seed: int = 0, **kw: Any):
    """``(train, test)`` datasets of one domain: the same orography (``oro_seed = seed``), the
    held-out cases drawn with the seed ``seed + TEST_SEED_OFFSET``; ``kw`` as
    :func:`make_dataset`'s."""
    common = {"oro_seed": seed, **kw}
    train = make_dataset(n_train, size, seed=seed, **common)
    test = make_dataset(n_test, size, seed=seed + TEST_SEED_OFFSET, **common)
    return train, test


def make_validation(n_val: int, size: int | tuple[int, int], *, seed: int = 0, **kw: Any):
    """Validation cases of the domain of :func:`make_split` with the same ``seed``: the same
    orography, cases drawn from the stream ``(seed, VALIDATION_STREAM)``, apart from the
    training and the held-out cases (which are unchanged by it); ``kw`` as
    :func:`make_dataset`'s. Recipe choices are made on these, never on the held-out cases."""
    return make_dataset(n_val, size, seed=seed, oro_seed=seed, stream=VALIDATION_STREAM, **kw)
