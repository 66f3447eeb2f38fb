"""Synthetic generator: spectrum slope, unit variance, intermittency, log-normal tail,
orographic modulation, block means, dataset schema."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from diffsci.domains.precipitation import metrics
from diffsci.domains.precipitation.operators import block_mean, upsample_nearest
from diffsci.domains.precipitation.simulate import (
    gaussian_random_field,
    make_dataset,
    orography,
    precipitation_from_grf,
)


@pytest.mark.parametrize("slope", [2.0, 3.0, 4.0])
def test_grf_power_law_slope_and_unit_variance(slope):
    rng = np.random.default_rng(0)
    g = np.stack([gaussian_random_field((128, 128), slope=slope, rng=rng) for _ in range(8)])
    assert g.dtype == np.float32
    np.testing.assert_allclose(g.std(axis=(1, 2)), 1.0, rtol=1e-4)
    k, psd = metrics.radial_psd(g)
    k = k * 128  # cycles per domain
    sel = (k >= 4) & (k <= 48)
    fit = np.polyfit(np.log(k[sel]), np.log(psd[sel]), 1)[0]
    assert abs(fit + slope) < 0.15, fit


def test_precipitation_intermittency_and_lognormal_tail():
    rng = np.random.default_rng(1)
    g = gaussian_random_field((256, 256), rng=rng)
    flat = np.zeros_like(g)
    rain = precipitation_from_grf(g, flat, wet_fraction=0.3, shape_s=1.0, scale=1.0)
    assert (rain >= 0).all()
    assert abs((rain > 0).mean() - 0.3) < 0.01  # g is exactly standardised
    # rain + exp(s t) = exp(s g) on wet pixels: log is the (truncated) standard normal g
    t = stats.norm.ppf(0.7)
    wet = rain > 0
    np.testing.assert_allclose(np.log(rain[wet] + np.exp(t)), g[wet], rtol=1e-4, atol=1e-4)


def test_orography_modulates_intensity():
    rng = np.random.default_rng(2)
    oro = orography((64, 64), max_elevation=2000.0, rng=rng)
    assert 0 <= oro.min() and abs(oro.max() - 2000.0) < 1e-2
    g = gaussian_random_field((64, 64), rng=rng)
    a = precipitation_from_grf(g, oro, orographic_gain=0.0)
    b = precipitation_from_grf(g, oro, orographic_gain=1.0)
    np.testing.assert_allclose(b, a * (1 + oro / 2000.0), rtol=1e-5)


def test_block_mean_and_nearest_roundtrip():
    x = np.arange(2 * 16 * 24, dtype=np.float64).reshape(2, 16, 24)
    c = block_mean(x, 8)
    assert c.shape == (2, 2, 3)
    assert c[0, 0, 0] == x[0, :8, :8].mean()
    np.testing.assert_allclose(block_mean(upsample_nearest(c, 8), 8), c)
    with pytest.raises(ValueError, match="not divisible"):
        block_mean(x[:, :15], 8)


def test_make_dataset_schema_and_coarse_inputs():
    ds = make_dataset(3, 32, factor=8, seed=0)
    assert ds["input"].dims == ("time", "input_variable", "y", "x")
    assert ds["input"].shape == (3, 3, 32, 32)
    assert list(ds["input_variable"].values) == ["tp", "tcwv", "t2m"]
    assert list(ds["input_units"].values) == ["mm h-1", "kg m-2", "K"]
    assert ds["output"].attrs["standard_name"] == "lwe_precipitation_rate"
    tp_in = ds["input"].sel(input_variable="tp").values
    tp_out = ds["output"].values[:, 0]
    # the coarse input is exactly the block mean of the target, block-constant on the grid
    np.testing.assert_allclose(block_mean(tp_in, 8), block_mean(tp_out, 8), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(upsample_nearest(block_mean(tp_in, 8), 8), tp_in, rtol=1e-6)
    # same orography for another seed of the same domain; different weather
    ds2 = make_dataset(1, 32, factor=8, seed=5, oro_seed=0)
    np.testing.assert_array_equal(ds2["invariant"].values, ds["invariant"].values)
    assert not np.allclose(ds2["output"].values[0], ds["output"].values[0])
    with pytest.raises(ValueError, match="divisible"):
        make_dataset(1, 30, factor=8)


def test_package_exports_resolve():
    import diffsci.domains.precipitation as pkg

    for name in pkg.__all__:
        assert getattr(pkg, name) is not None
    with pytest.raises(AttributeError):
        pkg.not_a_name  # noqa: B018
