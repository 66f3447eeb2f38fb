"""The task's data folder: simulated or user acquisitions as zea files, training patches.

Written by ``prepare`` (all atomic):

- ``train.h5``: tissue and haze IQ patches ``(N, 2, p, p)`` in model units (IQ / ``scale``);
- ``test_hazy.hdf5`` / ``test_clean.hdf5``: the held-out hazy channel data and their clean
  truth as zea files (current layout; the clean file also holds the beamformed clean IQ);
- ``sequence_hazy.hdf5`` / ``sequence_clean.hdf5``: a moving phantom (if enabled);
- ``meta.json``: the scale, the grid, the probe, the haze weight, every frame's ROIs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffsci.core.fileio import atomic_path, open_hdf5

from . import io
from .operators import DelayAndSum, beamform_iq
from .simulate import (
    ImageGrid,
    LinearArray,
    Phantom,
    diverging_wave_scan,
    haze_rf,
    moving_phantoms,
    n_samples,
    plane_wave_scan,
    simulate_frames,
    simulate_rf,
    speckle_phantom,
)

__all__ = [
    "setup",
    "grid_for",
    "beamform",
    "prepare_simulated",
    "prepare_files",
    "read_train",
    "read_meta",
    "acquisition",
]


def setup(cfg: Mapping[str, Any]) -> tuple[LinearArray, io.Scan, ImageGrid]:
    """The simulated probe, its transmit sequence and the pixel grid of the config."""
    probe = LinearArray(**cfg["probe"])
    a = cfg["acquisition"]
    if a["diverging_source_depth"] is None:
        scan = plane_wave_scan(probe, a["angles_deg"])
    else:
        scan = diverging_wave_scan(probe, a["angles_deg"], a["diverging_source_depth"])
    return probe, scan, grid_for(cfg, probe.wavelength)


def grid_for(cfg: Mapping[str, Any], wavelength: float) -> ImageGrid:
    g = cfg["grid"]
    d = g["spacing_wavelengths"] * wavelength
    return ImageGrid.regular(g["nz"], g["nx"], d, d, g["z0"])


def beamform(acq: io.Acquisition, grid: ImageGrid, f_number: float) -> Tensor:
    """Beamformed complex IQ ``(n_frames, nz, nx)`` of an acquisition's RF or IQ data."""
    raw = torch.from_numpy(np.asarray(acq.raw_data, np.float64))  # (F, T, A, E, C)
    if raw.shape[-1] == 1:
        return beamform_iq(raw[..., 0], acq.scan, grid, f_number=f_number)
    das = DelayAndSum(acq.scan, grid, raw.shape[2], f_number=f_number, iq=True)
    return das(torch.complex(raw[..., 0], raw[..., 1]))


def acquisition(
    raw: Tensor, scan: io.Scan, description: str, products: dict | None = None
) -> io.Acquisition:
    """An :class:`~.io.Acquisition` of RF frames ``(F, n_tx, n_ax, n_el)``."""
    return io.Acquisition(
        raw_data=raw.numpy()[..., None].astype(np.float32),
        scan=scan,
        products=products or {},
        probe_name="diffsci linear array",
        us_machine="diffsci simulator",
        description=description,
    )


def _iq_product(iq: Tensor, grid: ImageGrid, description: str) -> io.Product:
    vals = torch.stack([iq.real, iq.imag], -1).numpy().astype(np.float32)
    return io.Product(vals, grid.coordinates(), "-", description)


def _phantoms(
    cfg: Mapping[str, Any], probe: LinearArray, grid: ImageGrid, n: int, seed: int
) -> list[Phantom]:
    rng = np.random.default_rng(seed)
    p = cfg["phantom"]
    margin = 2e-3
    xs = (float(grid.x[0]) - margin, float(grid.x[-1]) + margin)
    zs = (float(grid.z[0]) - 0.5e-3, float(grid.z[-1]) + margin)
    return [
        speckle_phantom(
            probe,
            rng,
            x_span=xs,
            z_span=zs,
            n_cysts=p["n_cysts"],
            n_points=p["n_points"],
            per_cell=p["per_cell"],
            radius=tuple(p["radius"]),
            layers=(cfg["haze"]["layer_depth"] * 0.75, cfg["haze"]["layer_depth"] * 1.25),
        )
        for _ in range(n)
    ]


def _haze_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    h = cfg["haze"]
    keys = (
        "layer_depth",
        "reflection",
        "orders",
        "jitter",
        "diffuse",
        "clutter_depth",
        "clutter_correlation",
        "clutter_frequency",
        "clutter_bandwidth",
    )
    return {k: h[k] for k in keys}


