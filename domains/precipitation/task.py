"""The precipitation downscaling task: x8 super-resolution ensembles with a residual diffusion
model (CorrDiff-style) and WassDiff's sliced-Wasserstein regulariser.

- prepare: synthetic cases in CorrDiff's schema (:mod:`.synthetic`): ``train.nc`` (netCDF),
  held-out ``test.zarr`` (zarr, chunked), ``stats.json`` (model-space statistics of the
  training set).
- train: the core's loop on :class:`.models.DownscalingModel` (regression UNet + residual
  denoiser trained together) with :func:`.losses.downscaling_loss`.
- infer: ensembles of every held-out case (:mod:`.downscale`: tiled, positional noise,
  optional mass constraint), the regression mean, bilinear and bicubic baselines; written
  as ``predictions.zarr`` and ``predictions.nc`` (``precip(ensemble, time, y, x)``, CF).
- evaluate: CRPS, MAE/RMSE/bias, CSI and FSS at thresholds, pixel EMD, 99.9th-percentile
  error, PSD high-wavenumber error (dex), adjusted spread-skill, rank histogram; figures.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import baselines, io
from .losses import downscaling_loss
from .models import build_model
from .synthetic import make_dataset
from .transforms import Normaliser

__all__ = ["PrecipitationTask"]

SCHEMA = Path(__file__).with_name("config.schema.yaml")
INVARIANTS = ("orography",)


def _synthetic_params(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: d[k] for k in ("wet_fraction", "shape_s", "scale", "orographic_gain",
                              "max_elevation")}  # fmt: skip


def _normaliser(cfg: Mapping[str, Any], data_dir: Path) -> Normaliser:
    names = {"input": cfg["data"]["input_variables"], "output": ["tp"],
             "invariant": list(INVARIANTS)}  # fmt: skip
    stats = io.read_stats(Path(data_dir) / "stats.json", names=names)
    return Normaliser(stats, cfg["data"]["input_variables"], list(INVARIANTS))


def _arrays(ds, cfg: Mapping[str, Any], source: str) -> tuple[np.ndarray, np.ndarray | None]:
    names = [str(v) for v in ds["input_variable"].values]
    want = list(cfg["data"]["input_variables"])
    if names != want:
        raise ValueError(f"{source}: input_variable {names} != config data.input_variables {want}")
    if "invariant" not in ds.variables:
        raise KeyError(f"{source}: missing variable 'invariant' (needs {list(INVARIANTS)})")
    inv_names = [str(v) for v in ds["invariant_variable"].values]
    if inv_names != list(INVARIANTS):
        raise ValueError(f"{source}: invariant_variable {inv_names} != {list(INVARIANTS)}")
    return ds["input"].values.astype(np.float32), ds["invariant"].values.astype(np.float32)


class PrecipitationTask:
    """x8 precipitation downscaling with ensembles (CorrDiff schema, WassDiff regulariser)."""

    name = "precipitation"
    schema_path = SCHEMA

    def __init__(self) -> None:
        self._loss_cfg: dict[str, Any] = {}
        self._dry_level: float | None = None

    # ---------------------------------------------------------------- prepare
    def prepare(self, cfg: Mapping[str, Any], data_dir: Path) -> None:
        d, seed = cfg["data"], int(cfg["seed"])
        common = dict(factor=d["factor"], slope=d["slope"], oro_seed=seed,
                      **_synthetic_params(d))  # fmt: skip
        train = make_dataset(d["n_train"], d["size"], seed=seed, **common)
        test = make_dataset(d["n_test"], d["size"], seed=seed + 10_000, **common)
        io.write_dataset(train, Path(data_dir) / "train.nc")
        io.write_dataset(test, Path(data_dir) / "test.zarr",
                         chunks={"time": 1, "y": d["size"], "x": d["size"]})  # fmt: skip
        io.write_stats(io.compute_stats(train), Path(data_dir) / "stats.json")

    # ---------------------------------------------------------------- model / training
    def build_model(self, cfg: Mapping[str, Any]) -> nn.Module:
        # the core calls loss(model, batch, rng) without the config: keep its loss options
        self._loss_cfg = dict(cfg["loss"])
        return build_model(cfg, len(cfg["data"]["input_variables"]) + len(INVARIANTS))

    def train_dataset(self, cfg: Mapping[str, Any], data_dir: Path) -> torch.utils.data.Dataset:
        path = Path(data_dir) / "train.nc"
        ds = io.open_dataset(path, required_inputs=cfg["data"]["input_variables"])
        inputs, inv = _arrays(ds, cfg, str(path))
        norm = _normaliser(cfg, data_dir)
        cond = norm.encode_condition(torch.from_numpy(inputs), torch.from_numpy(inv))
        target = norm.encode_target(torch.from_numpy(ds["output"].values[:, :1].astype(np.float32)))
        ds.close()
        # model-space value of 0 mm/h: the regulariser's floor with loss.sw_clamp_dry
        self._dry_level = float(norm.encode_target(torch.zeros(1)))
        return torch.utils.data.TensorDataset(target, cond)

    def loss(self, model: nn.Module, batch: Any, rng) -> dict[str, Tensor]:
        target, cond = batch
        opts = dict(self._loss_cfg)
        if opts.pop("sw_clamp_dry", False):
            if self._dry_level is None:
                raise RuntimeError(
                    "loss.sw_clamp_dry needs the dry level: call train_dataset first"
                )
            opts["sw_floor"] = self._dry_level
        # random flips/transposes would break the fixed orography-rain link: none here
        return downscaling_loss(model, target, cond, rng, **opts)

    # ---------------------------------------------------------------- inference
    def infer(self, cfg: Mapping[str, Any], model: nn.Module, data_dir: Path, out_dir: Path, *,
              device: torch.device, progress: bool) -> None:  # fmt: skip
        from .downscale import downscale_arrays

        path = Path(data_dir) / "test.zarr"
        ds = io.open_dataset(path, required_inputs=cfg["data"]["input_variables"])
        inputs, inv = _arrays(ds, cfg, str(path))
        norm = _normaliser(cfg, data_dir)
        s, factor = cfg["sampling"], int(ds.attrs["downscaling_factor"])
        model = model.to(device).eval()
        t0 = time.perf_counter()
        ens = downscale_arrays(model, norm, inputs, inv, factor=factor, source=str(path),
                               device=device, progress=progress, members=s["members"],
                               steps=s["steps"], sampler=s["sampler"],
                               sigma_min=s["sigma_min"], sigma_max=s["sigma_max"],
                               tile=s["tile"], overlap=s["overlap"], batch=s["batch"],
                               mass_consistency=s["mass_consistency"], seed=int(cfg["seed"]))  # fmt: skip
        sec = {"diffusion": (time.perf_counter() - t0) / len(inputs)}
        tp = inputs[:, cfg["data"]["input_variables"].index("tp")]
        coarse = baselines.coarse_precipitation(tp, factor)
        base: dict[str, np.ndarray] = {}
        for mode in ("bilinear", "bicubic"):
            t0 = time.perf_counter()
            base[mode] = baselines.interpolate(coarse, factor, mode=mode)
            sec[mode] = (time.perf_counter() - t0) / len(inputs)
        if model.regression is not None:
            t0 = time.perf_counter()
            base["regression"] = baselines.regression_mean(model.cpu(), norm, inputs, inv)
            sec["regression"] = (time.perf_counter() - t0) / len(inputs)
        out = self.predictions_dataset(ds, ens, base, sec, cfg)
        io.write_dataset(out, Path(out_dir) / "predictions.zarr",
                         chunks={"time": 1, "ensemble": -1})  # fmt: skip
        io.write_dataset(out, Path(out_dir) / "predictions.nc")
        ds.close()

    @staticmethod
    def predictions_dataset(ds, ens: np.ndarray, base: Mapping[str, np.ndarray],
                            seconds: Mapping[str, float], cfg: Mapping[str, Any]):  # fmt: skip
        """The predictions as a CF-annotated Dataset (members first, then time, y, x)."""
        import json

        import xarray as xr

        attrs = {"standard_name": "lwe_precipitation_rate", "units": io.PRECIP_UNITS}
        dims = ("time", "y", "x")
        data = {
            "precip": (("ensemble", *dims), ens,
                       {**attrs, "long_name": "diffusion downscaling ensemble"}),
            "ensemble_mean": (dims, ens.mean(0),
                              {**attrs, "long_name": "diffusion ensemble mean"}),
        }  # fmt: skip
        for k, v in base.items():
            data[k] = (dims, v.astype(np.float32), {**attrs, "long_name": f"{k} baseline"})
        s = cfg["sampling"]
        return xr.Dataset(
            data,
            coords={"ensemble": ("ensemble", np.arange(ens.shape[0]),
                                 {"standard_name": "realization"}),
                    "time": ds["time"].values, "lat": ds["lat"].values if ds["lat"].ndim == 1
                    else ds["lat"], "lon": ds["lon"].values},
            attrs={"Conventions": "CF-1.8", "downscaling_factor": ds.attrs["downscaling_factor"],
                   "sampler": f"{s['sampler']}, {s['steps']} steps",
                   "mass_consistent": int(bool(s["mass_consistency"])),
                   "seconds_per_case": json.dumps(seconds)},
        ).assign_coords(lat=("y", ds["lat"].values), lon=("x", ds["lon"].values))  # fmt: skip

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, cfg: Mapping[str, Any], data_dir: Path, pred_dir: Path,
                 fig_dir: Path) -> dict[str, Any]:  # fmt: skip
        import json

        import matplotlib.pyplot as plt
        import xarray as xr

        from . import metrics, plots
        from .synthetic import block_mean

        test = io.open_dataset(Path(data_dir) / "test.zarr")
        truth = test["output"].values[:, 0].astype(np.float32)
        tp_in = test["input"].sel(input_variable="tp").values.astype(np.float32)
        factor = int(test.attrs["downscaling_factor"])
        ppath = Path(pred_dir) / "predictions.zarr"
        if not ppath.exists():
            raise FileNotFoundError(f"{ppath}: no predictions (run the infer stage)")
        pred = xr.open_zarr(ppath)
        ens = pred["precip"].values
        seconds = json.loads(pred.attrs.get("seconds_per_case", "{}"))
        e = cfg["evaluate"]
        kw = dict(factor=factor, thresholds=e["thresholds"], fss_scales=e["fss_scales"])
        rows: dict[str, dict[str, Any]] = {}
        label = f"diffusion ensemble ({ens.shape[0]} members)"
        rows[label] = metrics.evaluate_fields(ens, truth, ensemble=True, **kw)
        rows[label]["seconds per case"] = seconds.get("diffusion", float("nan"))
        methods = {"regression": "regression UNet", "bicubic": "bicubic", "bilinear": "bilinear"}
        for var, name in methods.items():
            if var in pred.variables:
                rows[name] = metrics.evaluate_fields(pred[var].values, truth, ensemble=False, **kw)
                rows[name]["seconds per case"] = seconds.get(var, float("nan"))
        coarse = block_mean(tp_in, factor)
        for name, var in ((label, "ensemble_mean"), *((n, v) for v, n in methods.items())):
            if name in rows:
                f = pred[var].values if var != "ensemble_mean" else ens
                rows[name]["mass error (max |block mean - coarse|)"] = float(
                    np.abs(block_mean(f, factor) - coarse).max())  # fmt: skip
        hist = metrics.rank_histogram(ens, truth, seed=int(cfg["seed"]))
        bic = rows["bicubic"]["MAE"]
        summary = {
            "held-out cases": int(truth.shape[0]),
            "grid": f"{truth.shape[1]}x{truth.shape[2]} fine, x{factor} coarse",
            "members": int(ens.shape[0]),
            "CRPS / bicubic MAE": rows[label]["CRPS"] / bic if bic > 0 else float("nan"),
            "SW regulariser weight": cfg["loss"]["sw_weight"],
            "mass consistency": bool(cfg["sampling"]["mass_consistency"]),
            "rank histogram": [int(v) for v in hist],
        }
        figs = []
        fig, ax = plt.subplots(figsize=(5, 3.6))
        curves = {"truth": metrics.radial_psd(truth), "diffusion members": metrics.radial_psd(ens)}
        for var in ("regression", "bicubic", "bilinear"):
            if var in pred.variables:
                curves[var] = metrics.radial_psd(pred[var].values)
        plots.plot_psd(ax, curves, coarse_k=1 / (2 * factor))
        ax.set_title("radially averaged PSD (held-out cases)", fontsize=9)
        figs.append(plots.save(fig, Path(fig_dir) / "psd.png"))
        fig, ax = plt.subplots(figsize=(5, 3.2))
        plots.plot_rank_histogram(ax, hist)
        figs.append(plots.save(fig, Path(fig_dir) / "rank_histogram.png"))
        i = int(np.argmax(truth.reshape(len(truth), -1).max(1)))
        fields = {"coarse input": tp_in[i], "truth": truth[i], "member 1": ens[0, i],
                  "member 2": ens[min(1, len(ens) - 1), i], "ensemble mean": ens[:, i].mean(0)}  # fmt: skip
        for var in ("regression", "bicubic"):
            if var in pred.variables:
                fields[var] = pred[var].values[i]
        fig, axes = plt.subplots(1, len(fields), figsize=(2.1 * len(fields), 2.4))
        plots.plot_fields(axes, fields, vmax=float(truth[i].max()))
        figs.append(plots.save(fig, Path(fig_dir) / "example_fields.png"))
        test.close()
        pred.close()
        lower = ["CRPS", "MAE", "RMSE", "EMD", "p99.9 error", "PSD high-k max |dex|",
                 "seconds per case", "mass error (max |block mean - coarse|)"]  # fmt: skip
        return {
            "tables": {f"x{factor} downscaling, held-out synthetic cases (mm/h)": rows},
            "lower_is_better": lower,
            "figures": [str(Path("figures") / Path(f).name) for f in figs],
            "summary": summary,
        }
