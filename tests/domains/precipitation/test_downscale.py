"""Ensemble downscaling: mass constraint, tiling consistency, store-to-store writes chunk by
chunk, bad values found mid-way leave no output store, CLI exit codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsci.core.modelfile import save_model_file
from diffsci.domains.precipitation import io
from diffsci.domains.precipitation.downscale import (
    downscale_arrays,
    downscale_store,
    enforce_mass,
    main,
)
from diffsci.domains.precipitation.models import DownscalingModel, Normaliser
from diffsci.domains.precipitation.operators import block_mean
from diffsci.domains.precipitation.simulate import make_dataset


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    ds = make_dataset(2, 32, factor=8, seed=1)
    stats = io.compute_stats(ds)
    norm = Normaliser(stats, ["tp", "tcwv", "t2m"], ["orography"])
    model = DownscalingModel(4, residual=True, channels=[8, 16], attention_levels=[False, False])
    return ds, norm, model.eval()


def test_enforce_mass_exact_and_nonnegative():
    rng = np.random.default_rng(0)
    fine = rng.gamma(0.5, size=(3, 16, 16)).astype(np.float32)
    fine[0, :8, :8] = 0  # a block the model left dry
    coarse = rng.gamma(1.0, size=(3, 2, 2)).astype(np.float32)
    coarse[1, 1, 1] = 0
    out = enforce_mass(fine, coarse, 8)
    np.testing.assert_allclose(block_mean(out, 8), coarse, rtol=1e-5, atol=1e-6)
    assert (out >= 0).all() and (out[1, 8:, 8:] == 0).all()
    np.testing.assert_allclose(out[0, :8, :8], coarse[0, 0, 0])


def test_downscale_arrays_mass_and_seed(setup):
    ds, norm, model = setup
    inputs, inv = ds["input"].values, ds["invariant"].values
    kw = dict(factor=8, members=3, steps=2, sampler="euler", sigma_max=10.0)
    a = downscale_arrays(model, norm, inputs, inv, seed=0, **kw)
    b = downscale_arrays(model, norm, inputs, inv, seed=0, **kw)
    c = downscale_arrays(model, norm, inputs, inv, seed=1, **kw)
    assert a.shape == (3, 2, 32, 32) and (a >= 0).all()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    m = downscale_arrays(model, norm, inputs, inv, seed=0, mass_consistency=True, **kw)
    want = block_mean(ds["input"].sel(input_variable="tp").values, 8)
    np.testing.assert_allclose(
        block_mean(m, 8), np.broadcast_to(want, (3, 2, 4, 4)), rtol=1e-4, atol=1e-5
    )


def test_tiled_matches_untiled_where_tiles_see_the_same_field(setup):
    # tiles of 16 with overlap 8 on 32x32: the model sees less context per tile, so values
    # differ from the single-tile run, but they are finite, seamless (blended) and, for a
    # model whose output ignores position (x -> constant), identical
    ds, norm, model = setup
    inputs, inv = ds["input"].values[:1], ds["invariant"].values
    out = downscale_arrays(
        model, norm, inputs, inv, factor=8, members=2, steps=2, sampler="euler", tile=16, overlap=8
    )
    assert out.shape == (2, 1, 32, 32) and np.isfinite(out).all()

    class Pointwise(torch.nn.Module):
        """Exact denoiser of N(0, 0.25) data: acts pixel by pixel and depends on the noise,
        so tiled == untiled only if every tile sees the same (positional) noise."""

        residual, regression = False, None

        def condition(self, c):
            return torch.zeros_like(c[:, :1]), c

        def forward(self, x, sigma, cond):
            s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *[1] * (x.dim() - 1))
            return x * 0.25 / (s**2 + 0.25)

    kw = dict(factor=8, members=2, steps=3, sampler="heun")
    one = downscale_arrays(Pointwise(), norm, inputs, inv, seed=0, **kw)
    tiled = downscale_arrays(Pointwise(), norm, inputs, inv, seed=0, tile=16, overlap=8, **kw)
    np.testing.assert_allclose(tiled, one, rtol=1e-5, atol=1e-6)
    other = downscale_arrays(Pointwise(), norm, inputs, inv, seed=1, tile=16, overlap=8, **kw)
    assert np.abs(other - one).max() > 1e-2  # the noise matters: the check above is not vacuous


def test_nan_input_is_an_error_naming_the_source(setup):
    ds, norm, model = setup
    bad = ds["input"].values.copy()
    bad[1, 2, 5, 5] = np.nan
    with pytest.raises(ValueError, match="case.nc: input contains NaN"):
        downscale_arrays(
            model, norm, bad, ds["invariant"].values, factor=8, members=1, steps=1, source="case.nc"
        )
    neg = ds["input"].values.copy()
    neg[0, 0, 0, 0] = -2
    with pytest.raises(ValueError, match="negative precipitation"):
        downscale_arrays(model, norm, neg, ds["invariant"].values, factor=8, members=1, steps=1)


def test_store_to_store_chunked_and_atomic(setup, tmp_path):
    xr = pytest.importorskip("xarray")
    ds, norm, model = setup
    big = make_dataset(1, 64, factor=8, seed=2, oro_seed=1)
    src = io.write_dataset(big, tmp_path / "in.zarr", chunks={"time": 1, "y": 32, "x": 32})
    out = downscale_store(
        model,
        norm,
        src,
        tmp_path / "out.zarr",
        block=32,
        members=2,
        steps=2,
        sampler="euler",
        tile=32,
        overlap=8,
        mass_consistency=True,
        progress=False,
    )
    res = xr.open_zarr(out)
    assert res["precip"].dims == ("ensemble", "time", "y", "x")
    assert res["precip"].shape == (2, 1, 64, 64)
    assert res["precip"].attrs["units"] == "mm h-1"
    assert res["ensemble"].attrs["standard_name"] == "realization"
    vals = res["precip"].values
    want = block_mean(big["input"].sel(input_variable="tp").values, 8)
    np.testing.assert_allclose(
        block_mean(vals[:, 0], 8), np.broadcast_to(want[0], (2, 8, 8)), rtol=1e-4, atol=1e-5
    )
    # NaN in the last block: found mid-way, the store is not left behind looking complete
    bad = big.copy(deep=True)
    bad["input"][0, 1, 60, 60] = np.nan
    src2 = io.write_dataset(bad, tmp_path / "bad.zarr", chunks={"time": 1, "y": 32, "x": 32})
    with pytest.raises(ValueError, match="bad.zarr: input contains NaN"):
        downscale_store(
            model,
            norm,
            src2,
            tmp_path / "bad_out.zarr",
            block=32,
            members=1,
            steps=1,
            sampler="euler",
            tile=32,
            overlap=8,
            progress=False,
        )
    assert not (tmp_path / "bad_out.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad_out")]


def test_cli_errors_exit_nonzero(tmp_path, capsys):
    rc = main(
        [
            "--model",
            str(tmp_path / "none.pt"),
            "--stats",
            "s.json",
            "--input",
            "a.zarr",
            "--output",
            str(tmp_path / "o.zarr"),
        ]
    )
    assert rc == 2
    assert f"model file not found: {tmp_path / 'none.pt'}" in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()


def test_store_invariant_nan_and_factor_mismatch_are_errors(setup, tmp_path):
    ds, norm, model = setup
    big = make_dataset(1, 64, factor=8, seed=2, oro_seed=1)
    kw = dict(block=32, members=1, steps=1, sampler="euler", tile=32, overlap=8, progress=False)
    src = io.write_dataset(big, tmp_path / "in.zarr", chunks={"time": 1, "y": 32, "x": 32})
    with pytest.raises(
        ValueError,
        match=r"in.zarr: downscaling_factor 8 but the model was "
        r"trained for x4",
    ):
        downscale_store(model, norm, src, tmp_path / "o.zarr", factor=4, **kw)
    bad = big.copy(deep=True)
    bad["invariant"][0, 40, 40] = np.nan
    src2 = io.write_dataset(bad, tmp_path / "inv.zarr", chunks={"time": 1, "y": 32, "x": 32})
    with pytest.raises(ValueError, match="inv.zarr: invariant contains NaN"):
        downscale_store(model, norm, src2, tmp_path / "o2.zarr", factor=8, **kw)
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o2.zarr").exists()


def test_cli_stats_without_input_group_names_the_file(setup, tmp_path, capsys):
    import json

    _, _, model = setup
    cfg = {"data": {"input_variables": ["tp", "tcwv", "t2m"], "factor": 8, "size": 32}}
    save_model_file(tmp_path / "model.pt", model.state_dict(), provenance={"config": cfg})
    (tmp_path / "stats.json").write_text(json.dumps({"output": {}}))
    rc = main(
        [
            "--model",
            str(tmp_path / "model.pt"),
            "--stats",
            str(tmp_path / "stats.json"),
            "--input",
            "a.zarr",
            "--output",
            str(tmp_path / "o.zarr"),
        ]
    )
    assert rc == 2
    assert "stats.json: missing input.tp" in capsys.readouterr().err
