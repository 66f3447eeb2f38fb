"""A model file a colleague sends cannot run code (issue 25): every command that opens a model
refuses a crafted one, exits non-zero, and the crafted code never runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.core.test_modelfile import write_malicious_model
from tests.workflow_env import ENV

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, env=ENV
    )


@pytest.fixture()
def evil(tmp_path):
    marker = tmp_path / "pwned"
    work = tmp_path / "work"
    work.mkdir()
    return write_malicious_model(work / "model.pt", marker), marker


def _refused(r: subprocess.CompletedProcess, model: Path, marker: Path) -> None:
    assert r.returncode != 0, r.stdout
    assert f"{model}: refused: the file holds pickled Python objects" in r.stderr, r.stderr
    assert "diffsci convert-model" in r.stderr
    assert not marker.exists()


def test_apply_refuses_a_crafted_model(evil, tmp_path):
    model, marker = evil
    (tmp_path / "x.h5").write_bytes(b"")
    r = _run(
        "-m",
        "diffsci.core.cli",
        "apply",
        "--domain",
        "pde",
        "--model",
        str(model),
        "--input",
        str(tmp_path / "x.h5"),
        "--output",
        str(tmp_path / "out"),
    )
    _refused(r, model, marker)
    assert not (tmp_path / "out").exists()


def test_infer_refuses_a_crafted_model(evil):
    model, marker = evil
    config = ROOT / "tests" / "domains" / "pde" / "tiny.yaml"
    r = _run(
        "-m",
        "diffsci.core.cli",
        "infer",
        "--domain",
        "pde",
        "--config",
        str(config),
        "--workdir",
        str(model.parent),
    )
    _refused(r, model, marker)
    assert not (model.parent / "predictions").exists()


def test_the_downscale_cli_refuses_a_crafted_model(evil, tmp_path):
    model, marker = evil
    r = _run(
        "-m",
        "diffsci.domains.precipitation.downscale",
        "--model",
        str(model),
        "--stats",
        str(tmp_path / "stats.json"),
        "--input",
        str(tmp_path / "in.nc"),
        "--output",
        str(tmp_path / "out.zarr"),
    )
    _refused(r, model, marker)
    assert not (tmp_path / "out.zarr").exists()


def test_convert_model_refuses_a_crafted_model_too(evil, tmp_path):
    model, marker = evil
    r = _run("-m", "diffsci.core.cli", "convert-model", str(model), str(tmp_path / "new.pt"))
    assert r.returncode == 2 and "never unpickles" in r.stderr, r.stderr
    assert not marker.exists() and not (tmp_path / "new.pt").exists()
