"""The ultrasound task end to end on the tiny config (in process, the stages the workflow
runs), the user's own zea / PICMUS files, ``diffsci apply`` and its refusals."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from workflow_env import ENV

from diffsci.core.modelcard import Incompatible
from diffsci.core.stages import (
    run_baselines,
    run_evaluate,
    run_infer,
    run_prepare,
    run_train,
    validate_config,
)
from diffsci.core.task import TaskPaths, get_task
from diffsci.domains.ultrasound import data, io, simulate

TINY = yaml.safe_load(Path(__file__).with_name("tiny.yaml").read_text())


def _cfg(**over) -> dict:
    task = get_task("ultrasound")
    cfg = copy.deepcopy(TINY)
    cfg.update(over)
    validate_config(cfg, task.schema_path)
    return cfg


def _run(
    cfg: dict, root: Path, stages=(run_prepare, run_train, run_baselines, run_infer, run_evaluate)
) -> TaskPaths:
    task, paths = get_task("ultrasound"), TaskPaths(root)
    for fn in stages:
        fn(task, cfg, paths, progress=False)
    return paths


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = _cfg()
    return cfg, _run(cfg, tmp_path_factory.mktemp("us"))


def test_tiny_chain_writes_zea_outputs_and_labelled_metrics(tiny_run):
    cfg, paths = tiny_run
    m = json.loads(paths.metrics.read_text())
    (title,) = [t for t in m["tables"] if t.startswith("Dehazing")]
    rows = m["tables"][title]
    assert {"clean (reference)", "no processing (hazy)", "Lee filter"} <= set(rows)
    assert "supervised UNet (hazy -> clean pairs)" in rows  # the trained baseline
    joint = rows["joint diffusion (tissue + haze priors)"]
    for key in (
        "gCNR anechoic",
        "CNR PICMUS/zea (dB)",
        "CNR DehazingEcho2025 (linear, signed)",
        "CNR |mu_s-mu_b|/sigma_b",
        "KS vs clean (tissue)",
        "B-mode PSNR (dB, DR 60 dB)",
    ):
        assert np.isfinite(joint[key]), key
    assert joint["network evaluations per frame"] == cfg["sampling"]["steps"]
    assert rows["clean (reference)"]["KS vs clean (tissue)"] == 0.0
    # SeqDiff: warm-started frames use fewer network evaluations than frames from noise
    (seq,) = [t for t in m["tables"] if t.startswith("Sequence")]
    cold = m["tables"][seq]["joint diffusion, every frame from noise"][
        "network evaluations per frame"
    ]
    warm = m["tables"][seq]["joint diffusion, SeqDiff warm start"]["network evaluations per frame"]
    n = cfg["sequence"]["frames"]
    assert warm == pytest.approx(
        (cfg["sampling"]["steps"] + (n - 1) * cfg["sequence"]["warm_steps"]) / n
    )
    assert warm < cold
    # the dehazed frames: a zea file any reader opens
    acq = io.read_zea(paths.predictions / "dehazed.hdf5")
    img = acq.products["image"]
    assert img.values.shape == (TINY["data"]["n_test"], 32, 32) and img.unit == "dB"
    assert img.values.max() <= 0 and img.coordinates.shape == (32, 32, 3)
    with h5py.File(paths.predictions / "dehazed.hdf5") as f:
        assert f["probe/probe_geometry"].shape == (32, 3)
    assert (paths.figures / "bmode_examples.png").is_file()


def test_model_card_and_check_inputs(tiny_run, tmp_path):
    cfg, paths = tiny_run
    card = json.loads((paths.model.with_name("model_card.json")).read_text())
    assert card["serves"]["n_el"] == 32 and card["serves"]["haze_weight"] == 0.5
    assert card["normalisation"]["scale"] > 0
    task = get_task("ultrasound")
    task.check_inputs(cfg, card, paths.data)  # its own data pass
    other = io.read_zea(paths.data / "test_hazy.hdf5")
    other.scan.center_frequency = 5e6
    io.write_zea(tmp_path / "test_hazy.hdf5", other)
    with pytest.raises(
        Incompatible, match=r"center_frequency is 5e\+06 Hz but the model serves 3\.5e\+06"
    ):
        task.check_inputs(cfg, card, tmp_path)


def _picmus_from(acq: io.Acquisition, path: Path) -> Path:
    one = io.Acquisition(acq.raw_data[:1], acq.scan, probe_name="x")
    return io.write_picmus(path, one)


def _apply(model: Path, out: Path, *inputs: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "diffsci.core.cli", "apply", "--domain", "ultrasound"]
    cmd += ["--model", str(model), "--input", *map(str, inputs), "--output", str(out)]
    cmd += ["--device", "cpu", "--quiet"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)


def test_apply_dehazes_a_picmus_file_and_refuses_bad_files(tiny_run, tmp_path):
    _, paths = tiny_run
    hazy = io.read_zea(paths.data / "test_hazy.hdf5")
    pic = _picmus_from(hazy, tmp_path / "mine_rf.hdf5")
    r = _apply(paths.model, tmp_path / "out", pic)
    assert r.returncode == 0, r.stderr[-3000:]
    out = io.read_zea(tmp_path / "out" / "mine_rf_dehazed.hdf5")
    assert out.products["envelope_data"].values.shape == (1, 32, 32)
    assert (tmp_path / "out" / "mine_rf_bmode.png").is_file()
    # NaN channel data: non-zero exit naming file and key, nothing written, input unchanged
    bad = tmp_path / "bad.hdf5"
    raw = hazy.raw_data.copy()
    io.write_zea(bad, io.with_raw(hazy, raw))
    with h5py.File(bad, "a") as f:
        f["tracks/track_0/data/raw_data"][0, 0, 5, 3, 0] = np.nan
    before = hashlib.sha256(bad.read_bytes()).hexdigest()
    r = _apply(paths.model, tmp_path / "out_bad", bad)
    assert r.returncode != 0
    assert "bad.hdf5" in r.stderr and "raw_data" in r.stderr and "NaN" in r.stderr
    assert not (tmp_path / "out_bad").exists()
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == before
    # another probe: refused by the card, naming what differs (in process: one CLI start less)
    probe = simulate.LinearArray(n_el=16)
    scan = simulate.plane_wave_scan(probe, [0.0])
    other = io.Acquisition(np.zeros((1, 1, 100, 16, 1), np.float32), scan)
    io.write_zea(tmp_path / "p16.hdf5", other)
    cfg = _cfg()
    task = get_task("ultrasound")
    card = json.loads(paths.model.with_name("model_card.json").read_text())
    with pytest.raises(
        Incompatible, match=r"p16\.hdf5: number of elements is 16 but the model serves 32"
    ):
        task.apply(cfg, None, card, [tmp_path / "p16.hdf5"], tmp_path / "out16", None)
    assert not (tmp_path / "out16").exists()


def test_users_files_train_and_evaluate(tmp_path):
    """``source: {kind: files}``: haze-free zea files train the tissue prior, a hazy PICMUS
    file is the test split (no truth: the no-reference table)."""
    cfg = _cfg()
    probe, scan, grid = data.setup(cfg)
    ph = data._phantoms(cfg, probe, grid, 3, seed=5)
    frames = simulate.simulate_frames(
        probe, scan, ph, simulate.n_samples(scan, grid, probe), haze_weight=0.5, seed=5
    )
    raw = tmp_path / "raw"
    for i in range(2):
        io.write_zea(
            raw / f"clean_{i}.hdf5",
            data.acquisition(frames.clean[i : i + 1], scan, "clean"),
            layout=("current", "legacy")[i],
        )
    io.write_picmus(raw / "hazy_dataset_rf.hdf5", data.acquisition(frames.hazy[2:], scan, "hazy"))
    src = {
        "kind": "files",
        "train": [str(raw / "clean_*.hdf5")],
        "test": [str(raw / "hazy_dataset_rf.hdf5")],
    }
    cfg = _cfg(
        source=src,
        train={**TINY["train"], "steps": 2},
        sequence={"enabled": False},
        baselines={"single_prior_dps": False},
    )
    paths = _run(cfg, tmp_path / "work")
    tissue, haze, _ = data.read_train(paths.data / "train.h5")
    assert tissue.shape[0] == 2 * TINY["data"]["patches_per_frame"] == haze.shape[0]
    m = json.loads(paths.metrics.read_text())
    (title,) = m["tables"]
    assert "no clean truth" in title
    assert set(m["tables"][title]) == {
        "no processing (hazy)",
        "Lee filter",
        "Wiener split (training spectra)",
        "supervised UNet (hazy -> clean pairs)",
        "joint diffusion (tissue + haze priors)",
    }
    card = json.loads(paths.model.with_name("model_card.json").read_text())
    assert card["data"]["source"] == "files"


def test_files_of_another_probe_are_refused_naming_the_file(tmp_path):
    for n_el in (32, 16):
        probe = simulate.LinearArray(n_el=n_el)
        scan = simulate.plane_wave_scan(probe, [0.0])
        acq = io.Acquisition(
            np.random.default_rng(0).standard_normal((1, 1, 300, n_el, 1)).astype(np.float32), scan
        )
        io.write_zea(tmp_path / f"p{n_el}.hdf5", acq)
    src = {
        "kind": "files",
        "train": [str(tmp_path / "p32.hdf5")],
        "test": [str(tmp_path / "p16.hdf5")],
    }
    with pytest.raises(ValueError, match=r"p16\.hdf5: n_el is 16 but .*p32\.hdf5 has 32"):
        _run(_cfg(source=src), tmp_path / "w", stages=(run_prepare,))
    assert not (tmp_path / "w" / "data").exists()  # nothing half-written
