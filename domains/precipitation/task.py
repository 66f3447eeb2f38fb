"""The precipitation downscaling task: x8 super-resolution ensembles with a residual diffusion
model (CorrDiff-style) and WassDiff's sliced-Wasserstein regulariser.

- prepare: synthetic cases in CorrDiff's schema (:mod:`.simulate`), or the user's files
  (``source.kind: files``: netCDF-3/4, GRIB, zarr, in CorrDiff's schema or plain gridded
  variables named in the ``variables`` block; :func:`.io.read_user_dataset`): ``train.nc``
  (netCDF), ``validation.nc`` (``data.n_val`` simulated cases, or the user's validation
  files), held-out ``test.zarr`` (zarr, chunked),
  ``stats.json`` (model-space statistics of the training set).
- model card (:mod:`.card`): factor, variables, invariants, units, grid, tile, normalisation
  statistics and per-variable training ranges; infer and apply refuse data the model cannot
  serve and warn about inputs outside the training ranges.
- apply: ensembles of the user's new files, written beside them in their format
  (``<name>_downscaled.nc`` or ``.zarr``, CF attributes as infer's predictions).
- train: the core's loop on :class:`.models.DownscalingModel` (regression UNet + residual
  denoiser trained together) with :func:`.losses.training_loss`.
- infer: ensembles of every held-out case (of the validation cases with
  ``evaluate.split: validation``) (:mod:`.downscale`: tiled, positional noise,
  optional mass constraint), the regression mean, bilinear and bicubic baselines
  (:func:`.baselines.predict`); written as ``predictions.zarr`` and ``predictions.nc``
  (``precip(ensemble, time, y, x)``, CF; :func:`.io.predictions_dataset`).
- evaluate: the table of :func:`.metrics.score_table` (CRPS, MAE/RMSE/bias, CSI and FSS at
  thresholds, pixel EMD, 99.9th-percentile error, PSD high-wavenumber error, adjusted
  spread-skill, mass error), the rank histogram, and :func:`.plots.write_figures`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffsci.core import Card, Config, DomainTask, EvalResult, Files, LossFn, Runtime, TaskPaths
from diffsci.core.datasource import FileSplits, resolve_source

from . import baselines, card, io, losses, metrics, models, simulate
from .operators import block_mean

__all__ = ["PrecipitationTask"]


def _normaliser(cfg: Config, data_dir: Path) -> models.Normaliser:
    return models.Normaliser.from_file(data_dir / "stats.json", cfg["data"]["input_variables"])


def _open(cfg: Config, path: Path):
    """A prepared dataset of the data folder, refused when its ``downscaling_factor`` is not
    the config's ``data.factor`` (a model would train on x4 data as if it were x8)."""
    ds = io.open_dataset(path, required_inputs=cfg["data"]["input_variables"])
    _check_factor(cfg, ds.attrs.get("downscaling_factor"), path)
    return ds


def _check_factor(cfg: Config, found: Any, path: Path) -> None:
    io.check_factor(
        found,
        cfg["data"]["factor"],
        source=str(path),
        served_by="the config's data.factor",
    )


def _eval_path(cfg: Config, data_dir: Path) -> Path:
    """The cases infer and evaluate score: the held-out ``test.zarr``, or ``validation.nc``
    with ``evaluate.split: validation`` (where recipe choices are made)."""
    if cfg.get("evaluate", {}).get("split", "test") == "test":
        return Path(data_dir) / "test.zarr"
    path = Path(data_dir) / "validation.nc"
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: evaluate.split is 'validation' but the data have no validation split "
            "(data.n_val > 0 for simulated data, source.validation for files)"
        )
    return path


def _read_cases(cfg: Config, path: Path):
    ds = _open(cfg, path)
    return ds, *io.case_arrays(ds, cfg["data"]["input_variables"], str(path))


