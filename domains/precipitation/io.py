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

from diffsci.core.datasource import FLOAT32_SAFE_MAX, require_finite
from diffsci.core.fileio import atomic_dir, atomic_path, refuse_pickle_codecs

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


def _shape_error(name: str, arr: Any, want: str, why: str) -> ValueError:
    shape = getattr(arr, "shape", None)
    return ValueError(f"build_dataset: {name} has shape {shape}, expected {want} ({why})")


def _check_shapes(
    inputs: np.ndarray,
    outputs: np.ndarray | None,
    invariant: np.ndarray | None,
    n_vars: int,
) -> tuple[int, int, int]:
    """``(T, H, W)`` of the arrays of :func:`build_dataset`, or a ``ValueError`` naming the
    array, its shape and the expected one (never the values)."""
    if getattr(inputs, "ndim", 0) != 4 or inputs.shape[1] != n_vars:
        raise _shape_error(
            "inputs", inputs, f"(time, {n_vars}, y, x)", "one channel per input variable"
        )
    t, _, h, w = inputs.shape
    if outputs is not None and tuple(getattr(outputs, "shape", ())) != (t, 1, h, w):
        raise _shape_error("outputs", outputs, f"({t}, 1, {h}, {w})", "the fine target tp")
    if invariant is not None and (
        getattr(invariant, "ndim", 0) != 3 or invariant.shape != (len(INVARIANT_VARIABLES), h, w)
    ):
        raise _shape_error(
            "invariant",
            invariant,
            f"({len(INVARIANT_VARIABLES)}, {h}, {w})",
            f"the static fields {list(INVARIANT_VARIABLES)} on the fine grid",
        )
    return t, h, w


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
    lat: np.ndarray | None = None,
    lon: np.ndarray | None = None,
    input_units: Sequence[str] | None = None,
    title: str = "diffsci synthetic precipitation (CorrDiff schema)",
):
    """An in-memory :class:`xarray.Dataset` in the schema above from numpy arrays.

    Parameters
    ----------
    inputs
        ``(T, C, H, W)``: ``T`` time steps of the ``C = len(input_variables)`` coarse
        predictors on the fine ``H x W`` grid (block-constant block means).
    outputs
        ``(T, 1, H, W)``: the fine target ``tp`` (mm h-1), or ``None`` (inference data).
    invariant
        ``(len(INVARIANT_VARIABLES), H, W)``: the static fields (orography, m), or ``None``.
    factor
        The downscaling factor (attribute ``downscaling_factor``).
    input_variables, input_units
        Names of the ``C`` input channels, in order, and their units (default: the CF units
        of known names, ``"1"`` otherwise).
    lat0, lon0, dlat
        A regular grid of ``H x W`` points from ``(lat0, lon0)`` with spacing ``dlat``
        degrees, used when ``lat`` (``(H,)``) and ``lon`` (``(W,)``) are not given.
    times
        ``T`` time stamps (default: hourly from 2000-01-01).
    title
        The dataset's ``title`` attribute.

    Raises
    ------
    ValueError
        An array of another shape than the above, naming it, its shape and the expected one.
    """
    import xarray as xr

    input_variables = list(input_variables)
    t, h, w = _check_shapes(inputs, outputs, invariant, len(input_variables))
    times = (
        np.asarray(times)
        if times is not None
        else (np.datetime64("2000-01-01T00") + np.arange(t) * np.timedelta64(1, "h"))
    )
    units = (
        list(input_units)
        if input_units is not None
        else [CF_ATTRS.get(v, {}).get("units", "1") for v in input_variables]
    )
    lat = (lat0 + dlat * np.arange(h)) if lat is None else np.asarray(lat)
    lon = (lon0 + dlat * np.arange(w)) if lon is None else np.asarray(lon)
    coords: dict[str, Any] = {
        "time": ("time", times),
        "input_variable": ("input_variable", list(input_variables)),
        "input_units": ("input_variable", units),
        "lat": (
            "y",
            lat.astype(np.float64),
            {"standard_name": "latitude", "units": "degrees_north"},
        ),
        "lon": (
            "x",
            lon.astype(np.float64),
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
            "title": title,
        },
    )


def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or (path.is_dir() and (path / ".zgroup").exists())


