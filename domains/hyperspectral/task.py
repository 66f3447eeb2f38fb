"""The hyperspectral restoration task (glue): any band count, QRNN3D noise protocol.

- prepare: synthetic scenes (:mod:`.simulate`) or the user's clean cubes (``source.kind:
  files``; ENVI, ``.mat``, netCDF, zarr via :func:`.io.read_cube` with the ``files`` block),
  written one cube per netCDF file: ``data/train/*.nc`` (``clean``) and ``data/test/*.nc``
  (``clean`` and, per case of ``noise.cases``, ``noisy_<case>``, ``sigma_<case>`` (per band)
  and ``stripe_<case>`` (striped bands)).
- train: the core's loop on the subspace prior (:mod:`.models`) over unit-RMS coefficient
  images cut into ``data.patch`` patches.
- infer: every held-out cube and case restored by :func:`.models.restore` (posterior through
  ``diffsci.core.posterior.reconstruct``), the classical baselines (:mod:`.baselines`) and the
  subspace least-squares fit without the prior (ablation); ``predictions/<cube>_<case>.nc``.
- evaluate: one table per case of :func:`.metrics.score` averaged over cubes (plus the noisy
  input and seconds per cube), per-band PSNR curves and false-colour panels.
- model card: the subspace dimension, band counts and wavelength range trained on; the model
  serves any band count ``> components`` (the prior never sees the band axis) and warns
  about wavelengths outside the training range. ``apply`` restores the user's noisy cubes
  (noise levels estimated) and writes ``<name>_restored.nc`` (and ENVI for ENVI inputs).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from diffsci.core import Card, Config, DomainTask, EvalResult, Files, LossFn, Runtime, TaskPaths
from diffsci.core.datasource import resolve_source
from diffsci.core.fileio import atomic_path
from diffsci.core.modelcard import Incompatible, warn_outside

from . import baselines, io, metrics, models, selfsup, simulate

__all__ = ["HyperspectralTask"]

ABLATION = "subspace fit, no prior"
OURS = "diffusion (subspace prior)"
SELF_SUPERVISED = "self-supervised (DDS2M-like, no training data)"


def _wavelengths(cfg: Config) -> np.ndarray:
    d = cfg["data"]
    return np.linspace(d["wavelength_min"], d["wavelength_max"], d["bands"])


def _read_user(cfg: Config, path: Path) -> xr.DataArray:
    f = cfg["files"]
    cube = io.read_cube(
        path,
        variable=f["variable"],
        wavelength=f["wavelength"],
        bands=f["bands"],
        bad_bands=f["bad_bands"],
        band_axis=f["band_axis"],
        wavelength_variable=f["wavelength_variable"],
    )
    return cube / f["scale"] if f["scale"] != 1.0 else cube


def _write_cube_file(
    path: Path, clean: np.ndarray, wl: np.ndarray, extra: dict[str, Any] | None = None
) -> None:
    ds = xr.Dataset(
        {"clean": (("band", "y", "x"), clean.astype(np.float32))},
        coords={"wavelength": ("band", np.asarray(wl, np.float64))},
    )
    ds["wavelength"].attrs["units"] = "nm"
    for k, (dims, v) in (extra or {}).items():
        ds[k] = (dims, v)
    with atomic_path(path, suffix=".nc") as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")


def _test_entries(cfg: Config, clean: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for case in cfg["noise"]["cases"]:
        y, c = simulate.add_noise(clean, case, rng)
        stripe = np.zeros(clean.shape[0], np.uint8)
        stripe[c.stripe_bands] = 1
        out[f"noisy_{case}"] = (("band", "y", "x"), y)
        out[f"sigma_{case}"] = (("band",), c.sigma)
        out[f"stripe_{case}"] = (("band",), stripe)
    return out


def _open(path: Path) -> xr.Dataset:
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


class HyperspectralTask(DomainTask):
    """Hyperspectral denoising and completion with a spectral-subspace diffusion prior."""

    name = "hyperspectral"
    schema_path = Path(__file__).with_name("config.schema.yaml")
    packages = ("spectral", "xarray", "dask", "h5netcdf", "zarr")
    training_config_keys = ("seed", "data", "model", "loss", "source", "files")

    # ------------------------------------------------------------------ prepare
    def prepare(self, cfg: Config, data_dir: Path) -> None:
        _optional_baselines(cfg)  # a missing optional package is refused before any work
        data_dir, seed = Path(data_dir), int(cfg["seed"])
        files = resolve_source(cfg)
        rng = np.random.default_rng(seed + 7)
        if files is None:
            d, wl = cfg["data"], _wavelengths(cfg)
            kw = {"variability": d["variability"], "illumination": d["illumination"]}
            train = simulate.make_scenes(d["n_train"], d["size"], wl, seed=seed, **kw)
            test = simulate.make_scenes(d["n_test"], d["size"], wl, seed=seed + 10_000, **kw)
            train_wl = test_wl = [wl] * max(len(train), len(test))
        else:
            train, train_wl = self._read_split(cfg, files.train)
            test, test_wl = self._read_split(cfg, files.test)
            if files.validation:  # read and checked; the prior's training has no validation pass
                self._read_split(cfg, files.validation)
        for i, (x, wl) in enumerate(zip(train, train_wl, strict=False)):
            _write_cube_file(data_dir / "train" / f"cube_{i:03d}.nc", x, wl)
        for i, (x, wl) in enumerate(zip(test, test_wl, strict=False)):
            _write_cube_file(
                data_dir / "test" / f"cube_{i:03d}.nc", x, wl, _test_entries(cfg, x, rng)
            )

    @staticmethod
    def _read_split(
        cfg: Config, paths: Sequence[Path]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        cubes, wls = [], []
        for p in paths:
            c = _read_user(cfg, p)
            if not bool(c["good_band"].all()):
                c = c.isel(band=np.flatnonzero(c["good_band"].values))
            arr = np.asarray(c.values, dtype=np.float32)
            if not np.isfinite(arr).all():
                raise io.CubeError(
                    f"{p}: the clean cube has NaN pixels; training and evaluation need complete "
                    "cubes (apply handles NaN pixels as dead pixels)"
                )
            cubes.append(arr)
            wls.append(c["wavelength"].values)
        return cubes, wls

    # ------------------------------------------------------------------ card
    def model_card(self, cfg: Config, data_dir: Path) -> dict[str, Any]:
        bands, lo, hi, sizes = [], np.inf, -np.inf, []
        for p in sorted((Path(data_dir) / "train").glob("*.nc")):
            ds = _open(p)
            wl = ds["wavelength"].values
            bands.append(int(wl.size))
            lo, hi = min(lo, float(wl.min())), max(hi, float(wl.max()))
            sizes.append([int(ds.sizes["y"]), int(ds.sizes["x"])])
        k = int(cfg["model"]["components"])
        return {
            "serves": {
                "components": k,
                "min_bands": k + 1,
                "trained_band_counts": sorted(set(bands)),
                "trained_wavelength_nm": [lo, hi],
                "trained_sizes": [list(s) for s in {tuple(s) for s in sizes}],
                "any_band_count": True,
            },
            "sigma": {
                "min": cfg["sampling"]["sigma_min"],
                "max": cfg["sampling"]["sigma_max"],
                "data": cfg["model"]["sigma_data"],
            },
        }

    def check_inputs(self, cfg: Config, card: dict[str, Any], data_dir: Path) -> None:
        for p in sorted((Path(data_dir) / "test").glob("*.nc")):
            ds = _open(p)
            _check_cube(card, ds["wavelength"].values, (ds.sizes["y"], ds.sizes["x"]), str(p))

    # ------------------------------------------------------------------ model
    def build_model(self, cfg: Config) -> nn.Module:
        return models.build_prior(cfg["model"])

    def train_dataset(self, cfg: Config, data_dir: Path) -> torch.utils.data.Dataset:
        k, patch = int(cfg["model"]["components"]), int(cfg["data"]["patch"])
        tiles = []
        for p in sorted((Path(data_dir) / "train").glob("*.nc")):
            c = models.coefficient_images(_open(p)["clean"].values, k)
            h, w = c.shape[1:]
            if min(h, w) < patch:
                raise ValueError(f"{p}: cube {h}x{w} is smaller than data.patch = {patch}")
            tiles += [
                c[:, r : r + patch, s : s + patch]
                for r in range(0, h - patch + 1, patch)
                for s in range(0, w - patch + 1, patch)
            ]
        return torch.utils.data.TensorDataset(torch.from_numpy(np.stack(tiles)))

    def make_loss(self, cfg: Config, data_dir: Path) -> LossFn:
        return models.sign_flip_edm_loss

    # ------------------------------------------------------------------ infer
    def infer(
        self, cfg: Config, model: nn.Module, data_dir: Path, out_dir: Path, rt: Runtime
    ) -> None:
        g = torch.Generator().manual_seed(int(cfg["seed"]) + 1)
        s = cfg["sampling"]
        extra = _optional_baselines(cfg)
        for p in sorted((Path(data_dir) / "test").glob("*.nc")):
            ds = _open(p)
            for case in cfg["noise"]["cases"]:
                y = ds[f"noisy_{case}"].values
                sigma = ds[f"sigma_{case}"].values if s["known_sigma"] else None
                out, secs = _restore_all(model, y, s, sigma, g, rt, extra)
                pred = xr.Dataset(
                    {m: (("band", "y", "x"), v) for m, v in out.items()},
                    coords={"wavelength": ds["wavelength"]},
                    attrs={f"seconds {m}": v for m, v in secs.items()},
                )
                with atomic_path(Path(out_dir) / f"{p.stem}_{case}.nc", suffix=".nc") as tmp:
                    pred.to_netcdf(tmp, engine="h5netcdf")

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, cfg: Config, paths: TaskPaths, fig_dir: Path) -> EvalResult:
        tables, curves, panels = {}, {}, {}
        for case in cfg["noise"]["cases"]:
            rows, curves[case], panels[case] = _score_case(paths, case)
            tables[f"{case}: mean over held-out cubes (MPSNR/PSNR data range 1)"] = rows
        figs = _figures(fig_dir, curves, panels)
        summary = _summary(tables, cfg)
        return EvalResult(
            tables=tables,
            lower_is_better=[
                m
                for m in metrics.LOWER_IS_BETTER
                if any(m in r for t in tables.values() for r in t.values())
            ],
            figures=[str(Path("figures") / Path(f).name) for f in figs],
            summary=summary,
        )

    # ------------------------------------------------------------------ apply
    def apply(
        self, cfg: Config, model: nn.Module, card: Card, inputs: Files, out_dir: Path, rt: Runtime
    ) -> None:
        g = torch.Generator().manual_seed(int(cfg["seed"]) + 2)
        f = cfg["files"]
        names: list[str] = []
        for path in map(Path, inputs):
            # the training files' declarations (band count, wavelengths) do not bind new files:
            # the model serves any band count; the .mat variable names carry over
            mat = path.suffix.lower() == ".mat"
            cube = io.read_cube(
                path,
                variable=f["variable"] if mat else None,
                bad_bands="mask",
                band_axis=f["band_axis"],
                wavelength_variable=f["wavelength_variable"] if mat else None,
            )
            _check_cube(
                card, cube["wavelength"].values, (cube.sizes["y"], cube.sizes["x"]), str(path)
            )
            name = io.safe_name(path)
            name = name if name not in names else f"{name}_{len(names)}"
            names.append(name)
            tile, factor = cfg["sampling"]["tile"], int(cfg["sampling"]["super_resolution"])
            tiled = tile is not None and max(cube.sizes["y"], cube.sizes["x"]) > tile
            if tiled and factor > 1:
                raise ValueError(
                    f"{path}: sampling.super_resolution={factor} runs on whole scenes, and this "
                    f"one is larger than sampling.tile={tile}: crop it or set sampling.tile=null"
                )
            if tiled:
                _apply_tiled(cfg, model, cube, Path(out_dir) / f"{name}_restored.zarr", g, rt)
                continue
            if factor > 1:
                out, stem = (
                    _apply_super_resolution(cfg, model, cube, factor, g, rt),
                    f"{name}_x{factor}",
                )
                out.attrs["history"] = (
                    f"diffsci hyperspectral x{factor} super-resolution of {path.name}"
                )
            else:
                out, stem = _apply_whole(cfg, model, cube, g, rt), f"{name}_restored"
                out.attrs["history"] = f"diffsci hyperspectral restoration of {path.name}"
            io.write_netcdf(out, Path(out_dir) / f"{stem}.nc")
            if path.suffix.lower() not in (".mat", ".nc", ".nc4", ".h5", ".zarr"):
                io.write_envi(out, Path(out_dir) / f"{stem}.hdr")


def _restore_options(cfg: Config, cube: xr.DataArray, g, rt: Runtime) -> dict[str, Any]:
    """The keyword arguments :func:`.models.restore` and :func:`.models.super_resolve` share."""
    s = cfg["sampling"]
    good = cube["good_band"].values
    return dict(sampling=s, good_band=good, generator=g, device=rt.device, robust=s["robust"])


def _plain_attrs(cube: xr.DataArray) -> dict[str, Any]:
    return {k: v for k, v in cube.attrs.items() if isinstance(v, (str, int, float))}


def _apply_whole(cfg: Config, model: nn.Module, cube: xr.DataArray, g, rt: Runtime) -> xr.DataArray:
    scale = cfg["files"]["scale"]
    y = np.asarray(cube.values, np.float32) / scale
    r = models.restore(model, y, **_restore_options(cfg, cube, g, rt))
    out = cube.copy(data=r.cube * scale)
    out.attrs = _plain_attrs(cube)
    return out


def finer_map_info(map_info: str, factor: int) -> str:
    """ENVI ``map info`` for pixels ``factor`` times smaller over the same ground.

    ``{projection, ref x, ref y, easting, northing, x size, y size, ...}`` (ENVI header
    format): the tie point's pixel coordinates are 1-based pixel corners, so ``ref -> (ref -
    1) factor + 1``; the pixel sizes are divided by ``factor``; the rest is kept.
    """
    body = map_info.strip().removeprefix("{").removesuffix("}")
    fields = [f.strip() for f in body.split(",")]
    if len(fields) < 7:
        raise ValueError(f"map info {map_info!r} is not an ENVI map info: fewer than 7 fields")
    try:
        ref = [(float(v) - 1) * factor + 1 for v in fields[1:3]]
        size = [float(v) / factor for v in fields[5:7]]
    except ValueError as e:
        raise ValueError(f"map info {map_info!r} is not an ENVI map info: {e}") from e
    fields[1:3] = [f"{v:g}" for v in ref]
    fields[5:7] = [f"{v:.10g}" for v in size]
    return "{" + ", ".join(fields) + "}"


def _apply_super_resolution(
    cfg: Config, model: nn.Module, cube: xr.DataArray, factor: int, g, rt: Runtime
) -> xr.DataArray:
    """The cube ``factor`` times finer: :func:`.models.super_resolve`, in the file's units."""
    scale = cfg["files"]["scale"]
    y = np.asarray(cube.values, np.float32) / scale
    r = models.super_resolve(model, y, factor, **_restore_options(cfg, cube, g, rt))
    attrs = _plain_attrs(cube)
    if "map_info" in attrs:
        attrs["map_info"] = finer_map_info(str(attrs["map_info"]), factor)
    return io.make_cube(
        r.cube * scale, cube["wavelength"].values, good_band=cube["good_band"].values, attrs=attrs
    )