def _simulate(cfg, probe, scan, grid, phantoms, seed):
    n_ax = n_samples(scan, grid, probe)
    frames = []
    for i in range(0, len(phantoms), 4):  # a few frames at a time bounds the memory
        frames.append(
            simulate_frames(
                probe,
                scan,
                phantoms[i : i + 4],
                n_ax,
                haze_weight=cfg["haze"]["weight"],
                seed=seed + i,
                haze_options=_haze_options(cfg),
            )
        )
    cat = lambda k: torch.cat([getattr(f, k) for f in frames])  # noqa: E731
    return cat("clean"), cat("haze"), cat("hazy")


def _patches(
    x: Tensor, h: Tensor, patch: int, per_frame: int, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """Random co-located ``patch x patch`` crops of the tissue and haze frames."""
    n, _, nz, nx = x.shape
    if patch > min(nz, nx):
        raise ValueError(f"data.patch={patch} is larger than the grid ({nz} x {nx})")
    xs, hs = [], []
    for i in range(n):
        for _ in range(per_frame):
            r, c = rng.integers(0, nz - patch + 1), rng.integers(0, nx - patch + 1)
            xs.append(x[i, :, r : r + patch, c : c + patch])
            hs.append(h[i, :, r : r + patch, c : c + patch])
    return torch.stack(xs), torch.stack(hs)


def _to_channels(iq: Tensor, scale: float) -> Tensor:
    return torch.stack([iq.real, iq.imag], 1).float() / scale


def _write_train(path: Path, tissue: Tensor, haze: Tensor, scale: float) -> None:
    import h5py

    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("tissue", data=tissue.numpy(), compression="gzip")
        f.create_dataset("haze", data=haze.numpy(), compression="gzip")
        f.attrs["scale"] = scale
        f.attrs["description"] = "IQ patches (I, Q) in model units: beamformed IQ / scale"


def read_train(path: Path) -> tuple[Tensor, Tensor, float]:
    with open_hdf5(path, what="training patches") as f:
        return (
            torch.from_numpy(f["tissue"][()]),
            torch.from_numpy(f["haze"][()]),
            float(f.attrs["scale"]),
        )


def _write_json(path: Path, obj: Any) -> None:
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=1))


def read_meta(data_dir: Path) -> dict[str, Any]:
    return json.loads((Path(data_dir) / "meta.json").read_text())


def _rois(phantoms: Sequence[Phantom]) -> list[dict[str, Any]]:
    return [
        {"cysts": [vars(c) for c in p.cysts], "points": [list(q) for q in p.points]}
        for p in phantoms
    ]


def _meta(
    cfg, scale: float, grid: ImageGrid, scan: io.Scan, haze_std: float, rois, seq_rois=None
) -> dict:
    return {
        "scale": scale,
        "haze_std_model_units": haze_std,
        "haze_weight": cfg["haze"]["weight"],
        "grid": {"x": grid.x.tolist(), "z": grid.z.tolist()},
        "center_frequency": scan.center_frequency,
        "sampling_frequency": scan.sampling_frequency,
        "sound_speed": scan.sound_speed,
        "n_el": scan.n_el,
        "n_tx": scan.n_tx,
        "rois": rois,
        "sequence_rois": seq_rois,
    }


def _write_pair(data_dir: Path, stem: str, frames, scan, grid, f_number: float) -> None:
    clean, _, hazy = frames
    clean_iq = beamform_iq(clean, scan, grid, f_number=f_number)
    prod = {"beamformed_data": _iq_product(clean_iq, grid, "clean beamformed IQ (truth)")}
    io.write_zea(data_dir / f"{stem}_clean.hdf5", acquisition(clean, scan, "clean truth", prod))
    io.write_zea(data_dir / f"{stem}_hazy.hdf5", acquisition(hazy, scan, "hazy input"))


