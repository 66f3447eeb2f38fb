"""The precipitation model card: what a trained downscaling model serves, and the checks of
new data against it (:mod:`diffsci.core.modelcard`).

A card's ``serves`` records the downscaling factor, the input variables, invariants and target
by name with their units, the training grid (size, lat/lon extent), the tile inference uses and
the multiple every grid side must be; ``normalisation`` holds the model-space statistics the
model was trained with (the statistics JSON of :mod:`.io`) and each variable's physical range
in the training data; ``sigma`` the noise levels of training and sampling (the EDM
parametrisation of Karras et al., NeurIPS 2022).

New data are refused (:class:`~diffsci.core.modelcard.Incompatible`) when the model cannot
serve them (another factor, other variables or units, a grid it cannot tile) and warned about
when it can but extrapolates (inputs outside the training range, another region): CorrDiff
(Mardani et al., 2024) and WassDiff learn the distribution of one region and period.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from diffsci.core.modelcard import Incompatible, require, require_names, warn_outside

from .io import INVARIANT_VARIABLES, PRECIP_UNITS

__all__ = [
    "variable_ranges",
    "serves",
    "normalisation",
    "sigma",
    "check_card",
    "check_dataset",
]

#: How far (times the training range's width) a file's mean or maximum may lie outside the
#: training range before a warning.
TOLERANCE = 0.25


def _ranges(da, time: str | None) -> dict[str, Any]:
    """Lazy physical range of a field: min, max, mean, std, and the range of the per-time-step
    means (the whole field's mean when it has no ``time``)."""
    case = da.mean([d for d in da.dims if d != time]) if time in da.dims else da.mean()
    return {
        "min": da.min(),
        "max": da.max(),
        "mean": da.mean(),
        "std": da.std(),
        "case_mean_min": case.min(),
        "case_mean_max": case.max(),
    }


def variable_ranges(ds) -> dict[str, dict[str, dict[str, float]]]:
    """``{group: {variable: ranges}}`` of a CorrDiff dataset (groups ``input``, ``output``,
    ``invariant``), in physical units; one pass over a lazily (dask) opened dataset."""
    import dask

    lazy: dict[str, dict[str, dict[str, Any]]] = {}
    for group in ("input", "output", "invariant"):
        if group not in ds.variables:
            continue
        dim = f"{group}_variable"
        lazy[group] = {
            str(n): _ranges(ds[group].sel({dim: n}).astype("float64"), "time")
            for n in ds[dim].values
        }
    (done,) = dask.compute(lazy)
    return {
        g: {n: {k: float(v) for k, v in r.items()} for n, r in rows.items()}
        for g, rows in done.items()
    }


def _multiple(cfg: Mapping[str, Any]) -> int:
    m = cfg["model"]
    levels = [len(m["channels"]), len(m.get("regression_channels") or m["channels"])]
    return math.lcm(int(cfg["data"]["factor"]), *(2 ** (n - 1) for n in levels))


def serves(cfg: Mapping[str, Any], ds) -> dict[str, Any]:
    """What the model trained on the CorrDiff dataset ``ds`` serves."""
    lat, lon = ds["lat"].values, ds["lon"].values
    return {
        "factor": int(ds.attrs["downscaling_factor"]),
        "input_variables": [str(v) for v in ds["input_variable"].values],
        "input_units": [str(u) for u in ds["input_units"].values],
        "invariant_variables": list(INVARIANT_VARIABLES),
        "invariant_units": [str(u) for u in ds["invariant_units"].values],
        "target_variable": "tp",
        "target_units": PRECIP_UNITS,
        "grid": {
            "height": int(ds.sizes["y"]),
            "width": int(ds.sizes["x"]),
            "lat": [float(lat.min()), float(lat.max())],
            "lon": [float(lon.min()), float(lon.max())],
        },
        "tile": cfg["sampling"]["tile"],
        "grid_multiple_of": _multiple(cfg),
        "training_time_steps": int(ds.sizes["time"]),
    }


def normalisation(stats: Mapping[str, Any], ds) -> dict[str, Any]:
    """The model-space statistics (the statistics JSON) and the physical ranges of ``ds``."""
    return {"stats": dict(stats), "ranges": variable_ranges(ds)}


def sigma(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Noise levels: sampling range, ``sigma_data`` and the log-normal training law."""
    m, s = cfg["model"], cfg["sampling"]
    return {
        "min": float(s["sigma_min"]),
        "max": float(s["sigma_max"]),
        "schedule": s.get("schedule", "karras"),
        "data": float(m["sigma_data"]),
        "train_log_mean": float(m["train_sigma_mean"]),
        "train_log_std": float(m["train_sigma_std"]),
    }


def _check_schema(ds, sv: Mapping[str, Any], source: str) -> None:
    retrain = "or train a model on data with them (source.kind: files)"
    found = int(ds.attrs["downscaling_factor"])
    require(
        "downscaling_factor",
        found,
        sv["factor"],
        source=source,
        fix=f"coarsen the inputs to x{sv['factor']}, or train a model with data.factor: "
        f"{found} on x{found} data",
    )
    names = [str(v) for v in ds["input_variable"].values]
    require_names(
        "input variables",
        names,
        sv["input_variables"],
        source=source,
        fix="map the file's names to the model's in the variables.inputs block of the "
        f"model's config, {retrain}",
    )
    units = [str(u) for u in ds["input_units"].values]
    require("input units", units, sv["input_units"], source=source, fix=f"convert them, {retrain}")
    if "invariant" not in ds.variables:
        raise Incompatible(
            f"{source}: no invariants; the model needs {sv['invariant_variables']} on the "
            "file's fine grid (variables.invariants maps them to the file's names)"
        )
    inv = [str(v) for v in ds["invariant_variable"].values]
    require_names(
        "invariants", inv, sv["invariant_variables"], source=source, fix="add them to the file"
    )


def _check_grid(ds, sv: Mapping[str, Any], source: str, tile: int | None) -> None:
    h, w = int(ds.sizes["y"]), int(ds.sizes["x"])
    # a whole-field tile must suit the UNet's levels; tiles of a larger field only the factor
    mult, why = (
        (int(sv["factor"]), "the downscaling factor")
        if tile
        else (int(sv["grid_multiple_of"]), "the downscaling factor and the UNet's levels")
    )
    if h % mult or w % mult:
        raise Incompatible(
            f"{source}: grid {h}x{w} is not a multiple of {mult} ({why}); crop or pad the "
            "fine grid to a multiple of it"
        )
    if tile and min(h, w) < int(tile):
        raise Incompatible(
            f"{source}: grid {h}x{w} is smaller than the model's tile {tile}; give a larger "
            "domain, or retrain with a smaller sampling.tile"
        )
    g = sv["grid"]
    lat, lon = ds["lat"].values, ds["lon"].values
    for what, vals, (lo, hi) in (("latitude", lat, g["lat"]), ("longitude", lon, g["lon"])):
        mid = float(np.mean(vals))
        warn_outside(f"mean {what}", mid, lo, hi, source=source, tolerance=TOLERANCE)


def _check_ranges(ds, ranges: Mapping[str, Any], source: str) -> None:
    mine = variable_ranges(ds)
    for group in ("input", "invariant"):
        for name, r in mine.get(group, {}).items():
            t = ranges.get(group, {}).get(name)
            if not t:
                continue
            what = f"{group} {name!r}"
            if group == "input":  # an invariant's mean is one number: its range is the check
                lo, hi = t["case_mean_min"], t["case_mean_max"]
                warn_outside(
                    f"mean of {what}", r["mean"], lo, hi, source=source, tolerance=TOLERANCE
                )
            warn_outside(
                f"maximum of {what}",
                r["max"],
                t["min"],
                t["max"],
                source=source,
                tolerance=TOLERANCE,
            )


def check_card(card: Mapping[str, Any], *, source: str) -> None:
    """Refuse a card without the precipitation entries :func:`check_dataset` needs."""
    sv = card.get("serves") or {}
    if "factor" not in sv or "stats" not in (card.get("normalisation") or {}):
        raise Incompatible(
            f"{source}: the model card records no precipitation grid, variables or statistics "
            "(made before precipitation model cards); retrain the model with `diffsci train`"
        )


def check_dataset(ds, card: Mapping[str, Any], *, source: str, tile: int | None = None) -> None:
    """Refuse a CorrDiff dataset the carded model cannot serve; warn where it extrapolates.

    ``tile``: the tile inference will use (default the card's: the whole field when none).

    Raises
    ------
    Incompatible
        Another downscaling factor, other input variables / units / invariants, a grid that
        is not a multiple of what the network needs, or smaller than the tile.

    Warns
    -----
    UserWarning
        The file's mean or maximum of an input lies outside the training range (by how many
        times the range's width), or its domain outside the training domain.
    """
    check_card(card, source=source)
    sv = card["serves"]
    _check_schema(ds, sv, source)
    _check_grid(ds, sv, source, tile or sv.get("tile"))
    _check_ranges(ds, (card.get("normalisation") or {}).get("ranges", {}), source)