#: File signatures (the first bytes) -> (format, xarray engine, the package providing it).
#: netCDF classic and 64-bit offset: "CDF\x01"/"CDF\x02" (NetCDF Users Guide, "File Format
#: Specifications"); CDF-5 "CDF\x05"; netCDF-4 is HDF5 ("\x89HDF\r\n\x1a\n", HDF5 File
#: Format Specification, superblock); GRIB editions 1 and 2 start with "GRIB" (WMO-No. 306).
SIGNATURES: tuple[tuple[bytes, str, str, str], ...] = (
    (b"CDF\x01", "netCDF-3 classic", "scipy", "scipy"),
    (b"CDF\x02", "netCDF-3 64-bit offset", "scipy", "scipy"),
    (b"CDF\x05", "netCDF-3 CDF-5 (64-bit data)", "netcdf4", "netCDF4"),
    (b"\x89HDF\r\n\x1a\n", "netCDF-4/HDF5", "h5netcdf", "h5netcdf"),
    (b"GRIB", "GRIB", "cfgrib", "cfgrib"),
)


def file_engine(path: str | os.PathLike) -> tuple[str, str]:
    """``(format, xarray engine)`` of a dataset file by its signature (a zarr store by its
    suffix or ``.zgroup``).

    Raises
    ------
    ValueError
        Unknown signature, or the engine's package is not installed (naming it and the
        ``pip install`` that adds it).
    """
    import importlib.util

    p = Path(path)
    if _is_zarr(p):
        return "zarr", "zarr"
    with open(p, "rb") as f:
        head = f.read(8)
    for magic, fmt, engine, package in SIGNATURES:
        if head.startswith(magic):
            if importlib.util.find_spec(package) is None:
                raise ValueError(
                    f"{p}: a {fmt} file needs xarray's {engine!r} engine, which is not "
                    f"installed: pip install {package} (or convert the file to netCDF-4)"
                )
            return fmt, engine
    raise ValueError(
        f"{p}: not a readable netCDF/zarr dataset (file signature {head[:4]!r} is none of "
        "netCDF-3, netCDF-4/HDF5, GRIB; a zarr store is a folder named *.zarr)"
    )


def open_xarray(path: str | os.PathLike, *, chunks: Mapping[str, int] | str | None = "auto"):
    """The file as xarray opens it with the engine of :func:`file_engine` (no schema check)."""
    import xarray as xr

    p = Path(path)
    fmt, engine = file_engine(p)
    if engine == "scipy" and chunks == "auto":  # netCDF-3 strings are object arrays: no
        chunks = {}  # size estimate for dask's auto chunks, so one chunk per variable
    if engine == "zarr":
        refuse_pickle_codecs(p)
    try:
        if engine == "zarr":
            return xr.open_zarr(p, chunks=chunks)
        return xr.open_dataset(p, engine=engine, chunks=chunks)
    except Exception as e:  # noqa: BLE001 - any reader failure means an unreadable file
        raise ValueError(
            f"{p}: not a readable netCDF/zarr dataset ({fmt} through xarray's {engine!r} "
            f"engine: {type(e).__name__}: {e})"
        ) from e


