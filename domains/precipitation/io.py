"""CorrDiff-style precipitation datasets: build, open lazily, validate, write atomically.

Schema (one xarray Dataset; netCDF through ``h5netcdf`` or zarr, format 2 because zarr v3 has
no stable string type for the variable-name coordinates):

- ``input(time, input_variable, y, x)``: coarse predictors on the fine grid (block-constant
  block means), names in the ``input_variable`` coordinate, units in ``input_units``;
- ``output(time, output_variable, y, x)``: the fine target (``tp``), units in
  ``output_units``; optional for inference;
- ``invariant(invariant_variable, y, x)``: optional static fields (``orography``, m), units
  in ``invariant_units``;
- ``lat(y)``, ``lon(x)`` (degrees), ``time``;
- attributes ``downscaling_factor`` and the CF ``Conventions``.

The statistics JSON holds, per group (``input``/``output``/``invariant``) and variable,
``mean`` and ``std`` of the *model-space* values (``log1p`` for precipitation, see
:class:`.models.Normaliser`) and the ``transform`` used.

The predictions of the infer stage (:func:`predictions_dataset`) are one CF-annotated Dataset:
``precip(ensemble, time, y, x)`` (the members), ``ensemble_mean`` and one variable per
baseline (mm h-1), written as ``predictions.zarr`` and ``predictions.nc``.

Bad input raises an error naming the file and the key: missing variables, mismatched grids or
coordinates, NaNs, negative precipitation, a wrong units attribute. Writers build the file
or store under a temporary name and rename it into place only when complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffsci.core.fileio import atomic_dir, atomic_path

__all__ = [
    "PRECIP_UNITS",
    "INVARIANT_VARIABLES",
    "UNIT_ALIASES",
    "build_dataset",
    "open_dataset",
    "validate_dataset",
    "check_values",
    "write_dataset",
    "atomic_zarr",
    "compute_stats",
    "write_stats",
    "read_stats",
    "case_arrays",
    "target_array",
    "read_truth",
    "read_predictions",
    "predictions_dataset",
]

PRECIP_UNITS = "mm h-1"
#: Accepted spellings of each canonical unit (anything else is an error, no silent conversion).
UNIT_ALIASES: dict[str, set[str]] = {
    "mm h-1": {"mm h-1", "mm/h", "mm hr-1", "mm h**-1", "kg m-2 h-1"},
    "kg m-2": {"kg m-2", "kg/m2", "kg m**-2", "mm"},
    "K": {"K", "kelvin"},
    "m": {"m", "meters", "metres"},
}
PRECIP_VARIABLES = ("tp",)
#: The static fields a model is conditioned on, in channel order.
INVARIANT_VARIABLES = ("orography",)
#: Baseline variables of a predictions file, in the order infer writes them.
BASELINE_VARIABLES = ("bilinear", "bicubic", "regression")
CF_ATTRS = {
    "tp": {
        "standard_name": "lwe_precipitation_rate",
        "long_name": "precipitation rate",
        "units": "mm h-1",
    },
    "tcwv": {
        "standard_name": "atmosphere_mass_content_of_water_vapor",
        "long_name": "total column water vapour",
        "units": "kg m-2",
    },
    "t2m": {"standard_name": "air_temperature", "long_name": "2 m temperature", "units": "K"},
    "orography": {"standard_name": "surface_altitude", "long_name": "orography", "units": "m"},
}


def _canonical(unit: str) -> str | None:
    for canon, names in UNIT_ALIASES.items():
        if unit.strip() in names:
            return canon
    return None


def build_dataset(
    inputs: np.ndarray,
    outputs: np.ndarray | None,
    invariant: np.ndarray | None,
    *,
    factor: int,
    input_variables: Sequence[str] = ("tp", "tcwv", "t2m"),
    lat0: float = 30.0,
    lon0: float = 10.0,
    dlat: float = 0.01,
    times: Sequence[Any] | None = None,
):
    """An in-memory :class:`xarray.Dataset` in the schema above from numpy arrays."""
    import xarray as xr

    t, _, h, w = inputs.shape
    times = (
        np.asarray(times)
        if times is not None
        else (np.datetime64("2000-01-01T00") + np.arange(t) * np.timedelta64(1, "h"))
    )
    units = [CF_ATTRS.get(v, {}).get("units", "1") for v in input_variables]
    coords: dict[str, Any] = {
        "time": ("time", times),
        "input_variable": ("input_variable", list(input_variables)),
        "input_units": ("input_variable", units),
        "lat": (
            "y",
            (lat0 + dlat * np.arange(h)).astype(np.float64),
            {"standard_name": "latitude", "units": "degrees_north"},
        ),
        "lon": (
            "x",
            (lon0 + dlat * np.arange(w)).astype(np.float64),
            {"standard_name": "longitude", "units": "degrees_east"},
        ),
    }
    data: dict[str, Any] = {
        "input": (
            ("time", "input_variable", "y", "x"),
            inputs.astype(np.float32),
            {"long_name": "coarse predictors (block means on the fine grid)"},
        ),
    }
    if outputs is not None:
        coords["output_variable"] = ("output_variable", ["tp"])
        coords["output_units"] = ("output_variable", [PRECIP_UNITS])
        data["output"] = (
            ("time", "output_variable", "y", "x"),
            outputs.astype(np.float32),
            {"long_name": "fine-scale target", **CF_ATTRS["tp"]},
        )
    if invariant is not None:
        coords["invariant_variable"] = ("invariant_variable", list(INVARIANT_VARIABLES))
        coords["invariant_units"] = ("invariant_variable", ["m"])
        data["invariant"] = (
            ("invariant_variable", "y", "x"),
            invariant.astype(np.float32),
            {"long_name": "static fields"},
        )
    return xr.Dataset(
        data,
        coords=coords,
        attrs={
            "Conventions": "CF-1.8",
            "downscaling_factor": int(factor),
            "title": "diffsci synthetic precipitation (CorrDiff schema)",
        },
    )


def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or (path.is_dir() and (path / ".zgroup").exists())


def open_dataset(
    path: str | os.PathLike,
    *,
    chunks: Mapping[str, int] | str | None = "auto",
    require_output: bool = True,
    required_inputs: Sequence[str] = ("tp",),
    values: bool = True,
):
    """Open a netCDF (``h5netcdf``) or zarr dataset lazily (dask) and validate it.

    Parameters
    ----------
    chunks
        dask chunks (``"auto"``, a mapping, or ``None`` for the store's own chunks).
    require_output
        The ``output`` variable must be present (training/evaluation).
    required_inputs
        Names that must appear in ``input_variable``.
    values
        Also check the values (NaN, negative precipitation): one lazy pass over the data;
        tiled inference over huge stores sets this False and checks each block as it reads.
    """
    import xarray as xr

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such precipitation dataset")
    try:
        if _is_zarr(p):
            ds = xr.open_zarr(p, chunks=chunks)
        else:
            ds = xr.open_dataset(p, engine="h5netcdf", chunks=chunks)
    except Exception as e:  # noqa: BLE001 - any reader failure means an unreadable file
        raise ValueError(
            f"{p}: not a readable netCDF/zarr dataset ({type(e).__name__}: {e})"
        ) from e
    validate_dataset(
        ds, source=str(p), require_output=require_output, required_inputs=required_inputs
    )
    if values:
        check_values(ds, source=str(p))
    return ds


def _need(ds, name: str, dims: tuple[str, ...], source: str) -> None:
    if name not in ds.variables:
        raise KeyError(f"{source}: missing variable {name!r} (CorrDiff schema needs {name}{dims})")
    if tuple(ds[name].dims) != dims:
        raise ValueError(
            f"{source}: variable {name!r} has dims {tuple(ds[name].dims)}, expected {dims}"
        )


def _check_units(ds, group: str, source: str, expected: Mapping[str, str]) -> None:
    key = f"{group}_units"
    names = [str(v) for v in ds[f"{group}_variable"].values]
    if key not in ds.variables:
        raise KeyError(f"{source}: missing coordinate {key!r} (units of each {group} variable)")
    units = [str(u) for u in ds[key].values]
    for name, unit in zip(names, units, strict=True):
        want = expected.get(name)
        if want is not None and _canonical(unit) != want:
            raise ValueError(
                f"{source}: {group} variable {name!r} has units {unit!r}, expected "
                f"{want!r} (or {sorted(UNIT_ALIASES[want] - {want})})"
            )


def validate_dataset(
    ds,
    *,
    source: str = "dataset",
    require_output: bool = True,
    required_inputs: Sequence[str] = ("tp",),
) -> None:
    """Check the schema (variables, dims, grids, coordinates, units); raise naming ``source``."""
    _need(ds, "input", ("time", "input_variable", "y", "x"), source)
    names = [str(v) for v in ds["input_variable"].values]
    missing = [v for v in required_inputs if v not in names]
    if missing:
        raise KeyError(f"{source}: input_variable lacks {missing} (has {names})")
    expected = {k: v["units"] for k, v in CF_ATTRS.items()}
    _check_units(ds, "input", source, expected)
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    for c, dim in (("lat", "y"), ("lon", "x")):
        if c not in ds.variables:
            raise KeyError(f"{source}: missing coordinate {c!r}")
        cd = ds[c].dims
        if cd not in ((dim,), ("y", "x")):
            raise ValueError(
                f"{source}: coordinate {c!r} has dims {cd}, expected ({dim},) or (y, x)"
            )
    if require_output:
        _need(ds, "output", ("time", "output_variable", "y", "x"), source)
        _check_units(ds, "output", source, expected)
        if "tp" not in [str(v) for v in ds["output_variable"].values]:
            raise KeyError(f"{source}: output_variable lacks 'tp'")
    if "invariant" in ds.variables:
        _need(ds, "invariant", ("invariant_variable", "y", "x"), source)
        _check_units(ds, "invariant", source, expected)
    factor = ds.attrs.get("downscaling_factor")
    if factor is None:
        raise KeyError(f"{source}: missing attribute 'downscaling_factor'")
    if ny % int(factor) or nx % int(factor):
        raise ValueError(f"{source}: grid {ny}x{nx} not divisible by downscaling_factor={factor}")
    lat = np.asarray(ds["lat"].values)
    if (
        lat.ndim == 1
        and lat.size > 1
        and not (np.all(np.diff(lat) > 0) or np.all(np.diff(lat) < 0))
    ):
        raise ValueError(f"{source}: coordinate 'lat' is not monotonic")


def check_block(values: np.ndarray, *, name: str, source: str, precip: bool) -> None:
    """NaN / negative-precipitation check of one array (a block of a tiled read)."""
    if np.isnan(values).any():
        raise ValueError(
            f"{source}: {name} contains NaN (fill or mask missing values before "
            "downscaling; NaNs are not masked silently)"
        )
    if precip and (values < 0).any():
        raise ValueError(
            f"{source}: {name} contains negative precipitation "
            f"(min {float(values.min()):.3g} {PRECIP_UNITS})"
        )


def check_values(ds, *, source: str = "dataset") -> None:
    """Lazy (dask) pass over the values: no NaN anywhere, no negative precipitation."""
    import dask

    checks = {}
    names = [str(v) for v in ds["input_variable"].values]
    for v in names:
        da = ds["input"].sel(input_variable=v)
        checks[f"input[{v}] NaN"] = da.isnull().any().data
        if v in PRECIP_VARIABLES:
            checks[f"input[{v}] negative"] = (da < 0).any().data
    if "output" in ds.variables:
        checks["output NaN"] = ds["output"].isnull().any().data
        checks["output negative"] = (ds["output"] < 0).any().data
    if "invariant" in ds.variables:
        checks["invariant NaN"] = ds["invariant"].isnull().any().data
    (res,) = dask.compute(checks)
    bad = [k for k, v in res.items() if bool(v)]
    if bad:
        what = bad[0]
        if what.endswith("NaN"):
            raise ValueError(
                f"{source}: {what.replace(' NaN', '')} contains NaN (fill or mask "
                "missing values before downscaling; NaNs are not masked silently)"
            )
        raise ValueError(
            f"{source}: {what.replace(' negative', '')} contains negative precipitation"
        )


def atomic_zarr(path: str | os.PathLike):
    """Yield a temporary store path beside ``path`` (not created: the zarr writer creates it);
    renamed into place on success, removed on failure (:func:`diffsci.core.fileio.atomic_dir`).
    """
    return atomic_dir(path, create=False)


def write_dataset(ds, path: str | os.PathLike, *, chunks: Mapping[str, int] | None = None) -> Path:
    """Write ``ds`` atomically as netCDF (``.nc``, h5netcdf) or zarr (``.zarr``, format 2).

    ``chunks`` (dims to sizes) sets the zarr chunking / netCDF chunking; dask-backed
    variables are written chunk by chunk.
    """
    p = Path(path)
    if chunks:
        ds = ds.chunk({k: v for k, v in chunks.items() if k in ds.dims})
    if p.suffix == ".zarr":
        with atomic_zarr(p) as tmp:
            ds.to_zarr(tmp, zarr_format=2, consolidated=True, mode="w")
        return p
    if p.suffix not in (".nc", ".nc4"):
        raise ValueError(f"{p}: unknown format (use .nc for netCDF or .zarr)")
    with atomic_path(p, suffix=p.suffix) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")
    return p


def compute_stats(ds) -> dict[str, Any]:
    """Model-space mean/std per variable (``log1p`` for precipitation), for the stats JSON."""
    from .models import forward_transform

    out: dict[str, Any] = {}
    for group, var in (("input", "input"), ("output", "output"), ("invariant", "invariant")):
        if var not in ds.variables:
            continue
        out[group] = {}
        for name in [str(v) for v in ds[f"{group}_variable"].values]:
            vals = np.asarray(ds[var].sel({f"{group}_variable": name}).values, dtype=np.float64)
            tr = "log1p" if name in PRECIP_VARIABLES else "none"
            z = forward_transform(vals, tr)
            out[group][name] = {
                "mean": float(z.mean()),
                "std": float(max(z.std(), 1e-6)),
                "transform": tr,
            }
    return out


def write_stats(stats: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write the statistics JSON atomically."""
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(stats, indent=2) + "\n")
    return Path(path)


