"""The hyperspectral pipeline on a user's own cubes: ENVI files written by SPy (another
writer than ours) for training and a MATLAB .mat for testing, through the stages in-process;
``diffsci apply`` on a noisy ENVI scene (outputs netCDF + ENVI, wavelengths kept); and the
refusals (declared wavelengths, too few bands, dead bands): a message naming the file and
key, a non-zero exit, nothing half-written, the input unchanged."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import yaml
from workflow_env import BIN, ENV

from diffsci.core.stages import run_stage
from diffsci.domains.hyperspectral import io
from diffsci.domains.hyperspectral import simulate as sim

WL = np.linspace(420.0, 980.0, 12)


def _spy_envi(path: Path, cube: np.ndarray, wl: np.ndarray, map_info: str | None = None) -> Path:
    """An ENVI file as SPy writes it: BIP interleave, reflectance x 10000 as int16, um."""
    import spectral.io.envi as envi

    data = np.round(np.moveaxis(cube, 0, -1) * 10000).astype(np.int16)
    meta = {"wavelength": list(wl / 1000), "wavelength units": "Micrometers"}
    if map_info:
        meta["map info"] = map_info
    envi.save_image(str(path), data, interleave="bip", metadata=meta, force=True)
    return path


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hsi_user")
    x = sim.make_scenes(3, 32, WL, seed=5)
    train = [_spy_envi(root / f"train_{i}.hdr", x[i], WL) for i in range(2)]
    test = root / "test.mat"
    scipy.io.savemat(test, {"refl": np.moveaxis(x[2], 0, -1) * 10000})
    cfg = {
        "seed": 0,
        "device": "cpu",
        "source": {"kind": "files", "train": [str(p) for p in train], "test": [str(test)]},
        "files": {
            "variable": "refl",
            "wavelength": {"start": 420.0, "stop": 980.0},
            "bands": 12,
            "scale": 10000.0,
        },
        "data": {"patch": 16},
        "noise": {"cases": ["gaussian30", "stripe"]},
        "model": {"components": 3, "channels": [8, 16], "attention_levels": [False, False]},
        "train": {"steps": 2, "batch_size": 4, "ckpt_every": 2, "log_every": 1},
        "sampling": {"samples": 1, "steps": 2},
    }
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, path, cfg, x


@pytest.fixture(scope="module")
def trained(user_files):
    root, cfg_path, _, _ = user_files
    work = root / "run"
    for stage in ("prepare", "train", "infer", "evaluate"):
        run_stage(stage, domain="hyperspectral", config=cfg_path, workdir=work, progress=False)
    return work


def test_pipeline_on_the_users_files(trained, user_files):
    _, _, _, x = user_files
    import xarray as xr

    ds = xr.open_dataset(trained / "data" / "test" / "cube_000.nc", engine="h5netcdf")
    np.testing.assert_allclose(ds["wavelength"].values, WL, atol=1e-3)
    np.testing.assert_allclose(ds["clean"].values, x[2], atol=1e-6)  # scale 10000 undone
    import json

    m = json.loads((trained / "metrics.json").read_text())
    rows = m["tables"]["stripe: mean over held-out cubes (MPSNR/PSNR data range 1)"]
    assert rows["diffusion (subspace prior)"]["MPSNR"] > rows["noisy input"]["MPSNR"]
    card = json.loads((trained / "model_card.json").read_text())
    assert card["serves"]["trained_band_counts"] == [12]
    assert card["serves"]["trained_wavelength_nm"] == pytest.approx([420.0, 980.0], abs=1e-3)


def _apply(model: Path, inputs: list[Path], out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "diffsci"), "apply", "--domain", "hyperspectral", "--model", str(model)]
    cmd += ["--input", *map(str, inputs), "--output", str(out), "--device", "cpu", "--quiet"]
    cmd += list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)


def test_apply_to_a_noisy_envi_scene(trained, tmp_path):
    """A new scene in the training files' units (reflectance x 10000, int16, SPy-written) with
    another band count and sampling than trained on; the output keeps units and wavelengths."""
    from diffsci.domains.hyperspectral.metrics import mpsnr

    wl = np.linspace(430.0, 960.0, 20)
    x = sim.make_scenes(1, 24, wl, seed=9)[0]
    y, _ = sim.add_noise(x, "gaussian30", np.random.default_rng(0))
    src = _spy_envi(
        tmp_path / "scene.hdr",
        np.clip(y, 0, 3),
        wl,
        map_info="{UTM, 1, 1, 0, 0, 30, 30, 33, North}",
    )
    before = hashlib.sha256((tmp_path / "scene.img").read_bytes()).hexdigest()
    r = _apply(trained / "model.pt", [src], tmp_path / "out")
    assert r.returncode == 0, r.stderr[-2000:]
    back = io.read_cube(tmp_path / "out" / "scene_restored.nc")
    np.testing.assert_allclose(back["wavelength"].values, wl, atol=1e-3)
    assert back.shape == x.shape and np.isfinite(back.values).all()
    assert mpsnr(back.values / 10000, x) > mpsnr(np.clip(y, 0, 3), x) + 3
    envi_back = io.read_cube(tmp_path / "out" / "scene_restored.hdr")
    assert "UTM" in envi_back.attrs["map_info"]
    assert hashlib.sha256((tmp_path / "scene.img").read_bytes()).hexdigest() == before


def test_apply_super_resolution_with_a_sampling_override(trained, tmp_path):
    """``--set sampling.super_resolution=2``: the same prior, a cube twice as fine whose block
    means restore the low-resolution scene; the georeference follows the pixel size; the
    provenance records the override. Other sections and unknown keys are refused."""
    from diffsci.domains.hyperspectral.metrics import mpsnr

    x = sim.make_scenes(1, 16, WL, seed=12)[0]
    y, _ = sim.add_noise(x, "gaussian30", np.random.default_rng(2))
    src = _spy_envi(
        tmp_path / "low.hdr",
        np.clip(y, 0, 3),
        WL,
        map_info="{UTM, 1, 1, 500, 900, 30, 30, 33, North}",
    )
    out = tmp_path / "out"
    r = _apply(trained / "model.pt", [src], out, "--set", "sampling.super_resolution=2")
    assert r.returncode == 0, r.stderr[-2000:]
    fine = io.read_cube(out / "low_x2.hdr")
    assert fine.shape == (12, 32, 32) and np.isfinite(fine.values).all()
    means = fine.values.reshape(12, 16, 2, 16, 2).mean(axis=(2, 4)) / 10000
    assert mpsnr(means, x) > mpsnr(np.clip(y, 0, 3), x) + 3
    assert fine.attrs["map_info"].replace(" ", "") == "{UTM,1,1,500,900,15,15,33,North}"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["apply"]["sampling_overrides"] == {"super_resolution": 2}
    bad = _apply(trained / "model.pt", [src], tmp_path / "no1", "--set", "train.steps=5")
    assert bad.returncode == 2 and "only sampling.*" in bad.stderr
    bad = _apply(trained / "model.pt", [src], tmp_path / "no2", "--set", "sampling.nosuch=1")
    assert bad.returncode == 2 and "nosuch" in bad.stderr
    wide = _spy_envi(tmp_path / "wide.hdr", np.clip(np.tile(y, (1, 2, 2)), 0, 3), WL)
    tiled = ("--set", "sampling.super_resolution=2", "--set", "sampling.tile=16")
    bad = _apply(trained / "model.pt", [wide], tmp_path / "no3", *tiled)
    assert bad.returncode == 2 and "whole scenes" in bad.stderr
    assert not any((tmp_path / n).exists() for n in ("no1", "no2", "no3"))


def test_finer_map_info_keeps_the_ground_and_halves_the_pixel():
    from diffsci.domains.hyperspectral.task import finer_map_info

    got = finer_map_info("{UTM, 1.5, 2, 500, 900, 30, 20, 33, North, WGS-84}", 2)
    assert got == "{UTM, 2, 3, 500, 900, 15, 10, 33, North, WGS-84}"
    with pytest.raises(ValueError, match="not an ENVI map info"):
        finer_map_info("{UTM}", 2)


def test_apply_refuses_a_cube_with_too_few_bands(trained, tmp_path):
    src = io.write_netcdf(
        io.make_cube(np.random.default_rng(0).random((3, 16, 16)), [450, 550, 650]),
        tmp_path / "rgb.nc",
    )
    r = _apply(trained / "model.pt", [src], tmp_path / "out")
    assert r.returncode != 0
    assert "rgb.nc: 3 bands, but the model's 3-dimensional subspace needs at least 4" in r.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_prepare_refuses_declared_wavelengths_that_differ(user_files, tmp_path):
    _, _, cfg, _ = user_files
    bad = {**cfg, "files": {**cfg["files"], "wavelength": {"start": 400.0, "stop": 980.0}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(
        io.CubeError,
        match=r"train_0\.hdr: wavelength of band 0 is 420\.00 nm in the file but 400\.00 nm is declared",
    ):
        run_stage(
            "prepare", domain="hyperspectral", config=path, workdir=tmp_path / "run", progress=False
        )
    assert not (tmp_path / "run" / "data").exists()


def test_prepare_refuses_a_dead_band_naming_file_and_band(user_files, tmp_path):
    root, _, cfg, x = user_files
    dead = x[0].copy()
    dead[4] = 0
    p = _spy_envi(tmp_path / "dead.hdr", dead, WL)
    bad = {**cfg, "source": {**cfg["source"], "train": [str(p)]}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(
        io.CubeError,
        match=r"dead\.hdr: variable 'reflectance': dead bands 4 \(623\.6 nm, all zero\).*files\.bad_bands: mask",
    ):
        run_stage(
            "prepare", domain="hyperspectral", config=path, workdir=tmp_path / "run", progress=False
        )


def test_apply_tiled_writes_a_zarr_store_block_by_block(trained, tmp_path):
    """A scene larger than sampling.tile: read lazily from ENVI, restored tile by tile (core
    tiling, overlaps blended) into a zarr store in the file's units."""
    import json

    import torch

    from diffsci.core.stages import load_model
    from diffsci.core.task import Runtime, get_task
    from diffsci.domains.hyperspectral.metrics import mpsnr

    task = get_task("hyperspectral")
    card = json.loads((trained / "model_card.json").read_text())
    cfg = json.loads(json.dumps(card["config"]))
    cfg["sampling"].update(tile=32, overlap=8)
    model = load_model(task, cfg, trained / "model.pt")
    wl = np.linspace(420.0, 980.0, 12)
    x = sim.make_scenes(1, 80, wl, seed=4)[0][:, :48]
    y, _ = sim.add_noise(x, "gaussian30", np.random.default_rng(1))
    src = _spy_envi(tmp_path / "wide.hdr", np.clip(y, 0, 3), wl)
    out = tmp_path / "out"
    out.mkdir()
    task.apply(cfg, model, card, [src], out, Runtime(torch.device("cpu")))
    back = io.read_cube(out / "wide_restored.zarr")
    assert back.shape == x.shape and back.chunks[1][0] == 32
    np.testing.assert_allclose(back["wavelength"].values, wl, atol=1e-3)
    assert mpsnr(back.values / 10000, x) > mpsnr(np.clip(y, 0, 3), x) + 3


def test_prepare_refuses_bm4d_when_its_optional_package_is_missing(
    user_files, tmp_path, monkeypatch
):
    from diffsci.domains.hyperspectral import baselines

    _, _, cfg, _ = user_files
    monkeypatch.setattr(baselines, "have_bm4d", lambda: False)
    path = tmp_path / "bm4d.yaml"
    path.write_text(yaml.safe_dump({**cfg, "baselines": {"bm4d": True}}))
    with pytest.raises(ImportError, match=r"baselines\.bm4d.*diffsci\[bm4d\].*non-commercial"):
        run_stage(
            "prepare", domain="hyperspectral", config=path, workdir=tmp_path / "run", progress=False
        )
    assert not (tmp_path / "run" / "data").exists()