def _apply_tiled(
    cfg: Config, model: nn.Module, cube: xr.DataArray, out: Path, g, rt: Runtime
) -> None:
    """A scene larger than ``sampling.tile``: read lazily, restored tile by tile, written block
    by block into a zarr store (atomically)."""
    import dask.array as dsa

    from diffsci.core.fileio import atomic_dir

    s, scale = cfg["sampling"], cfg["files"]["scale"]
    src = cube.data if isinstance(cube.data, dsa.Array) else dsa.from_array(cube.values)
    src = src / scale if scale != 1.0 else src

    class _Scaled:  # the target in the file's units
        def __init__(self, arr):
            self.arr, self.shape, self.chunks = arr, arr.shape, arr.chunks

        def __setitem__(self, key, value):
            self.arr[key] = np.asarray(value) * scale

    with atomic_dir(out, create=False) as tmp:
        target = io.create_zarr_like(cube, tmp, chunk_rows=int(s["tile"]))
        models.restore_tiled(
            model,
            src,
            _Scaled(target),
            sampling=s,
            tile=int(s["tile"]),
            overlap=int(s["overlap"]),
            good_band=cube["good_band"].values,
            generator=g,
            device=rt.device,
            robust=s["robust"],
            progress=rt.progress,
        )


def _check_cube(card: dict[str, Any], wl: np.ndarray, size: tuple[int, int], source: str) -> None:
    sv = card.get("serves") or {}
    if "components" not in sv:
        raise Incompatible(
            f"{source}: the model card has no hyperspectral entries; retrain the model"
        )
    if wl.size < sv["min_bands"]:
        raise Incompatible(
            f"{source}: {wl.size} bands, but the model's {sv['components']}-dimensional subspace "
            f"needs at least {sv['min_bands']}; use a model with fewer components"
        )
    if min(size) < 8:
        raise Incompatible(
            f"{source}: {size[0]}x{size[1]} pixels is smaller than the 8x8 the prior serves"
        )
    lo, hi = sv["trained_wavelength_nm"]
    warn_outside("shortest wavelength (nm)", float(wl.min()), lo, hi, source=source, tolerance=0.05)
    warn_outside("longest wavelength (nm)", float(wl.max()), lo, hi, source=source, tolerance=0.05)