def read_stats(path: str | os.PathLike, *, names: Mapping[str, Sequence[str]] | None = None):
    """Read and check the statistics JSON; ``names`` (group -> variables) must all be present."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such statistics JSON (run the prepare stage)")
    try:
        stats = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from e
    for group, vars_ in (names or {}).items():
        for v in vars_:
            entry = stats.get(group, {}).get(v)
            if not isinstance(entry, dict) or not {"mean", "std", "transform"} <= set(entry):
                raise KeyError(f"{p}: missing {group}.{v} (mean, std, transform)")
            if not entry["std"] > 0:
                raise ValueError(f"{p}: {group}.{v}.std must be > 0, got {entry['std']}")
    return stats


def case_arrays(
    ds, input_variables: Sequence[str], source: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(inputs (N, C, H, W), invariant (C_inv, H, W))`` as float32, after checking that the
    dataset's channels are ``input_variables`` and :data:`INVARIANT_VARIABLES`, in order."""
    names = [str(v) for v in ds["input_variable"].values]
    want = list(input_variables)
    if names != want:
        raise ValueError(f"{source}: input_variable {names} != config data.input_variables {want}")
    if "invariant" not in ds.variables:
        raise KeyError(
            f"{source}: missing variable 'invariant' (needs {list(INVARIANT_VARIABLES)})"
        )
    inv_names = [str(v) for v in ds["invariant_variable"].values]
    if inv_names != list(INVARIANT_VARIABLES):
        raise ValueError(f"{source}: invariant_variable {inv_names} != {list(INVARIANT_VARIABLES)}")
    return ds["input"].values.astype(np.float32), ds["invariant"].values.astype(np.float32)