def prepare_simulated(cfg: Mapping[str, Any], data_dir: Path) -> None:
    """Simulated training patches, held-out hazy frames with their truth, optional sequence."""
    probe, scan, grid = setup(cfg)
    d, seed, fnum = cfg["data"], int(cfg["seed"]), cfg["acquisition"]["f_number"]
    train = _simulate(cfg, probe, scan, grid, _phantoms(cfg, probe, grid, d["n_train"], seed), seed)
    x_iq = beamform_iq(train[0], scan, grid, f_number=fnum)
    h_iq = beamform_iq(train[1], scan, grid, f_number=fnum)
    scale = float(torch.cat([x_iq.real, x_iq.imag]).std()) / cfg["model"]["sigma_data_tissue"]
    x, h = _to_channels(x_iq, scale), _to_channels(h_iq, scale)
    tissue, haze = _patches(
        x, h, d["patch"], d["patches_per_frame"], np.random.default_rng(seed + 1)
    )
    _write_train(data_dir / "train.h5", tissue, haze, scale)
    test_ph = _phantoms(cfg, probe, grid, d["n_test"], seed + 10_000)
    _write_pair(
        data_dir,
        "test",
        _simulate(cfg, probe, scan, grid, test_ph, seed + 10_000),
        scan,
        grid,
        fnum,
    )
    seq_rois = None
    s = cfg["sequence"]
    if s["enabled"]:
        base = _phantoms(cfg, probe, grid, 1, seed + 20_000)[0]
        seq = moving_phantoms(base, s["frames"], period=max(s["frames"], 4))
        frames = _simulate(cfg, probe, scan, grid, seq, seed + 20_000)
        _write_pair(data_dir, "sequence", frames, scan, grid, fnum)
        seq_rois = _rois(seq)
    meta = _meta(cfg, scale, grid, scan, float(h.std()), _rois(test_ph), seq_rois)
    _write_json(data_dir / "meta.json", meta)


def _check_same_geometry(acqs: Sequence[tuple[Path, io.Acquisition]]) -> None:
    p0, a0 = acqs[0]
    for p, a in acqs[1:]:
        for key in ("n_el", "n_tx", "sampling_frequency", "center_frequency"):
            v0, v = getattr(a0.scan, key), getattr(a.scan, key)
            if not np.isclose(v0, v):
                raise ValueError(
                    f"{p}: {key} is {v} but {p0} has {v0}; one run serves one probe and transmit "
                    "sequence: split the files into runs of the same acquisition settings"
                )


def prepare_files(cfg: Mapping[str, Any], files: Any, data_dir: Path) -> None:
    """The user's zea / PICMUS files: train files (haze-free) give tissue patches, haze is
    simulated with their geometry for the haze prior; test files are the hazy inputs."""
    read = [(Path(p), io.read_acquisition(p)) for p in (*files.train, *files.test)]
    if any(a.raw_data is None for _, a in read):
        bad = next(p for p, a in read if a.raw_data is None)
        raise ValueError(f"{bad}: no raw_data (channel data) to beamform")
    _check_same_geometry(read)
    scan = read[0][1].scan
    grid = grid_for(cfg, scan.sound_speed / scan.center_frequency)
    fnum, seed, d = cfg["acquisition"]["f_number"], int(cfg["seed"]), cfg["data"]
    x_iq = torch.cat([beamform(a, grid, fnum) for _, a in read[: len(files.train)]])
    probe = LinearArray(
        n_el=scan.n_el,
        pitch=float(np.median(np.diff(scan.probe_geometry[:, 0]))),
        element_width=scan.element_width or float(np.median(np.diff(scan.probe_geometry[:, 0]))),
        center_frequency=scan.center_frequency,
        sampling_frequency=scan.sampling_frequency,
        sound_speed=scan.sound_speed,
        bandwidth=cfg["probe"]["bandwidth"],
    )
    shallow_ph = _phantoms(cfg, probe, grid, x_iq.shape[0], seed + 5)
    n_ax = read[0][1].raw_data.shape[2]
    spos = torch.tensor(np.stack([p.positions[p.shallow] for p in shallow_ph]), dtype=torch.float32)
    samp = torch.tensor(
        np.stack([p.amplitudes[p.shallow] for p in shallow_ph]), dtype=torch.float32
    )
    shallow = simulate_rf(probe, scan, spos, samp, n_ax=n_ax)
    haze = haze_rf(probe, scan, shallow, torch.Generator().manual_seed(seed), **_haze_options(cfg))
    h_iq = beamform_iq(haze, scan, grid, f_number=fnum)
    scale = float(torch.cat([x_iq.real, x_iq.imag]).std()) / cfg["model"]["sigma_data_tissue"]
    h_iq = h_iq / h_iq.abs().pow(2).mean().sqrt() * x_iq.abs().pow(2).mean().sqrt()
    x, h = _to_channels(x_iq, scale), _to_channels(h_iq, scale)
    tissue, hz = _patches(x, h, d["patch"], d["patches_per_frame"], np.random.default_rng(seed + 1))
    _write_train(data_dir / "train.h5", tissue, hz, scale)
    test = [a for _, a in read[len(files.train) :]]
    raw = np.concatenate([a.raw_data for a in test])
    io.write_zea(data_dir / "test_hazy.hdf5", io.with_raw(test[0], raw))
    _write_json(data_dir / "meta.json", _meta(cfg, scale, grid, scan, float(h.std()), None))