def _optional_baselines(cfg: Config) -> dict[str, Any]:
    """The optional baselines the config's ``baselines`` section turns on, refused before any
    work when their package is missing."""
    if not cfg.get("baselines", {}).get("bm4d", False):
        return {}
    if not baselines.have_bm4d():
        raise ImportError(
            "baselines.bm4d is on but the optional package bm4d is not installed: pip install "
            "'diffsci[bm4d]' (Tampere University's non-commercial licence), or set "
            "baselines.bm4d: false"
        )
    return {baselines.BM4D: baselines.bm4d_denoise}


def _restore_all(
    model, y, s, sigma, g, rt, extra=None
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    out, secs = {}, {}
    t0 = time.perf_counter()
    r = models.restore(
        model, y, sampling=s, sigma=sigma, generator=g, device=rt.device, robust=s["robust"]
    )
    secs[OURS] = time.perf_counter() - t0
    out[OURS] = np.clip(r.cube, 0, 1)
    out[ABLATION] = np.clip(r.subspace.cube(), 0, 1)
    if s["self_supervised"]:
        t0 = time.perf_counter()
        ss = selfsup.restore_self_supervised(
            y, sigma=sigma, seed=int(g.initial_seed()), robust=s["robust"], device=rt.device
        )
        secs[SELF_SUPERVISED] = time.perf_counter() - t0
        out[SELF_SUPERVISED] = np.clip(ss.cube, 0, 1)
    for name, fn in {**baselines.BASELINES, **(extra or {})}.items():
        t0 = time.perf_counter()
        out[name] = fn(y, sigma)
        secs[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    k = min(r.subspace.basis.shape[1], y.shape[0])
    out[baselines.PRIOR_RANK] = baselines.robust_subspace_tv(y, sigma, k=k)
    secs[baselines.PRIOR_RANK] = time.perf_counter() - t0
    return {k: v.astype(np.float32) for k, v in out.items()}, secs


def _score_case(paths: TaskPaths, case: str):
    per: dict[str, list[dict[str, float]]] = {}
    curves: dict[str, list[np.ndarray]] = {}
    panel: dict[str, np.ndarray] = {}
    for p in sorted((paths.data / "test").glob("*.nc")):
        ds, pred = _open(p), _open(paths.predictions / f"{p.stem}_{case}.nc")
        x, stripe = ds["clean"].values, np.flatnonzero(ds[f"stripe_{case}"].values)
        methods = {
            "noisy input": ds[f"noisy_{case}"].values,
            **{m: pred[m].values for m in pred.data_vars},
        }
        for m, est in methods.items():
            row = metrics.score(est, x, stripe_bands=stripe)
            if f"seconds {m}" in pred.attrs:
                row["seconds"] = float(pred.attrs[f"seconds {m}"])
            per.setdefault(m, []).append(row)
            curves.setdefault(m, []).append(metrics.band_psnr(est, x))
        if not panel:
            panel = {"truth": x, **methods}
            panel["wavelength"] = ds["wavelength"].values
    rows = {m: metrics.mean_scores(r) for m, r in per.items()}
    same_bands = len({c.size for cs in curves.values() for c in cs}) == 1
    mean_curves = {m: np.mean(c, 0) for m, c in curves.items()} if same_bands else {}
    return rows, (panel.get("wavelength"), mean_curves), panel


def _figures(fig_dir: Path, curves, panels) -> list[str]:
    import matplotlib.pyplot as plt

    from . import plots

    out = []
    for case, (wl, c) in curves.items():
        if not c:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        plots.band_psnr_curves(ax, wl, c, title=f"per-band PSNR, {case}")
        path = Path(fig_dir) / f"band_psnr_{case}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(str(path))
        pan = {k: v for k, v in panels[case].items() if k != "wavelength"}
        fig, axes = plt.subplots(1, len(pan), figsize=(1.6 * len(pan), 1.9))
        plots.band_panels(np.atleast_1d(axes), pan, panels[case]["wavelength"])
        path = Path(fig_dir) / f"panels_{case}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(str(path))
    return out


def _summary(tables: dict[str, dict[str, dict[str, float]]], cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {
        "components": cfg["model"]["components"],
        "known_sigma": cfg["sampling"]["known_sigma"],
    }
    classical = [*baselines.BASELINES, baselines.PRIOR_RANK]
    for title, rows in tables.items():
        case = title.split(":")[0]
        best = max(classical, key=lambda m: rows[m]["MPSNR"])
        out[f"{case} MPSNR ours"] = rows[OURS]["MPSNR"]
        out[f"{case} MPSNR best classical ({best})"] = rows[best]["MPSNR"]
        out[f"{case} MPSNR gain over best classical (dB)"] = (
            rows[OURS]["MPSNR"] - rows[best]["MPSNR"]
        )
        out[f"{case} MPSNR gain over per-band filter (dB)"] = (
            rows[OURS]["MPSNR"] - rows["per-band Gaussian (SURE)"]["MPSNR"]
        )
    return out