def target_array(ds) -> np.ndarray:
    """The target precipitation ``(N, 1, H, W)`` as float32 (the first output variable)."""
    return ds["output"].values[:, :1].astype(np.float32)


def read_truth(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, int]:
    """``(truth (N, H, W), coarse tp input (N, H, W), factor)`` of a held-out dataset."""
    ds = open_dataset(path)
    truth = ds["output"].values[:, 0].astype(np.float32)
    tp_in = ds["input"].sel(input_variable="tp").values.astype(np.float32)
    factor = int(ds.attrs["downscaling_factor"])
    ds.close()
    return truth, tp_in, factor


def read_predictions(
    path: str | os.PathLike,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, float]]:
    """``(members (M, N, H, W), {baseline: (N, H, W)}, {method: seconds per case})`` of a
    predictions store written by the infer stage."""
    import xarray as xr

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no predictions (run the infer stage)")
    pred = xr.open_zarr(p)
    ens = pred["precip"].values
    base = {v: pred[v].values for v in BASELINE_VARIABLES if v in pred.variables}
    seconds = json.loads(pred.attrs.get("seconds_per_case", "{}"))
    pred.close()
    return ens, base, seconds


def predictions_dataset(
    ds,
    ens: np.ndarray,
    base: Mapping[str, np.ndarray],
    seconds: Mapping[str, float],
    sampling: Mapping[str, Any],
):
    """The predictions as a CF-annotated Dataset (members first, then time, y, x), on the grid
    and times of the held-out dataset ``ds``; ``sampling`` is the config's section of that
    name (recorded in the attributes)."""
    import xarray as xr

    attrs = {"standard_name": "lwe_precipitation_rate", "units": PRECIP_UNITS}
    dims = ("time", "y", "x")
    data = {
        "precip": (
            ("ensemble", *dims),
            ens,
            {**attrs, "long_name": "diffusion downscaling ensemble"},
        ),
        "ensemble_mean": (dims, ens.mean(0), {**attrs, "long_name": "diffusion ensemble mean"}),
    }
    for k, v in base.items():
        data[k] = (dims, v.astype(np.float32), {**attrs, "long_name": f"{k} baseline"})
    s = sampling
    lat = ds["lat"].values if ds["lat"].ndim == 1 else ds["lat"]
    return xr.Dataset(
        data,
        coords={
            "ensemble": ("ensemble", np.arange(ens.shape[0]), {"standard_name": "realization"}),
            "time": ds["time"].values,
            "lat": lat,
            "lon": ds["lon"].values,
        },
        attrs={
            "Conventions": "CF-1.8",
            "downscaling_factor": ds.attrs["downscaling_factor"],
            "sampler": f"{s['sampler']}, {s['steps']} steps",
            "mass_consistent": int(bool(s["mass_consistency"])),
            "seconds_per_case": json.dumps(seconds),
        },
    ).assign_coords(lat=("y", ds["lat"].values), lon=("x", ds["lon"].values))