def open_dataset(
    path: str | os.PathLike,
    *,
    chunks: Mapping[str, int] | str | None = "auto",
    require_output: bool = True,
    required_inputs: Sequence[str] = ("tp",),
    values: bool = True,
):
    """Open a netCDF (3 or 4), GRIB or zarr dataset in the schema above lazily (dask) and
    validate it (the engine by the file's signature: :func:`file_engine`).

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

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such precipitation dataset")
    ds = open_xarray(p, chunks=chunks)
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


_FIX_NAN = "fill or mask missing values before downscaling; NaNs are not masked silently"
_FIX_INF = "a fill value or an overflow: mask or fill it before downscaling"
_FIX_BIG = (
    "such values overflow float32 arithmetic in the normalisation and the loss: mask fill "
    "values such as 1e30 and check the units"
)


def _values_error(source: str, name: str, kind: str, n: int, size: int) -> ValueError:
    """The error for ``n`` of ``size`` values of ``name`` being ``kind`` (NaN, inf, big,
    negative): the file, the variable, how many, and the way forward."""
    if kind == "NaN":
        return ValueError(f"{source}: {name} contains NaN ({n} of {size} values; {_FIX_NAN})")
    if kind == "inf":
        return ValueError(f"{source}: {name} contains +/-inf ({n} of {size} values; {_FIX_INF})")
    if kind == "big":
        return ValueError(
            f"{source}: {name} has {n} of {size} values of magnitude above "
            f"{FLOAT32_SAFE_MAX:.3g}; {_FIX_BIG}"
        )
    return ValueError(
        f"{source}: {name} contains negative precipitation ({n} of {size} values; "
        f"precipitation in {PRECIP_UNITS} is never negative: mask or fix them)"
    )


def _counts(values, precip: bool) -> dict[str, Any]:
    """Counts (lazy for an xarray/dask array) of each kind of bad value, in reporting order."""
    out = {
        "NaN": np.isnan(values).sum(),
        "inf": np.isinf(values).sum(),
        "big": (np.isfinite(values) & (abs(values) > FLOAT32_SAFE_MAX)).sum(),
    }
    if precip:
        out["negative"] = (values < 0).sum()
    return out


def _raise_first(counts: Mapping[str, Mapping[str, Any]], sizes: Mapping[str, int], source: str):
    """Raise for the first variable and kind with a non-zero count."""
    for name, kinds in counts.items():
        for kind, n in kinds.items():
            if int(n):
                raise _values_error(source, name, kind, int(n), sizes[name])


def check_block(values: np.ndarray, *, name: str, source: str, precip: bool) -> None:
    """NaN / inf / overflowing / negative-precipitation check of one array (a block of a tiled
    read)."""
    _raise_first({name: _counts(values, precip)}, {name: values.size}, source)


def check_values(ds, *, source: str) -> None:
    """Lazy (dask) pass over the values: no NaN, inf or magnitude that overflows float32
    anywhere, no negative precipitation; the error names ``source`` (the file), the variable,
    how many values are bad and the way forward."""
    import dask

    arrays = {}
    for v in [str(v) for v in ds["input_variable"].values]:
        arrays[f"input[{v}]"] = (ds["input"].sel(input_variable=v), v in PRECIP_VARIABLES)
    if "output" in ds.variables:
        arrays["output"] = (ds["output"], True)
    if "invariant" in ds.variables:
        arrays["invariant"] = (ds["invariant"], False)
    lazy = {
        k: {c: n.data for c, n in _counts(da, precip).items()} for k, (da, precip) in arrays.items()
    }
    (res,) = dask.compute(lazy)
    _raise_first(res, {k: da.size for k, (da, _) in arrays.items()}, source)


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
    refuse_pickle_codecs(p)
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


# --- the user's own files -------------------------------------------------------------------

#: Default names of a plain gridded file's variables (``variables`` block of the config).
GRIDDED_DEFAULTS: Mapping[str, Any] = {
    "inputs": {},
    "target": "tp",
    "invariants": {"orography": "orography"},
    "lat": "lat",
    "lon": "lon",
    "time": "time",
}


def is_corrdiff(ds) -> bool:
    """The dataset is in the CorrDiff schema above (``input`` over ``input_variable``)."""
    return "input" in ds.variables and "input_variable" in ds["input"].dims


def check_factor(found: Any, factor: int, *, source: str, served_by: str) -> None:
    """Refuse a file whose ``downscaling_factor`` attribute is not ``factor`` (naming both)."""
    if found is not None and int(found) != int(factor):
        raise ValueError(
            f"{source}: downscaling_factor is {int(found)} (the file's attribute) but "
            f"{served_by} is {int(factor)}; coarsen the inputs to x{int(factor)}, or train a "
            f"model with data.factor: {int(found)} on x{int(found)} data"
        )


def _finite(values: np.ndarray, *, source: str, what: str) -> np.ndarray:
    for bad, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        n = int(test(values).sum())
        if n:
            raise ValueError(
                f"{source}: {what} contains {bad} at {n} of {values.size} points (fill or mask "
                "missing values before training or downscaling; nothing is masked silently)"
            )
    return values


def _units(da, want: str | None, *, source: str, what: str, fix: str = "") -> str:
    unit = str(da.attrs.get("units", want or "1"))
    if want is not None and _canonical(unit) != want:
        raise ValueError(
            f"{source}: {what} has units {unit!r}, expected {want!r} (or "
            f"{sorted(UNIT_ALIASES[want] - {want})}); convert it{fix}"
        )
    return want or unit


def _grid_var(ds, name: str, *, key: str, source: str):
    if name not in ds.variables:
        have = sorted(map(str, ds.data_vars))
        raise KeyError(
            f"{source}: no variable {name!r} (config {key}; the file has {have}); map the "
            "model's name to the file's in the config's variables block"
        )
    return ds[name]


def _time_first(da, time: str, *, source: str, what: str) -> np.ndarray:
    """``(T, h, w)`` float values of a gridded variable (a single time step may lack the time
    dimension; other length-1 dimensions, such as a level, are dropped)."""
    extra = [d for d in da.dims if d != time and da.sizes[d] == 1 and da.ndim > 2]
    da = da.squeeze(extra) if extra else da
    if time in da.dims:
        da = da.transpose(time, ...)
    elif da.ndim == 2:
        da = da.expand_dims(time)
    if da.ndim != 3:
        raise ValueError(
            f"{source}: {what} has dims {tuple(da.dims)}; expected ({time}, y, x) or (y, x)"
        )
    values = np.asarray(da.values)  # checked before the float32 cast: 1e39 is not an inf
    _finite(values, source=source, what=what)
    require_finite(values, source=source, variable=what, max_abs=FLOAT32_SAFE_MAX)
    return values.astype(np.float32)


def _on_fine_grid(
    arr: np.ndarray, hw: tuple[int, int], factor: int, *, source: str, what: str
) -> np.ndarray:
    """A coarse field on the fine grid: as is if already ``hw``, block-constant if on the grid
    ``factor`` times coarser."""
    from .operators import upsample_nearest

    if arr.shape[-2:] == hw:
        return arr
    if (arr.shape[-2] * factor, arr.shape[-1] * factor) == hw:
        return upsample_nearest(arr, factor).astype(np.float32)
    raise ValueError(
        f"{source}: {what} is {arr.shape[-2]}x{arr.shape[-1]}, neither the fine grid "
        f"{hw[0]}x{hw[1]} nor that grid coarsened x{factor}"
    )


def _coord(ds, name: str, *, source: str) -> np.ndarray:
    for n in (name, {"lat": "latitude", "lon": "longitude"}.get(name, name)):
        if n in ds.variables:
            c = np.asarray(ds[n].values, dtype=np.float64)
            if c.ndim != 1:
                raise ValueError(
                    f"{source}: coordinate {n!r} is {c.ndim}-D (a curvilinear grid); regrid "
                    "to a regular lat/lon grid first"
                )
            return c
    raise KeyError(f"{source}: no coordinate {name!r} (config variables.{name})")


def from_gridded(
    ds,
    *,
    input_variables: Sequence[str],
    factor: int,
    variables: Mapping[str, Any] | None = None,
    require_output: bool = True,
    source: str = "dataset",
):
    """A plain gridded dataset (one variable per field) in the CorrDiff schema.

    Parameters
    ----------
    ds
        The file as xarray opens it: the coarse inputs as ``(time, y, x)`` (or ``(y, x)``)
        variables, either on the fine grid or on the grid ``factor`` times coarser (repeated
        onto the fine grid here); the fine target ``tp`` ``(time, y, x)`` (mm h-1); the
        invariants (``orography``, m) ``(y, x)``; 1-D ``lat``/``lon`` of the fine grid.
    input_variables
        The model's input names, in channel order.
    variables
        The config's ``variables`` block: ``inputs`` (model name -> the file's name, default
        the same), ``target``, ``invariants`` (model name -> file name), ``lat``, ``lon``,
        ``time`` (:data:`GRIDDED_DEFAULTS`).
    require_output
        The target must be present (training and evaluation data).

    Raises
    ------
    KeyError, ValueError
        Naming the file, the variable and the config key: a missing variable or coordinate,
        a grid that fits neither the fine nor the coarse grid, units other than the schema's,
        NaN or inf values.
    """
    v = {**GRIDDED_DEFAULTS, **(variables or {})}
    lat, lon = _coord(ds, v["lat"], source=source), _coord(ds, v["lon"], source=source)
    hw = (lat.size, lon.size)
    inv = []
    for name in INVARIANT_VARIABLES:
        fname = v["invariants"].get(name, name)
        da = _grid_var(ds, fname, key=f"variables.invariants.{name}", source=source)
        _units(da, "m", source=source, what=f"invariant {fname!r}", fix=" (geopotential / g)")
        arr = _time_first(da, v["time"], source=source, what=f"variable {fname!r}")[0]
        inv.append(_on_fine_grid(arr, hw, 1, source=source, what=f"invariant {fname!r}"))
    ins, units = [], []
    for name in input_variables:
        fname = v["inputs"].get(name, name)
        da = _grid_var(ds, fname, key=f"variables.inputs.{name}", source=source)
        want = CF_ATTRS.get(name, {}).get("units")
        units.append(_units(da, want, source=source, what=f"input {fname!r}"))
        arr = _time_first(da, v["time"], source=source, what=f"variable {fname!r}")
        ins.append(_on_fine_grid(arr, hw, factor, source=source, what=f"input {fname!r}"))
    out = None
    if v["target"] in ds.variables or require_output:
        da = _grid_var(ds, v["target"], key="variables.target", source=source)
        _units(da, PRECIP_UNITS, source=source, what=f"target {v['target']!r}")
        out = _time_first(da, v["time"], source=source, what=f"variable {v['target']!r}")
        out = _on_fine_grid(out, hw, 1, source=source, what=f"target {v['target']!r}")[:, None]
    times = ds[v["time"]].values if v["time"] in ds.variables else None
    return build_dataset(
        np.stack(ins, 1),
        out,
        np.stack(inv),
        factor=factor,
        input_variables=input_variables,
        input_units=units,
        times=None if times is None else np.atleast_1d(times),
        lat=lat,
        lon=lon,
        title=f"diffsci precipitation from {Path(source).name}",
    )


def read_user_dataset(
    path: str | os.PathLike,
    *,
    input_variables: Sequence[str],
    factor: int,
    variables: Mapping[str, Any] | None = None,
    require_output: bool = True,
    served_by: str = "the config's data.factor",
):
    """A user's file (netCDF-3/4, GRIB, zarr) in the CorrDiff schema, in memory and checked.

    A file already in the schema is validated and its channels put in ``input_variables``'
    order; a plain gridded file goes through :func:`from_gridded`. A ``downscaling_factor``
    attribute must equal ``factor`` (``served_by`` names where that factor comes from).
    """
    p = Path(path)
    raw = open_xarray(p, chunks=None)
    source = str(p)
    check_factor(raw.attrs.get("downscaling_factor"), factor, source=source, served_by=served_by)
    if is_corrdiff(raw):
        raw.attrs.setdefault("downscaling_factor", int(factor))
        validate_dataset(
            raw, source=source, require_output=require_output, required_inputs=input_variables
        )
        ds = raw.sel(input_variable=list(input_variables)).load()
        ds.attrs["downscaling_factor"] = int(factor)
    else:
        ds = from_gridded(
            raw,
            input_variables=input_variables,
            factor=factor,
            variables=variables,
            require_output=require_output,
            source=source,
        )
    raw.close()
    validate_dataset(
        ds, source=source, require_output=require_output, required_inputs=input_variables
    )
    check_values(ds, source=source)
    return ds


def merge_cases(datasets: Sequence[Any], sources: Sequence[str]):
    """The time steps of several CorrDiff datasets of one grid as one dataset (the first
    file's grid, invariants and units).

    Raises
    ------
    ValueError
        A file on another grid than the first (naming both files and both grids).
    """
    first = datasets[0]
    for ds, src in zip(datasets[1:], sources[1:], strict=True):
        for c in ("lat", "lon"):
            if ds[c].shape != first[c].shape or not np.allclose(ds[c].values, first[c].values):
                raise ValueError(
                    f"{src}: its {c} grid ({ds[c].size} points) differs from {sources[0]}'s "
                    f"({first[c].size} points); a split's files share one grid (regrid them)"
                )
    has_out = all("output" in ds.variables for ds in datasets)
    return build_dataset(
        np.concatenate([ds["input"].values for ds in datasets]),
        np.concatenate([ds["output"].values[:, :1] for ds in datasets]) if has_out else None,
        first["invariant"].values,
        factor=int(first.attrs["downscaling_factor"]),
        input_variables=[str(v) for v in first["input_variable"].values],
        input_units=[str(u) for u in first["input_units"].values],
        times=np.concatenate([np.atleast_1d(ds["time"].values) for ds in datasets]),
        lat=first["lat"].values,
        lon=first["lon"].values,
        title="diffsci precipitation from " + ", ".join(Path(s).name for s in sources),
    )


def output_names(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Output file names of downscaled ``inputs``: ``<stem>_downscaled.zarr`` for a zarr store,
    ``<stem>_downscaled.nc`` (netCDF-4) for any other file, so each suffix names the format
    written.

    Raises
    ------
    ValueError
        Two inputs that would write the same output (naming both).
    """
    names: dict[str, str] = {}
    for p in map(Path, inputs):
        name = f"{p.stem}_downscaled{'.zarr' if _is_zarr(p) else '.nc'}"
        if name in names:
            raise ValueError(f"{p} and {names[name]} would both write {name}; rename one of them")
        names[name] = str(p)
    return list(names)
