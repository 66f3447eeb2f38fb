"""Preemption at the CLI level: `diffsci train` interrupted by SIGUSR1 (what SLURM sends with
`--signal=USR1@600`) checkpoints and exits 75; a rerun resumes and ends with the same weights
as an uninterrupted run. Plus the workflow's clear errors for bad resources."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from diffsci.core.modelfile import load_model_file

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).resolve().parents[1] / "domains" / "pde" / "tiny.yaml"
_BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
# One torch thread per process: the suite runs two workers on two cores.
ENV = {
    **os.environ,
    "PATH": f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    "OMP_NUM_THREADS": "1",
}
STEPS = 16


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "diffsci.core.cli", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _train(cfg: Path, workdir: Path) -> subprocess.Popen:
    return _cli(
        "train", "--domain", "pde", "--config", str(cfg), "--workdir", str(workdir), "--quiet"
    )


def _weights(workdir: Path) -> dict[str, torch.Tensor]:
    return load_model_file(workdir / "model.pt").state_dict


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny config with enough steps to interrupt, and its prepared data."""
    root = tmp_path_factory.mktemp("preempt")
    cfg = yaml.safe_load(TINY.read_text())
    cfg["train"].update(steps=STEPS, ckpt_every=4, log_every=4)
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = _cli(
        "prepare", "--domain", "pde", "--config", str(path), "--workdir", str(root / "w"), "--quiet"
    )
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return path, root / "w" / "data"


def _workdir(base: Path, data: Path) -> Path:
    base.mkdir()
    shutil.copytree(data, base / "data")
    return base


def test_sigusr1_checkpoints_exits_75_and_resume_matches(prepared, tmp_path):
    cfg, data = prepared
    ref = _workdir(tmp_path / "ref", data)
    run = _workdir(tmp_path / "run", data)
    p_ref = _train(cfg, ref)  # the uninterrupted reference, alongside (start-up dominates)
    p = _train(cfg, run)
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first periodic checkpoint: training is under way
    assert p.poll() is None, "training ended before it could be interrupted"
    p.send_signal(signal.SIGUSR1)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 75, err  # EX_TEMPFAIL: "retry me"
    step = torch.load(last, map_location="cpu", weights_only=True)["step"]
    assert 0 < step < STEPS
    assert not (run / "model.pt").exists()  # no output that looks complete

    _, err = p_ref.communicate(timeout=300)
    assert p_ref.returncode == 0, err

    p = _train(cfg, run)  # the retry: resumes from last.pt
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert torch.load(last, map_location="cpu", weights_only=True)["step"] == STEPS
    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from uninterrupted"


@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed")
def test_unknown_resource_in_profile_is_named(tmp_path):
    prof = tmp_path / "profile"
    prof.mkdir()
    (prof / "config.yaml").write_text("set-resources:\n  train:\n    gpus: 1\n")
    r = subprocess.run(
        [
            SNAKEMAKE,
            "-s",
            str(ROOT / "Snakefile"),
            "--workflow-profile",
            str(prof),
            "-n",
            "--cores",
            "1",
            "pde",
            "--config",
            f"pde_config={TINY}",
            "domains=[pde]",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert r.returncode != 0
    assert "unknown resource(s) 'gpus'" in r.stdout + r.stderr
    assert "rule 'train'" in r.stdout + r.stderr


@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_rule_without_gpu_fails_clearly(prepared, tmp_path):
    cfg, data = prepared
    shutil.copytree(data, tmp_path / "results" / "pde" / "data")
    r = subprocess.run(
        [
            SNAKEMAKE,
            "-s",
            str(ROOT / "Snakefile"),
            "--cores",
            "1",
            "results/pde/model.pt",
            "--set-resources",
            "train:gpu=1",
            "--config",
            f"pde_config={cfg}",
            "domains=[pde]",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert r.returncode != 0
    msg = "resource gpu=1 (resources.gpu of rule train) but torch sees 0 CUDA device(s)"
    assert msg in r.stdout + r.stderr
    assert msg in (tmp_path / "logs" / "pde" / "train.log").read_text()
    assert not (tmp_path / "results" / "pde" / "model.pt").exists()
