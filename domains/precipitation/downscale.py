"""Ensemble downscaling of CorrDiff-style datasets, in memory or store to store, tiled.

Every field goes through :func:`diffsci.core.tiling.tiled_map`: tiles of the model's size
with overlap blending, each member's initial noise drawn by position
(:func:`~diffsci.core.tiling.positional_noise`) so overlapping tiles start from the same noise,
and a deterministic sampler so each member is a function of that noise only. A field no
larger than one tile is a single tile. The optional mass constraint rescales every coarse
cell of every member so that its block mean equals the coarse input precipitation.

Command line (store to store, chunk by chunk; the model and its config come from a
``model.pt`` the train stage wrote)::

    python -m diffsci.domains.precipitation.downscale --model results/precipitation/model.pt \\
        --stats results/precipitation/data/stats.json --input big.zarr --output big_out.zarr
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffsci.core.modelfile import load_model_file
from diffsci.core.tiling import positional_noise, tiled_map

from .models import DownscalingModel, Normaliser, sample_ensemble
from .operators import block_mean, upsample_nearest

__all__ = [
    "enforce_mass",
    "DownscaleOptions",
    "downscale_arrays",
    "downscale_store",
    "load_trained",
    "check_output_name",
    "main",
]


def enforce_mass(fine: np.ndarray, coarse: np.ndarray, factor: int) -> np.ndarray:
    """Rescale ``fine (..., H, W)`` so its ``factor``-block means equal ``coarse (..., h, w)``.

    Multiplicative within each block (keeps non-negativity and the spatial pattern); a block
    the model left dry but the input says is wet gets the coarse value uniformly.
    """
    bm = block_mean(fine, factor)
    coarse = np.broadcast_to(coarse, bm.shape)
    ratio = np.where(bm > 0, coarse / np.where(bm > 0, bm, 1), 0.0)
    out = fine * upsample_nearest(ratio, factor)
    fill = (bm <= 0) & (coarse > 0)
    if fill.any():
        out = np.where(upsample_nearest(fill, factor), upsample_nearest(coarse, factor), out)
    return out.astype(np.float32)


class DownscaleOptions(dict):
    """Sampling options (a plain dict): ``members, steps, sampler, sigma_min, sigma_max,
    schedule, tile, overlap, batch, mass_consistency, seed``."""

    DEFAULTS: Mapping[str, Any] = {
        "members": 13,
        "steps": 18,
        "sampler": "heun",
        "sigma_min": 0.002,
        "sigma_max": 80.0,
        "schedule": "karras",
        "tile": None,
        "overlap": 16,
        "batch": 4,
        "mass_consistency": False,
        "seed": 0,
    }

    def __init__(self, **kw: Any) -> None:
        unknown = set(kw) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"unknown downscaling options {sorted(unknown)}")
        super().__init__({**self.DEFAULTS, **kw})


def _tile_fn(
    model: DownscalingModel,
    norm: Normaliser,
    n_in: int,
    opt: Mapping[str, Any],
    noise_key: int,
    device: torch.device,
    source: str,
):
    from .io import check_block

    tp_idx = norm.input_variables.index("tp")
    m = int(opt["members"])

    def fn(x: np.ndarray, origins: Sequence[tuple[int, int]]) -> np.ndarray:
        check_block(x[:, :n_in], name="input", source=source, precip=False)
        check_block(x[:, tp_idx], name="input 'tp'", source=source, precip=True)
        if x.shape[1] > n_in:  # NaN orography would make NaN rain in a complete-looking store
            check_block(x[:, n_in:], name="invariant", source=source, precip=False)
        xt = torch.from_numpy(x)
        cond = norm.encode_condition(xt[:, :n_in], xt[:, n_in:] if xt.shape[1] > n_in else None)
        th, tw = x.shape[-2:]
        noise = np.stack(
            [
                positional_noise((m, 1), slice(r, r + th), slice(c, c + tw), seed=noise_key)
                for r, c in origins
            ],
            axis=1,
        )
        ens, _ = sample_ensemble(
            model,
            cond.to(device),
            members=m,
            steps=int(opt["steps"]),
            sampler=opt["sampler"],
            sigma_min=opt["sigma_min"],
            sigma_max=opt["sigma_max"],
            schedule=opt["schedule"],
            noise=torch.from_numpy(noise),
        )
        phys = norm.decode_target(ens[:, :, 0]).cpu().numpy()  # (M, n, th, tw)
        return np.moveaxis(phys, 1, 0)

    return fn


def _mass_post(norm: Normaliser, factor: int):
    tp_idx = norm.input_variables.index("tp")

    def post(values: np.ndarray, where, src: np.ndarray) -> np.ndarray:
        return enforce_mass(values, block_mean(src[tp_idx], factor)[None], factor)

    return post


def check_output_name(path: str | Path) -> None:
    """Refuse an output name whose suffix is not the format written (a zarr store)."""
    if Path(path).suffix != ".zarr":
        raise ValueError(
            f"{path}: the store-to-store downscaling writes a zarr store chunk by chunk, "
            "so the output must be named *.zarr (convert it afterwards with "
            "xarray.open_zarr(...).to_netcdf(...), or use `diffsci apply` for netCDF outputs)"
        )


def _check_tiling(h: int, w: int, tile: int, factor: int, block: tuple[int, int]) -> None:
    if block[0] % factor or block[1] % factor:
        raise ValueError(f"output blocks {block} must be multiples of the factor {factor}")
    if tile > min(h, w):
        raise ValueError(f"tile={tile} is larger than the field ({h}x{w})")


@torch.no_grad()
def downscale_arrays(
    model: DownscalingModel,
    norm: Normaliser,
    inputs: np.ndarray,
    invariant: np.ndarray | None,
    *,
    factor: int,
    source: str = "inputs",
    device: torch.device | str = "cpu",
    progress: bool = False,
    **options: Any,
) -> np.ndarray:
    """Ensembles for in-memory cases: ``inputs (N, C, H, W)`` -> ``(M, N, H, W)`` (mm h-1)."""
    opt = DownscaleOptions(**options)
    n, c_in, h, w = inputs.shape
    tile = int(opt["tile"] or min(h, w))
    overlap = int(opt["overlap"]) if tile < max(h, w) else 0
    _check_tiling(h, w, tile, factor, (h, w))
    out = np.zeros((int(opt["members"]), n, h, w), np.float32)
    post = _mass_post(norm, factor) if opt["mass_consistency"] else None
    model = model.eval().to(device)
    for t in range(n):
        src = inputs[t] if invariant is None else np.concatenate([inputs[t], invariant], 0)
        fn = _tile_fn(
            model, norm, c_in, opt, int(opt["seed"]) * 2**32 + t, torch.device(device), source
        )
        view = _TimeView(out, t)
        tiled_map(
            fn,
            src,
            view,
            tile=tile,
            overlap=min(overlap, tile - 1),
            batch=int(opt["batch"]),
            block=(h, w),
            postprocess=post,
            progress=progress,
        )
    return out


class _TimeView:
    """``target[..., rows, cols] = v`` writes ``arr[:, t, rows, cols]`` (members first)."""

    def __init__(self, arr: Any, t: int) -> None:
        self.arr, self.t = arr, t
        self.shape = (arr.shape[0], *arr.shape[2:])
        ch = getattr(arr, "chunks", None)
        self.chunks = (ch[0], *ch[2:]) if ch and isinstance(ch[0], int) else None

    def __setitem__(self, key, value) -> None:
        _, rs, cs = key
        self.arr[:, self.t, rs, cs] = value


def _source(ds, t: int, n_in: int, has_inv: bool):
    inp = ds["input"].data  # dask, lazily chunked

    class _Src:
        shape = (
            n_in + (ds.sizes["invariant_variable"] if has_inv else 0),
            ds.sizes["y"],
            ds.sizes["x"],
        )

        def __getitem__(self, key):
            _, rs, cs = key
            parts = [np.asarray(inp[t, :, rs, cs])]
            if has_inv:
                parts.append(np.asarray(ds["invariant"].data[:, rs, cs]))
            return np.concatenate(parts, 0)

    return _Src()


@torch.no_grad()
def downscale_store(
    model: DownscalingModel,
    norm: Normaliser,
    input_path: str | Path,
    output_path: str | Path,
    *,
    block: int = 512,
    device: str = "cpu",
    progress: bool = True,
    factor: int | None = None,
    **options: Any,
) -> Path:
    """Downscale every time step of a netCDF/zarr dataset into a zarr store, block by block.

    The output ``precip(ensemble, time, y, x)`` (mm h-1, CF attributes) is written chunk by
    chunk (chunks ``(members, 1, block, block)``) into a temporary store renamed into place
    when complete (:func:`.io.atomic_zarr`); a failure (bad values found in some block, an
    interrupt) leaves no store at ``output_path``, which must end in ``.zarr`` (the format
    written). Input values are checked per tile.
    ``factor``: the model's downscaling factor; the dataset's must match it.
    """
    import dask.array as da
    import xarray as xr
    import zarr

    from .io import atomic_zarr, open_dataset

    check_output_name(output_path)
    opt = DownscaleOptions(**options)
    ds = open_dataset(
        input_path,
        chunks={},
        require_output=False,
        values=False,
        required_inputs=norm.input_variables,
    )
    names = [str(v) for v in ds["input_variable"].values]
    if names != norm.input_variables:
        raise ValueError(
            f"{input_path}: input_variable {names} != the model's {norm.input_variables}"
        )
    has_inv = bool(norm.invariant_variables)
    if has_inv and "invariant" not in ds.variables:
        raise KeyError(
            f"{input_path}: missing variable 'invariant' (the model needs "
            f"{norm.invariant_variables})"
        )
    if "downscaling_factor" not in ds.attrs:
        raise KeyError(f"{input_path}: no 'downscaling_factor' attribute")
    if factor is not None and int(ds.attrs["downscaling_factor"]) != int(factor):
        raise ValueError(
            f"{input_path}: downscaling_factor {ds.attrs['downscaling_factor']} "
            f"but the model was trained for x{factor}"
        )
    factor = int(ds.attrs["downscaling_factor"])
    nt, h, w = ds.sizes["time"], ds.sizes["y"], ds.sizes["x"]
    m = int(opt["members"])
    tile = int(opt["tile"] or 64)
    _check_tiling(h, w, tile, factor, (block, block))
    tmpl = xr.Dataset(
        {
            "precip": (
                ("ensemble", "time", "y", "x"),
                da.zeros((m, nt, h, w), chunks=(m, 1, block, block), dtype=np.float32),
                {
                    "standard_name": "lwe_precipitation_rate",
                    "units": "mm h-1",
                    "long_name": "downscaled precipitation ensemble",
                    "mass_consistent": int(bool(opt["mass_consistency"])),
                },
            )
        },
        coords={
            "ensemble": ("ensemble", np.arange(m), {"standard_name": "realization"}),
            "time": ds["time"].values,
            # values and attributes only: the input's encoding (a zarr v3 serializer, netCDF
            # chunking) does not fit the zarr v2 store written here
            "lat": (ds["lat"].dims, ds["lat"].values, ds["lat"].attrs),
            "lon": (ds["lon"].dims, ds["lon"].values, ds["lon"].attrs),
        },
        attrs={
            "Conventions": "CF-1.8",
            "source": f"diffsci precipitation downscaling of {Path(input_path).name}",
            "downscaling_factor": factor,
            "sampler": f"{opt['sampler']}, {opt['steps']} steps",
            "tile": tile,
            "overlap": int(opt["overlap"]),
        },
    )
    post = _mass_post(norm, factor) if opt["mass_consistency"] else None
    model = model.eval().to(device)
    with atomic_zarr(output_path) as tmp:
        tmpl.to_zarr(tmp, compute=False, zarr_format=2, consolidated=False, mode="w")
        arr = zarr.open_array(str(tmp / "precip"), mode="r+")
        for t in range(nt):
            fn = _tile_fn(
                model,
                norm,
                len(names),
                opt,
                int(opt["seed"]) * 2**32 + t,
                torch.device(device),
                str(input_path),
            )
            tiled_map(
                fn,
                _source(ds, t, len(names), has_inv),
                _TimeView(arr, t),
                tile=tile,
                overlap=int(opt["overlap"]),
                block=(block, block),
                batch=int(opt["batch"]),
                postprocess=post,
                progress=progress,
            )
        zarr.consolidate_metadata(str(tmp))
    return Path(output_path)


def load_trained(model_path: str | Path, stats_path: str | Path):
    """``(model, normaliser, cfg)`` from a ``model.pt`` written by the train stage."""
    from .models import build_model

    p = Path(model_path)
    saved = load_model_file(p)  # weights-only: refuses files that could run code
    cfg = saved.provenance.get("config")
    if not cfg:
        raise KeyError(f"{p}: no provenance config (not written by the train stage?)")
    # channel order is the trained config's, never the stats file's key order
    inputs = list(cfg["data"]["input_variables"])
    norm = Normaliser.from_file(stats_path, inputs)
    model = build_model(cfg, norm.cond_channels)
    try:
        model.load_state_dict(saved.state_dict)
    except (KeyError, RuntimeError) as e:
        raise ValueError(f"{p}: weights do not fit the model its config describes ({e})") from e
    return model.eval(), norm, cfg


def _check_against_card(
    model_path: str | Path, input_path: str | Path, *, tile: int | None
) -> None:
    """Refuse or warn about the input store as ``diffsci apply`` does (:func:`.card.
    check_dataset`, one lazy pass for the ranges), when the model has a card."""
    import json

    from diffsci.core.modelcard import card_path

    from . import card
    from .io import open_dataset

    path = card_path(model_path)
    if not path.is_file():
        return
    card_ = json.loads(path.read_text())
    card.check_card(card_, source=str(model_path))
    names = card_["serves"]["input_variables"]
    ds = open_dataset(
        input_path, chunks={}, require_output=False, values=False, required_inputs=names
    )
    card.check_dataset(ds, card_, source=str(input_path), tile=tile or 64)
    ds.close()


def _training_side(model_path: str | Path, cfg: Mapping[str, Any]) -> int | None:
    """The side of the fields the model was trained on: the simulated ``data.size``, or the
    smaller side of the grid its model card records (``None``: the default tile)."""
    import json

    from diffsci.core.modelcard import card_path

    if cfg["data"].get("size"):
        return int(cfg["data"]["size"])
    path = card_path(model_path)
    grid = json.loads(path.read_text()).get("serves", {}).get("grid") if path.is_file() else None
    return min(int(grid["height"]), int(grid["width"])) if grid else None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--stats", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--members", type=int, default=13)
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--sampler", default="heun")
    p.add_argument("--tile", type=int, default=None, help="default: the training size")
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mass-consistency", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        check_output_name(a.output)
        model, norm, cfg = load_trained(a.model, a.stats)
        tile = a.tile or _training_side(a.model, cfg)
        _check_against_card(a.model, a.input, tile=tile)
        downscale_store(
            model,
            norm,
            a.input,
            a.output,
            block=a.block,
            members=a.members,
            steps=a.steps,
            sampler=a.sampler,
            tile=tile,
            overlap=a.overlap,
            batch=a.batch,
            seed=a.seed,
            mass_consistency=a.mass_consistency,
            progress=not a.no_progress,
            factor=int(cfg["data"]["factor"]),
        )
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
