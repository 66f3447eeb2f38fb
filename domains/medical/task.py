"""The medical imaging task: MRI and CT reconstruction with a 2-D diffusion prior.

- prepare: textured random-ellipse phantoms for training (HDF5), held-out slices (phantoms
  plus pydicom's bundled CT and MR images) written as a NIfTI volume and a DICOM series, and
  the measurements in the fields' formats: a fastMRI-style HDF5 (``kspace``,
  ``reconstruction_esc``, attrs ``max``) and a sinogram HDF5.
- train: the core's loop on an unconditional MONAI UNet prior (Karras preconditioning).
- infer: posterior samples per slice with hard data consistency in every reverse step
  (:mod:`.recon`), mean and per-pixel std; baselines zero-filled and POCS-TV (MRI), FBP and
  TV-iterative (CT). Outputs: HDF5 with everything, NIfTI and a derived DICOM series of the
  mean and the std.
- evaluate: PSNR (data_range = volume max, as fastMRI), SSIM (fastMRI's 7x7 uniform window,
  and MONAI's 11x11 Gaussian, labelled), NMSE, coverage of the 90% interval, seconds per slice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffsci.core.denoisers import KarrasDenoiser, edm_loss
from diffsci.core.fileio import open_hdf5
from diffsci.core.metrics import interval_coverage, nmse, psnr, ssim
from diffsci.core.networks import UNet

from . import baselines, ct, io, mri, phantoms
from .recon import AffineData, CGPinv, RealImageMRI, SliceTV, posterior_reconstruct

__all__ = ["MedicalTask"]

SCHEMA = Path(__file__).with_name("config.schema.yaml")


def _read_images(path: Path, key: str = "images") -> Tensor:
    with open_hdf5(path, what="file (run the prepare stage)") as f:
        if key not in f:
            raise KeyError(f"{path}: no dataset {key!r}")
        return torch.from_numpy(f[key][()]).float()


def ct_angles(cfg: Mapping[str, Any]) -> np.ndarray:
    c = cfg["ct"]
    if c["geometry"] == "sparse_view":
        return np.asarray(ct.sparse_view_angles(c["n_views"]), dtype=np.float64)
    return np.asarray(ct.limited_angle_angles(c["n_views"], c["max_angle"]), dtype=np.float64)


def slice_metrics(pred: Tensor, truth: Tensor) -> dict[str, float]:
    """fastMRI's metrics over a stack of slices ``(Z, H, W)``: PSNR with ``data_range`` = the
    volume max (median and mean over slices), NMSE of the volume, SSIM with fastMRI's 7x7
    uniform window and with MONAI's 11x11 Gaussian window (means over slices)."""
    pred, truth = pred.double(), truth.double()
    peak = float(truth.max())
    per = psnr(pred, truth, data_range=peak, dim=(-2, -1), reduction="none")
    return {
        "PSNR median (dB)": float(per.median()),
        "PSNR mean (dB)": float(per.mean()),
        "NMSE": float(nmse(pred, truth)),
        "SSIM (fastMRI 7x7 uniform)": float(ssim(pred, truth, data_range=peak)),
        "SSIM (MONAI 11x11 gaussian)": float(ssim(pred, truth, data_range=peak, window="gaussian")),
    }


def write_volume_nifti(volume: np.ndarray, path: Path) -> Path:
    """A stack of slices ``(Z, H, W)`` as NIfTI ``(H, W, Z)`` (slices along k)."""
    return io.write_nifti(np.moveaxis(np.asarray(volume), 0, -1), path)


