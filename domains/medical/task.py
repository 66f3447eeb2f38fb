"""The medical imaging task: MRI and CT reconstruction with a 2-D diffusion prior (glue).

- prepare: textured random-ellipse phantoms for training (HDF5), held-out slices (phantoms
  plus pydicom's bundled CT and MR images) written as a NIfTI volume and a DICOM series, and
  the measurements in the fields' formats: a fastMRI-style HDF5 (``kspace``,
  ``reconstruction_esc``, attrs ``max``) and a sinogram HDF5 (:mod:`.simulate`, :mod:`.io`).
- train: the core's loop on an unconditional MONAI UNet prior (:mod:`.models`).
- infer: posterior samples per slice (:mod:`.posterior`), mean and per-pixel std; baselines
  zero-filled and POCS-TV (MRI), FBP and TV-iterative (CT) (:mod:`.baselines`), computed here
  because their time is reported and TV is the warm start. Outputs: HDF5 with everything,
  NIfTI and a derived DICOM series of the mean and the std.
- evaluate: PSNR (data_range = volume max, as fastMRI), SSIM (fastMRI's 7x7 uniform window,
  and MONAI's 11x11 Gaussian, labelled), NMSE, coverage of the 90% interval, seconds per slice
  (:mod:`.metrics`), example figures (:mod:`.plots`).
- ``source: {kind: files}``: prepare reads the user's images instead of phantoms
  (:mod:`.userdata`); the model card records the served image size, normalisation and sigma
  range; ``check_inputs`` and ``apply`` (:mod:`.reconstruct`: a user's k-space or tomography
  scan) refuse other sizes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diffsci.core import Card, Config, DomainTask, EvalResult, Files, LossFn, Runtime, TaskPaths
from diffsci.core.datasource import resolve_source

from . import baselines, io, metrics, models, plots, posterior, reconstruct, simulate, userdata
from .models import AffineData
from .operators import (
    CGPinv,
    ParallelBeamRadon,
    RealImageMRI,
    SingleCoilMRI,
    ct_angles,
    fft2c,
    kspace_mask,
)

__all__ = ["MedicalTask"]

SCHEMA = Path(__file__).with_name("config.schema.yaml")
#: Rows of the 3-D volume table -> datasets of ``mri_volume.h5``.
VOLUME_ROWS = {
    "diffusion 2-D slice-wise": "mean_slicewise",
    "diffusion + slice-axis TV": "mean",
    "POCS-TV": "POCS-TV",
    "zero-filled": "zero-filled",
}
LOWER_IS_BETTER = ["NMSE", "seconds per slice", "kspace_residual_max", "sinogram_residual_max"]


def _timed(fn: Callable[[], Tensor], n: int) -> tuple[Tensor, float]:
    """``fn()`` and its wall-clock seconds per slice (``n`` slices)."""
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) / n


def _sampling(cfg: Config, data: str | None = None) -> dict[str, Any]:
    """:func:`~.posterior.posterior_reconstruct`'s options from the config (``data``: the
    ``mri`` or ``ct`` section giving the data step; ``None``: hard data consistency)."""
    s = cfg["sampling"]
    keys = ("samples", "sampler", "steps", "sigma_min", "sigma_max", "eta", "clip_denoised")
    opts = {k: s[k] for k in keys}
    if data is not None:
        d = cfg[data]
        if d["method"] == "hard_dc" and d["noise_std"] > 0:
            raise ValueError(
                f"{data}.method hard_dc needs noiseless data ({data}.noise_std is "
                f"{d['noise_std']}): use dps or prox"
            )
        opts.update(method=d["method"], noise_std=d["noise_std"])
        opts["sigma_data"] = cfg["model"]["sigma_data"]
    return opts


def _label(cfg: Config, name: str) -> str:
    """The acquisition of ``name`` (``mri`` or ``ct``) in words, for table titles."""
    if name == "mri":
        m = cfg["mri"]
        return f"{m['acceleration']}x {m['mask']} mask, center {m['center_fraction']}"
    c = cfg["ct"]
    if c["geometry"] == "sparse_view":
        return f"{c['n_views']} views, parallel beam"
    return f"{c['n_views']} views over {c['max_angle']} deg, parallel beam"


class MedicalTask(DomainTask):
    """Undersampled MRI and sparse-view CT with one diffusion prior."""

    name = "medical"
    schema_path = SCHEMA
    packages = ("pydicom", "nibabel", "scikit-image")
    training_config_keys = ("seed", "data", "model", "loss", "source", "files")

    # ---------------------------------------------------------------- prepare
    def prepare(self, cfg: Config, data_dir: Path) -> None:
        files = resolve_source(cfg)
        d, seed = cfg["data"], int(cfg["seed"])
        n = d["size"]
        if files is None:
            train = simulate.random_ellipse_phantoms(d["n_train"], n, seed=seed)
            test = simulate.held_out_slices(
                d["n_test"], n, seed=seed + 10_000, bundled=d["pydicom_examples"]
            )
        else:  # the user's files: their train split trains, their test split evaluates
            train, _ = userdata.load_images(files.train, cfg, fbp=baselines.fbp)
            test, _ = userdata.load_images(files.test, cfg, fbp=baselines.fbp)
            if files.validation:  # read and checked; the prior's training has no validation
                val, _ = userdata.load_images(files.validation, cfg, fbp=baselines.fbp)
                io.write_images(data_dir / "validation.h5", val)
        io.write_images(data_dir / "train.h5", train)
        # held-out slices as a volume (z last, as NIfTI) and a DICOM series for derived outputs
        io.write_volume_nifti(test, data_dir / "test_ground_truth.nii.gz")
        io.write_dicom_series(test, data_dir / "test_dicom", description="diffsci held-out")
        x = torch.from_numpy(test)[:, None]
        if cfg["mri"]["enabled"]:
            self._prepare_mri(cfg, data_dir, x, test, volume=files is None)
        if cfg["ct"]["enabled"]:
            angles = ct_angles(cfg)
            sino = simulate.noisy_sinograms(
                ParallelBeamRadon(n, angles),
                x,
                noise_std=cfg["ct"]["noise_std"],
                seed=seed + 30_000,
            )
            io.write_sinograms(data_dir / "ct_test.h5", sino[:, 0].numpy(), angles, n)

    @staticmethod
    def _prepare_mri(
        cfg: Config, data_dir: Path, x: Tensor, test: np.ndarray, *, volume: bool = True
    ) -> None:
        m, seed, n = cfg["mri"], int(cfg["seed"]), cfg["data"]["size"]
        mask = kspace_mask(
            (n, n),
            acceleration=m["acceleration"],
            center_fraction=m["center_fraction"],
            kind=m["mask"],
            seed=seed,
        )
        kspace = simulate.noisy_kspace(x, noise_std=m["noise_std"], seed=seed + 20_000)[:, 0]
        # as fastMRI's test files: the mask and its factors
        io.write_fastmri_like(
            data_dir / "mri_test.h5",
            kspace.numpy(),
            reconstruction_esc=test,
            mask=mask.numpy(),
            attrs={
                "acceleration": m["acceleration"],
                "num_low_frequency": int(round(n * m["center_fraction"])),
            },
        )
        if cfg["volume"]["enabled"] and volume:
            vol = simulate.random_ellipsoid_volume(cfg["volume"]["slices"], n, seed=seed + 40_000)
            io.write_volume_nifti(vol, data_dir / "volume_ground_truth.nii.gz")
            kv = fft2c(torch.from_numpy(vol).to(torch.complex64))
            io.write_fastmri_like(
                data_dir / "mri_volume.h5", kv.numpy(), reconstruction_esc=vol, mask=mask.numpy()
            )

    # ---------------------------------------------------------------- card and apply
    def model_card(self, cfg: Config, data_dir: Path) -> dict[str, Any]:
        train = io.read_images(Path(data_dir) / "train.h5", size=cfg["data"]["size"]).numpy()
        return userdata.card_part(cfg, train)

    def check_inputs(self, cfg: Config, card: dict[str, Any], data_dir: Path) -> None:
        path = Path(data_dir) / "test_ground_truth.nii.gz"
        userdata.check_images(io.read_volume_nifti(path), card, source=str(path))

    def apply(
        self, cfg: Config, model: nn.Module, card: Card, inputs: Files, out_dir: Path, rt: Runtime
    ) -> None:
        names: list[str] = []
        for path in map(Path, inputs):
            stem = path.name.split(".")[0]
            name = stem if stem not in names else f"{stem}_{len(names)}"
            names.append(name)
            reconstruct.apply_file(cfg, model, card, path, Path(out_dir), name, rt)

    # ---------------------------------------------------------------- model
    def build_model(self, cfg: Config) -> nn.Module:
        return models.build_prior(cfg["model"])

    def train_dataset(self, cfg: Config, data_dir: Path) -> torch.utils.data.Dataset:
        x = io.read_images(Path(data_dir) / "train.h5", size=cfg["data"]["size"])
        return torch.utils.data.TensorDataset(AffineData.to_model(x[:, None]))

    def make_loss(self, cfg: Config, data_dir: Path) -> LossFn:
        return models.flip_edm_loss

    # ---------------------------------------------------------------- inference
    def infer(
        self, cfg: Config, model: nn.Module, data_dir: Path, out_dir: Path, rt: Runtime
    ) -> None:
        device, progress = rt.device, rt.progress
        data_dir, out_dir = Path(data_dir), Path(out_dir)
        g = torch.Generator().manual_seed(int(cfg["seed"]) + 1)
        run = {"model": model, "generator": g, "device": device, "progress": progress}
        if cfg["mri"]["enabled"]:
            self._infer_mri(cfg, data_dir, out_dir, **run)
            if (data_dir / "mri_volume.h5").is_file():
                self._infer_volume(cfg, data_dir, out_dir, **run)
        if cfg["ct"]["enabled"]:
            self._infer_ct(cfg, data_dir, out_dir, **run)

    @staticmethod
    def _infer_mri(
        cfg: Config,
        data_dir: Path,
        out_dir: Path,
        *,
        model: nn.Module,
        generator: torch.Generator,
        device: torch.device,
        progress: bool,
    ) -> None:
        m = cfg["mri"]
        k, mask = io.read_kspace_and_mask(data_dir / "mri_test.h5", size=cfg["data"]["size"])
        n, h, w = k.shape
        op = RealImageMRI(mask, (h, w))
        y = op.complete((op.measured * k)[:, None])
        ym = k[:, None] * op.measured
        zf, t_zf = _timed(lambda: baselines.zero_filled(ym, SingleCoilMRI(mask)).abs(), n)
        tv, t_tv = _timed(lambda: baselines.pocs_tv(ym, SingleCoilMRI(mask), **m["pocs_tv"]), n)
        samples, sec = posterior.sample_slices(
            model,
            op,
            y,
            (n, 1, h, w),
            batch=cfg["sampling"]["batch"],
            generator=generator,
            device=device,
            init=tv,
            start_sigma=m["warm_start"],
            progress=progress,
            desc="MRI posterior",
            **_sampling(cfg, "mri"),
        )
        if m["warm_start"] is not None:
            sec += t_tv  # the warm start's cost is part of the method's
        io.write_reconstructions(
            out_dir,
            "mri",
            samples,
            {"zero-filled": zf, "POCS-TV": tv},
            {"diffusion": sec, "zero-filled": t_zf, "POCS-TV": t_tv},
            extra={"kspace_residual_max": metrics.kspace_residual(op, samples, k)},
            reference=data_dir / "test_dicom",
        )

    @staticmethod
    def _infer_volume(
        cfg: Config,
        data_dir: Path,
        out_dir: Path,
        *,
        model: nn.Module,
        generator: torch.Generator,
        device: torch.device,
        progress: bool,
    ) -> None:
        """3-D MRI from the 2-D prior: slice-wise vs slice-axis TV (DiffusionMBIR-style)."""
        k, mask = io.read_kspace_and_mask(data_dir / "mri_volume.h5", size=cfg["data"]["size"])
        z, h, w = k.shape
        op = RealImageMRI(mask, (h, w))
        y = op.complete((op.measured * k)[:, None]).to(device)
        weight = cfg["volume"]["z_tv_weight"]
        flat, ztv = posterior.volume_samples(
            model, op, y, (z, 1, h, w), z_tv_weight=weight, generator=generator, **_sampling(cfg)
        )
        ym, single = k[:, None] * op.measured, SingleCoilMRI(mask)
        base = {
            "zero-filled": baselines.zero_filled(ym, single).abs()[:, 0].numpy(),
            "POCS-TV": baselines.pocs_tv(ym, single, **cfg["mri"]["pocs_tv"])[:, 0].numpy(),
        }
        io.write_volume_reconstructions(
            out_dir / "mri_volume.h5", flat, ztv, base, z_tv_weight=weight
        )
        io.write_volume_nifti(ztv.mean(0)[:, 0].cpu().numpy(), out_dir / "mri_volume_mean.nii.gz")

    @staticmethod
    def _infer_ct(
        cfg: Config,
        data_dir: Path,
        out_dir: Path,
        *,
        model: nn.Module,
        generator: torch.Generator,
        device: torch.device,
        progress: bool,
    ) -> None:
        c = cfg["ct"]
        sino, angles, n_img = io.read_sinograms(data_dir / "ct_test.h5", size=cfg["data"]["size"])
        radon = ParallelBeamRadon(n_img, angles)
        y = sino[:, None]
        n = y.shape[0]
        fbp, t_fbp = _timed(lambda: baselines.fbp(y, radon), n)
        tv, t_tv = _timed(lambda: baselines.tv_iterative(y, radon, **c["tv"]), n)
        samples, sec = posterior.sample_slices(
            model,
            CGPinv(radon, cfg["sampling"]["cg_iters"]),
            y,
            (n, 1, n_img, n_img),
            batch=cfg["sampling"]["batch"],
            generator=generator,
            device=device,
            init=tv,
            start_sigma=c["warm_start"],
            progress=progress,
            desc="CT posterior",
            **_sampling(cfg, "ct"),
        )
        if c["warm_start"] is not None:
            sec += t_tv
        # FBP raw (the standard) and clipped to the image range
        io.write_reconstructions(
            out_dir,
            "ct",
            samples,
            {"FBP": fbp, "FBP (clipped to [0, 1])": fbp.clamp(0, 1), "TV-iterative": tv},
            {
                "diffusion": sec,
                "FBP": t_fbp,
                "FBP (clipped to [0, 1])": t_fbp,
                "TV-iterative": t_tv,
            },
            extra={"sinogram_residual_max": metrics.sinogram_residual(radon, samples, y)},
            reference=data_dir / "test_dicom",
        )

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, cfg: Config, paths: TaskPaths, fig_dir: Path) -> EvalResult:
        truth = torch.from_numpy(io.read_volume_nifti(paths.data / "test_ground_truth.nii.gz"))
        tables: dict[str, Any] = {}
        figures: list[str] = []
        for name, title in (("mri", "MRI"), ("ct", "CT")):
            path = paths.predictions / f"{name}.h5"
            if not path.is_file():
                continue
            rec = io.read_reconstructions(path)
            label = _label(cfg, name)
            tables[f"{title}: {label}"] = metrics.reconstruction_table(
                rec.preds, truth, samples=rec.samples, seconds=rec.seconds, extra=rec.extra
            )
            fig = plots.save_reconstructions(
                Path(fig_dir) / f"{name}_examples.png",
                truth,
                rec.preds,
                rec.samples.std(0),
                title=f"{title} {label}",
            )
            figures.append(fig)
        vpath = paths.predictions / "mri_volume.h5"
        if vpath.is_file():
            vt = torch.from_numpy(io.read_volume_nifti(paths.data / "volume_ground_truth.nii.gz"))
            vol = io.read_volume_reconstructions(vpath)
            rows = {row: metrics.slice_metrics(vol[key], vt) for row, key in VOLUME_ROWS.items()}
            tables[f"MRI 3-D volume ({vt.shape[0]} slices): {_label(cfg, 'mri')}"] = rows
        return EvalResult(
            tables=tables,
            lower_is_better=list(LOWER_IS_BETTER),
            figures=[str(Path("figures") / Path(f).name) for f in figures if f],
            summary={
                "slices": int(truth.shape[0]),
                "image_size": cfg["data"]["size"],
                "posterior_samples": cfg["sampling"]["samples"],
            },
        )