class PrecipitationTask(DomainTask):
    """x8 precipitation downscaling with ensembles (CorrDiff schema, WassDiff regulariser)."""

    name = "precipitation"
    schema_path = Path(__file__).with_name("config.schema.yaml")
    packages = ("xarray", "dask", "zarr", "h5netcdf")

    def prepare(self, cfg: Config, data_dir: Path) -> None:
        files = resolve_source(cfg)
        if files is not None:
            return _prepare_files(cfg, files, Path(data_dir))
        d, data_dir = cfg["data"], Path(data_dir)
        sim = {k: d[k] for k in simulate.PARAMS}
        sim.update(seed=int(cfg["seed"]), factor=d["factor"], slope=d["slope"])
        train, test = simulate.make_split(d["n_train"], d["n_test"], d["size"], **sim)
        io.write_dataset(train, data_dir / "train.nc")
        chunks = {"time": 1, "y": d["size"], "x": d["size"]}
        io.write_dataset(test, data_dir / "test.zarr", chunks=chunks)
        if d.get("n_val", 0) > 0:
            val = simulate.make_validation(d["n_val"], d["size"], **sim)
            io.write_dataset(val, data_dir / "validation.nc")
        io.write_stats(io.compute_stats(train), data_dir / "stats.json")

    def model_card(self, cfg: Config, data_dir: Path) -> dict[str, Any]:
        ds = _open(cfg, Path(data_dir) / "train.nc")
        stats = io.read_stats(Path(data_dir) / "stats.json")
        out = {
            "serves": card.serves(cfg, ds),
            "normalisation": card.normalisation(stats, ds),
            "sigma": card.sigma(cfg),
        }
        ds.close()
        return out

    def check_inputs(self, cfg: Config, card_: dict[str, Any], data_dir: Path) -> None:
        path = Path(data_dir) / "test.zarr"
        ds = io.open_dataset(path, required_inputs=cfg["data"]["input_variables"])
        card.check_dataset(ds, card_, source=str(path))
        ds.close()

    def apply(
        self, cfg: Config, model: nn.Module, card: Card, inputs: Files, out_dir: Path, rt: Runtime
    ) -> None:
        _apply(cfg, model, card, inputs, Path(out_dir), rt)

    def build_model(self, cfg: Config) -> nn.Module:
        n_cond = len(cfg["data"]["input_variables"]) + len(io.INVARIANT_VARIABLES)
        return models.build_model(cfg, n_cond)

    def train_dataset(self, cfg: Config, data_dir: Path) -> torch.utils.data.Dataset:
        ds, inputs, inv = _read_cases(cfg, Path(data_dir) / "train.nc")
        norm = _normaliser(cfg, Path(data_dir))
        cond = norm.encode_condition(torch.from_numpy(inputs), torch.from_numpy(inv))
        target = norm.encode_target(torch.from_numpy(io.target_array(ds)))
        ds.close()
        return torch.utils.data.TensorDataset(target, cond)

    def make_loss(self, cfg: Config, data_dir: Path) -> LossFn:
        clamp = cfg["loss"].get("sw_clamp_dry", False)
        dry = _normaliser(cfg, Path(data_dir)).dry_level if clamp else None
        return losses.training_loss(cfg["loss"], dry_level=dry)

    def infer(
        self, cfg: Config, model: nn.Module, data_dir: Path, out_dir: Path, rt: Runtime
    ) -> None:
        device, progress = rt.device, rt.progress
        from .downscale import downscale_arrays

        path = _eval_path(cfg, Path(data_dir))
        ds, inputs, inv = _read_cases(cfg, path)
        norm = _normaliser(cfg, Path(data_dir))
        factor = int(ds.attrs["downscaling_factor"])
        model = model.to(device).eval()
        t0 = time.perf_counter()
        ens = downscale_arrays(
            model,
            norm,
            inputs,
            inv,
            factor=factor,
            source=str(path),
            device=device,
            progress=progress,
            seed=int(cfg["seed"]),
            **cfg["sampling"],
        )
        seconds = {"diffusion": (time.perf_counter() - t0) / len(inputs)}
        base, sec = baselines.predict(model, norm, inputs, inv, factor=factor)
        out = io.predictions_dataset(ds, ens, base, {**seconds, **sec}, cfg["sampling"])
        io.write_dataset(
            out, Path(out_dir) / "predictions.zarr", chunks={"time": 1, "ensemble": -1}
        )
        io.write_dataset(out, Path(out_dir) / "predictions.nc")
        ds.close()

    def evaluate(self, cfg: Config, paths: TaskPaths, fig_dir: Path) -> EvalResult:
        from . import plots  # matplotlib only where figures are made

        cases = _eval_path(cfg, paths.data)
        truth, tp_in, factor = io.read_truth(cases)
        _check_factor(cfg, factor, cases)
        ens, base, seconds = io.read_predictions(paths.predictions / "predictions.zarr")
        e = cfg["evaluate"]
        rows = metrics.score_table(
            ens,
            base,
            truth,
            block_mean(tp_in, factor),
            factor=factor,
            thresholds=e["thresholds"],
            fss_scales=e["fss_scales"],
            seconds=seconds,
        )
        hist = metrics.rank_histogram(ens, truth, seed=int(cfg["seed"]))
        summary = metrics.summary(
            rows,
            truth,
            ens,
            hist,
            factor=factor,
            sw_weight=cfg["loss"]["sw_weight"],
            mass_consistency=cfg["sampling"]["mass_consistency"],
        )
        fields = plots.example_fields(truth, tp_in, ens, base)
        psd = metrics.psd_curves(truth, ens, base)
        figs = plots.write_figures(
            fig_dir, psd=psd, rank_histogram=hist, fields=fields, factor=factor
        )
        return EvalResult(
            tables={metrics.table_title(factor): rows},
            lower_is_better=list(metrics.LOWER_IS_BETTER),
            figures=[str(Path("figures") / Path(f).name) for f in figs],
            summary=summary,
        )