def read_volume_nifti(path: Path) -> np.ndarray:
    """Inverse of :func:`write_volume_nifti`: ``(Z, H, W)`` float32."""
    arr = np.asarray(io.read_nifti(path).array, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D volume, got shape {arr.shape}")
    return np.moveaxis(arr, -1, 0)


def _kspace_and_mask(path: Path) -> tuple[Tensor, Tensor]:
    """Single-coil k-space ``(slices, H, W)`` and its ``(W,)`` line mask from a fastMRI file."""
    data = io.read_fastmri(path)
    if data.mask is None:
        raise KeyError(f"{path}: no 'mask' dataset (the sampled phase-encode lines)")
    if data.kspace.ndim != 3:
        raise ValueError(f"{path}: expected single-coil kspace (slices, H, W), got "
                         f"{data.kspace.shape}")  # fmt: skip
    return torch.as_tensor(data.kspace), torch.from_numpy(data.mask.astype(np.float32))


class MedicalTask:
    """Undersampled MRI and sparse-view CT with one diffusion prior."""

    name = "medical"
    schema_path = SCHEMA

    # ---------------------------------------------------------------- prepare
    def prepare(self, cfg: Mapping[str, Any], data_dir: Path) -> None:
        d, seed = cfg["data"], int(cfg["seed"])
        n = d["size"]
        train = phantoms.random_ellipse_phantoms(d["n_train"], n, seed=seed)
        test = phantoms.random_ellipse_phantoms(d["n_test"], n, seed=seed + 10_000)
        test = np.asarray(test, dtype=np.float32)
        if d["pydicom_examples"]:
            ex = phantoms.pydicom_examples(n)
            test = np.concatenate([test, np.stack([ex[k] for k in sorted(ex)]).astype(np.float32)])
        with h5py.File(data_dir / "train.h5", "w") as f:
            f.create_dataset("images", data=np.asarray(train, np.float32), compression="gzip")
        # held-out slices as a volume (z last, as NIfTI) and a DICOM series for derived outputs
        write_volume_nifti(test, data_dir / "test_ground_truth.nii.gz")
        io.write_dicom_series(test, data_dir / "test_dicom", description="diffsci held-out")
        x = torch.from_numpy(test)[:, None]
        if cfg["mri"]["enabled"]:
            m = cfg["mri"]
            mask = mri.kspace_mask((n, n), acceleration=m["acceleration"],
                                   center_fraction=m["center_fraction"], kind=m["mask"],
                                   seed=seed)  # fmt: skip
            kspace = mri.fft2c(x.to(torch.complex64))[:, 0]
            if m["noise_std"] > 0:  # complex white noise, std noise_std per k-space sample
                g = torch.Generator().manual_seed(seed + 20_000)
                re, im = torch.randn((2, *kspace.shape), generator=g) * m["noise_std"] / 2**0.5
                kspace = kspace + torch.complex(re, im)
            # as fastMRI's test files: the mask and its factors
            io.write_fastmri_like(data_dir / "mri_test.h5", kspace.numpy(),
                                  reconstruction_esc=test, mask=mask.numpy(),
                                  attrs={"acceleration": m["acceleration"],
                                         "num_low_frequency": int(round(n * m["center_fraction"]))})  # fmt: skip
            if cfg["volume"]["enabled"]:
                vol = phantoms.random_ellipsoid_volume(cfg["volume"]["slices"], n,
                                                       seed=seed + 40_000)  # fmt: skip
                write_volume_nifti(vol, data_dir / "volume_ground_truth.nii.gz")
                kv = mri.fft2c(torch.from_numpy(vol).to(torch.complex64))
                io.write_fastmri_like(data_dir / "mri_volume.h5", kv.numpy(),
                                      reconstruction_esc=vol, mask=mask.numpy())  # fmt: skip
        if cfg["ct"]["enabled"]:
            angles = ct_angles(cfg)
            op = ct.ParallelBeamRadon(n, angles)
            sino = op.forward(x)[:, 0]
            if cfg["ct"]["noise_std"] > 0:
                g = torch.Generator().manual_seed(seed + 30_000)
                sino = sino + torch.randn(sino.shape, generator=g) * cfg["ct"]["noise_std"]
            with h5py.File(data_dir / "ct_test.h5", "w") as f:
                f.create_dataset("sinogram", data=sino.numpy().astype(np.float32))
                f.create_dataset("angles_deg", data=angles)
                f.attrs["geometry"] = "parallel-beam"
                f.attrs["image_size"] = n

    # ---------------------------------------------------------------- model
    def build_model(self, cfg: Mapping[str, Any]) -> nn.Module:
        m = cfg["model"]
        net = UNet(2, 1, 1, channels=tuple(m["channels"]),
                   attention_levels=tuple(m["attention_levels"]),
                   num_res_blocks=m["num_res_blocks"])  # fmt: skip
        return KarrasDenoiser(net, sigma_data=m["sigma_data"])

    def train_dataset(self, cfg: Mapping[str, Any], data_dir: Path) -> torch.utils.data.Dataset:
        x = _read_images(Path(data_dir) / "train.h5")
        return torch.utils.data.TensorDataset(AffineData.to_model(x[:, None]))

    def loss(self, model: nn.Module, batch: Any, rng) -> Tensor:
        x0 = batch[0] if isinstance(batch, list | tuple) else batch
        # random left-right flips per sample (augmentation; anatomy is near-symmetric)
        flip = (rng.rand((x0.shape[0],)) < 0.5).to(x0.device).reshape(-1, 1, 1, 1)
        x0 = torch.where(flip, x0.flip(-1), x0)
        return edm_loss(model, x0, rng)

    # ---------------------------------------------------------------- inference
    def _sample(self, cfg, model, op, y, shape, *, device, generator, progress, desc, data,
                init=None):  # fmt: skip
        """Posterior samples of every slice, in chunks of ``sampling.batch``; seconds/slice.

        ``init``: the TV baseline's reconstruction, the warm start when ``<data>.warm_start``
        is set (CCDF; ignored otherwise)."""
        s, d = cfg["sampling"], cfg[data]
        start = d["warm_start"]
        if d["method"] == "hard_dc" and d["noise_std"] > 0:
            raise ValueError(f"{data}.method hard_dc needs noiseless data ({data}.noise_std is "
                             f"{d['noise_std']}): use dps or prox")  # fmt: skip
        chunks, t0 = [], time.perf_counter()
        for i in tqdm(range(0, shape[0], s["batch"]), disable=not progress, desc=desc):
            yb = y[i : i + s["batch"]].to(device)
            chunks.append(posterior_reconstruct(
                model, op, yb, (len(yb), *shape[1:]), samples=s["samples"],
                sampler=s["sampler"], steps=s["steps"], sigma_min=s["sigma_min"],
                sigma_max=s["sigma_max"], eta=s["eta"], generator=generator,
                method=d["method"], noise_std=d["noise_std"],
                sigma_data=cfg["model"]["sigma_data"], clip_denoised=s["clip_denoised"],
                init=None if start is None else init[i : i + s["batch"]].to(device),
                start_sigma=start).cpu())  # fmt: skip
        return torch.cat(chunks, 1), (time.perf_counter() - t0) / shape[0]

    def infer(self, cfg: Mapping[str, Any], model: nn.Module, data_dir: Path, out_dir: Path, *,
              device: torch.device, progress: bool) -> None:  # fmt: skip
        data_dir = Path(data_dir)
        g = torch.Generator().manual_seed(int(cfg["seed"]) + 1)
        ref = data_dir / "test_dicom"
        if cfg["mri"]["enabled"]:
            path = data_dir / "mri_test.h5"
            k, mask = _kspace_and_mask(path)
            n, h, w = k.shape
            op = RealImageMRI(mask, (h, w))
            y = op.complete((op.measured * k)[:, None])
            t0 = time.perf_counter()
            zf = baselines.zero_filled(k[:, None] * op.measured, mri.SingleCoilMRI(mask)).abs()
            t_zf = (time.perf_counter() - t0) / n
            t0 = time.perf_counter()
            tv = baselines.pocs_tv(k[:, None] * op.measured, mri.SingleCoilMRI(mask),
                                   **cfg["mri"]["pocs_tv"])  # fmt: skip
            t_tv = (time.perf_counter() - t0) / n
            samples, sec = self._sample(cfg, model, op, y, (n, 1, h, w), device=device,
                                        generator=g, progress=progress, desc="MRI posterior",
                                        data="mri", init=tv)  # fmt: skip
            if cfg["mri"]["warm_start"] is not None:
                sec += t_tv  # the warm start's cost is part of the method's
            resid = op.measured_residual(
                samples.flatten(0, 1), k[:, None].repeat(samples.shape[0], 1, 1, 1)
            )
            self._write(out_dir, "mri", samples, {"zero-filled": zf, "POCS-TV": tv},
                        {"diffusion": sec, "zero-filled": t_zf, "POCS-TV": t_tv},
                        extra={"kspace_residual_max": float(resid.max())}, reference=ref)  # fmt: skip
            if (data_dir / "mri_volume.h5").is_file():
                self._infer_volume(cfg, model, data_dir, out_dir, device=device, generator=g)
        if cfg["ct"]["enabled"]:
            with open_hdf5(data_dir / "ct_test.h5", what="CT file (run the prepare stage)") as f:
                sino = torch.from_numpy(f["sinogram"][()]).float()
                angles = f["angles_deg"][()]
                n_img = int(f.attrs["image_size"])
            radon = ct.ParallelBeamRadon(n_img, angles)
            op = CGPinv(radon, cfg["sampling"]["cg_iters"])
            y = sino[:, None]
            n = y.shape[0]
            t0 = time.perf_counter()
            fbp = ct.fbp(y, radon)
            t_fbp = (time.perf_counter() - t0) / n
            t0 = time.perf_counter()
            tv = baselines.tv_iterative(y, radon, **cfg["ct"]["tv"])
            t_tv = (time.perf_counter() - t0) / n
            samples, sec = self._sample(cfg, model, op, y, (n, 1, n_img, n_img), device=device,
                                        generator=g, progress=progress, desc="CT posterior",
                                        data="ct", init=tv)  # fmt: skip
            if cfg["ct"]["warm_start"] is not None:
                sec += t_tv
            resid = radon.forward(samples.flatten(0, 1)) - y.repeat(samples.shape[0], 1, 1, 1)
            rel = resid.flatten(1).norm(dim=1) / y.repeat(samples.shape[0], 1, 1, 1).flatten(
                1
            ).norm(dim=1)
            # FBP raw (the standard) and clipped to the image range (DESIGN's 15.1 dB figure)
            self._write(out_dir, "ct", samples,
                        {"FBP": fbp, "FBP (clipped to [0, 1])": fbp.clamp(0, 1),
                         "TV-iterative": tv},
                        {"diffusion": sec, "FBP": t_fbp, "FBP (clipped to [0, 1])": t_fbp,
                         "TV-iterative": t_tv},
                        extra={"sinogram_residual_max": float(rel.max())}, reference=ref)  # fmt: skip

    def _infer_volume(self, cfg, model, data_dir: Path, out_dir: Path, *, device, generator):
        """3-D MRI from the 2-D prior: slice-wise vs slice-axis TV (DiffusionMBIR-style)."""
        path = data_dir / "mri_volume.h5"
        k, mask = _kspace_and_mask(path)
        z, h, w = k.shape
        op = RealImageMRI(mask, (h, w))
        y = op.complete((op.measured * k)[:, None]).to(device)
        s, weight = cfg["sampling"], cfg["volume"]["z_tv_weight"]
        common = dict(samples=s["samples"], sampler=s["sampler"], steps=s["steps"],
                      sigma_min=s["sigma_min"], sigma_max=s["sigma_max"], eta=s["eta"],
                      clip_denoised=s["clip_denoised"])  # fmt: skip
        g_state = generator.get_state()
        flat = posterior_reconstruct(model, op, y, (z, 1, h, w), generator=generator, **common)
        generator.set_state(g_state)  # same noise for both: the comparison isolates the prior
        ztv = posterior_reconstruct(model, op, y, (z, 1, h, w), generator=generator,
                                    wrap=lambda d: SliceTV(d, weight), **common)  # fmt: skip
        single = mri.SingleCoilMRI(mask)
        ym = k[:, None] * op.measured
        with h5py.File(out_dir / "mri_volume.h5", "w") as f:
            f.create_dataset("mean_slicewise", data=flat.mean(0)[:, 0].cpu().numpy())
            f.create_dataset("mean", data=ztv.mean(0)[:, 0].cpu().numpy())
            f.create_dataset("std", data=ztv.std(0)[:, 0].cpu().numpy())
            f.create_dataset(
                "zero-filled", data=baselines.zero_filled(ym, single).abs()[:, 0].numpy()
            )
            f.create_dataset(
                "POCS-TV", data=baselines.pocs_tv(ym, single, **cfg["mri"]["pocs_tv"])[:, 0].numpy()
            )
            f.attrs["z_tv_weight"] = weight
        write_volume_nifti(ztv.mean(0)[:, 0].cpu().numpy(), out_dir / "mri_volume_mean.nii.gz")

    @staticmethod
    def _write(out_dir: Path, name: str, samples: Tensor, base: dict[str, Tensor],
               seconds: dict[str, float], *, extra: dict[str, float], reference: Path) -> None:  # fmt: skip
        mean, std = samples.mean(0)[:, 0], samples.std(0)[:, 0]
        with h5py.File(out_dir / f"{name}.h5", "w") as f:
            f.create_dataset("mean", data=mean.numpy())
            f.create_dataset("std", data=std.numpy())
            f.create_dataset("samples", data=samples[:, :, 0].numpy(), compression="gzip")
            grp = f.create_group("baselines")
            for k, v in base.items():
                grp.create_dataset(k, data=np.asarray(v, dtype=np.float32).reshape(mean.shape))
            f.attrs["seconds_per_slice"] = json.dumps(seconds)
            for k, v in extra.items():
                f.attrs[k] = v
        write_volume_nifti(mean.numpy(), out_dir / f"{name}_mean.nii.gz")
        write_volume_nifti(std.numpy(), out_dir / f"{name}_std.nii.gz")
        io.write_dicom_series(mean.numpy(), out_dir / f"{name}_mean_dicom", reference=reference,
                              description=f"diffsci {name} posterior mean")  # fmt: skip
        io.write_dicom_series(std.numpy(), out_dir / f"{name}_std_dicom", reference=reference,
                              description=f"diffsci {name} posterior std")  # fmt: skip

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, cfg: Mapping[str, Any], data_dir: Path, pred_dir: Path,
                 fig_dir: Path) -> dict[str, Any]:  # fmt: skip
        from .plots import plot_reconstructions

        truth = torch.from_numpy(read_volume_nifti(Path(data_dir) / "test_ground_truth.nii.gz"))
        tables: dict[str, Any] = {}
        figures: list[str] = []
        for name, title in (("mri", "MRI"), ("ct", "CT")):
            path = Path(pred_dir) / f"{name}.h5"
            if not path.is_file():
                continue
            with h5py.File(path) as f:
                preds = {"diffusion (posterior mean)": torch.from_numpy(f["mean"][()])}
                for k in f["baselines"]:
                    preds[k] = torch.from_numpy(f["baselines"][k][()])
                samples = torch.from_numpy(f["samples"][()])
                seconds = json.loads(f.attrs["seconds_per_slice"])
                extra = {k: float(v) for k, v in f.attrs.items() if k != "seconds_per_slice"}
            rows = {}
            for method, p in preds.items():
                row = slice_metrics(p, truth)
                key = "diffusion" if method.startswith("diffusion") else method
                row["seconds per slice"] = seconds.get(key, float("nan"))
                rows[method] = row
            rows["diffusion (posterior mean)"]["coverage 90%"] = float(
                interval_coverage(samples, truth, level=0.9)
            )
            rows["diffusion (posterior mean)"].update(extra)
            label = self._label(cfg, name)
            tables[f"{title}: {label}"] = rows
            figures.append(plot_reconstructions(fig_dir / f"{name}_examples.png", truth, preds,
                                                samples.std(0), title=f"{title} {label}"))  # fmt: skip
        vpath = Path(pred_dir) / "mri_volume.h5"
        if vpath.is_file():
            vt = torch.from_numpy(read_volume_nifti(Path(data_dir) / "volume_ground_truth.nii.gz"))
            with h5py.File(vpath) as f:
                rows = {
                    "diffusion 2-D slice-wise": slice_metrics(
                        torch.from_numpy(f["mean_slicewise"][()]), vt
                    ),
                    "diffusion + slice-axis TV": slice_metrics(torch.from_numpy(f["mean"][()]), vt),
                    "POCS-TV": slice_metrics(torch.from_numpy(f["POCS-TV"][()]), vt),
                    "zero-filled": slice_metrics(torch.from_numpy(f["zero-filled"][()]), vt),
                }
            tables[f"MRI 3-D volume ({vt.shape[0]} slices): {self._label(cfg, 'mri')}"] = rows
        return {
            "tables": tables,
            "lower_is_better": [
                "NMSE",
                "seconds per slice",
                "kspace_residual_max",
                "sinogram_residual_max",
            ],
            "figures": [str(Path("figures") / Path(f).name) for f in figures if f],
            "summary": {
                "slices": int(truth.shape[0]),
                "image_size": cfg["data"]["size"],
                "posterior_samples": cfg["sampling"]["samples"],
            },  # fmt: skip
        }

    @staticmethod
    def _label(cfg: Mapping[str, Any], name: str) -> str:
        if name == "mri":
            m = cfg["mri"]
            return f"{m['acceleration']}x {m['mask']} mask, center {m['center_fraction']}"
        c = cfg["ct"]
        if c["geometry"] == "sparse_view":
            return f"{c['n_views']} views, parallel beam"
        return f"{c['n_views']} views over {c['max_angle']} deg, parallel beam"
