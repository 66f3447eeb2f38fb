"""End-to-end tiny run of the generic pipeline (PDE domain) through Snakemake, and the CLI's
handling of bad configs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).resolve().parents[1] / "domains" / "pde" / "tiny.yaml"
# The venv's snakemake (pytest may run as .venv/bin/python without .venv/bin on PATH).
_BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
ENV = {**os.environ, "PATH": f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed")
def test_pde_pipeline_end_to_end(tmp_path):
    r = subprocess.run(
        [
            SNAKEMAKE,
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--cores",
            "2",
            "pde",
            "--config",
            f"pde_config={TINY}",
            "domains=[pde]",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=ENV,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = tmp_path / "results" / "pde"
    metrics = json.loads((res / "metrics.json").read_text())
    table = metrics["tables"]["Burgers forecast, nx=32"]
    assert {"persistence", "fno", "diffusion (ens. mean)"} <= set(table)
    da = metrics["tables"]["Burgers assimilation (sparse noisy sensors), nx=32"]
    assert {"interpolation of sensors", "diffusion DA (ens. mean)"} <= set(da)
    ev = json.loads((res / "predictions" / "events.json").read_text())
    assert 0 <= ev["p_solver_monte_carlo"] <= 1 and ev["n_solver"] == 16 and ev["n_model"] == 4
    assert metrics["provenance"]["config"]["train"]["steps"] == 30
    assert len(list((res / "tables").glob("*.csv"))) >= 2  # the tables + summary.csv
    assert (res / "checkpoints" / "last.pt").is_file()
    for log in ("prepare", "train", "baselines", "infer", "evaluate", "report"):
        assert (tmp_path / "logs" / "pde" / f"{log}.log").is_file()
    # Snakemake's own report holds the domain's figures and metric tables
    r = subprocess.run(
        [
            SNAKEMAKE,
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            str(tmp_path),
            "pde",
            "--config",
            f"pde_config={TINY}",
            "domains=[pde]",
            "--report",
            "report.html",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    html = (tmp_path / "report.html").read_text()
    names = [p.name for p in (res / "figures").glob("*.png")] + [
        p.name for p in (res / "tables").glob("*.csv")
    ]
    assert names and all(n in html for n in names), names
    # Retraining under another model setting must not silently continue the old checkpoint
    # (same architecture, so the weights would load): a clear error, the model left as it was.
    other = tmp_path / "other.yaml"
    other.write_text(TINY.read_text().replace("model:\n", "model:\n  sigma_data: 0.7\n"))
    before = (res / "model.pt").read_bytes()
    r = _cli("train", "--domain", "pde", "--config", str(other), "--workdir", str(res), "--quiet")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "model.sigma_data: checkpoint 0.5 vs now 0.7" in r.stderr
    assert str(res / "checkpoints") in r.stderr
    assert (res / "model.pt").read_bytes() == before


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "diffsci.core.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )


def test_config_failing_schema_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("nt: 8", "nt: two"))
    r = _cli("prepare", "--domain", "pde", "--config", str(bad), "--workdir", str(tmp_path / "w"))
    assert r.returncode != 0
    assert "data/nt" in r.stderr and "bad.yaml" in r.stderr
    assert not (tmp_path / "w" / "data").exists()


def test_unknown_domain_and_missing_model(tmp_path):
    r = _cli("prepare", "--domain", "nope", "--config", str(TINY), "--workdir", str(tmp_path))
    assert r.returncode != 0 and "unknown domain 'nope'" in r.stderr
    r = _cli("infer", "--domain", "pde", "--config", str(TINY), "--workdir", str(tmp_path))
    assert r.returncode != 0 and "model.pt" in r.stderr
    assert not (tmp_path / "predictions").exists()