def _read_split(cfg: Config, paths: Sequence[Path], *, require_output: bool = True):
    read = [
        io.read_user_dataset(
            p,
            input_variables=cfg["data"]["input_variables"],
            factor=cfg["data"]["factor"],
            variables=cfg["variables"],
            require_output=require_output,
        )
        for p in paths
    ]
    return io.merge_cases(read, [str(p) for p in paths])


def _prepare_files(cfg: Config, files: FileSplits, data_dir: Path) -> None:
    """The user's train / validation / test files in the pipeline's layout (as simulate's)."""
    train = _read_split(cfg, files.train)
    io.write_dataset(train, data_dir / "train.nc")
    if files.validation:
        io.write_dataset(_read_split(cfg, files.validation), data_dir / "validation.nc")
    test = _read_split(cfg, files.test)
    chunks = {"time": 1, "y": test.sizes["y"], "x": test.sizes["x"]}
    io.write_dataset(test, data_dir / "test.zarr", chunks=chunks)
    io.write_stats(io.compute_stats(train), data_dir / "stats.json")


def _apply(
    cfg: Config, model: nn.Module, card_: dict[str, Any], inputs: Sequence[Path], out: Path, rt
) -> None:
    """Ensembles of each input file, checked against the card, written in the file's format."""
    from .downscale import downscale_arrays

    sv = card_.get("serves") or {}
    card.check_card(card_, source="the model card")
    norm = models.Normaliser(
        card_["normalisation"]["stats"], sv["input_variables"], sv["invariant_variables"]
    )
    names = io.output_names(inputs)
    model = model.to(rt.device).eval()
    for path, name in zip(inputs, names, strict=True):
        ds = io.read_user_dataset(
            path,
            input_variables=sv["input_variables"],
            factor=sv["factor"],
            variables=cfg["variables"],
            require_output=False,
            served_by="the model's factor (its card)",
        )
        card.check_dataset(ds, card_, source=str(path))
        inputs_, inv = io.case_arrays(ds, sv["input_variables"], str(path))
        ens = downscale_arrays(
            model,
            norm,
            inputs_,
            inv,
            factor=sv["factor"],
            source=str(path),
            device=rt.device,
            progress=rt.progress,
            seed=int(cfg["seed"]),
            **cfg["sampling"],
        )
        pred = io.predictions_dataset(ds, ens, {}, {}, cfg["sampling"])
        pred.attrs["source"] = f"diffsci precipitation downscaling of {Path(path).name}"
        io.write_dataset(pred, out / name)
