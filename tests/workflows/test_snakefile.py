"""The top-level Snakefile parses, lints clean and its DAG resolves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The venv's snakemake (pytest may run as .venv/bin/python without .venv/bin on PATH).
_BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
ENV = {**os.environ, "PATH": f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

pytestmark = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed")


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=ENV
    )


def test_dry_run_resolves_dag(tmp_path):
    """The whole DAG resolves from scratch, whatever the working tree holds (a finished
    `make demo` leaves results/ there, where a dry run would find nothing to do)."""
    (tmp_path / "workflows").symlink_to(ROOT / "workflows")
    r = _run(
        "-s", str(ROOT / "Snakefile"), "--dry-run", "--cores", "1", "--quiet", "rules", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert "core_demo" in r.stdout + r.stderr


def test_lint_clean():
    r = _run("--lint")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Lints for" not in r.stdout, r.stdout


def test_signal_lead_longer_than_runtime_is_refused():
    """A profile whose --signal lead time exceeds the train runtime would signal at once."""
    r = _run(
        "--dry-run",
        "--cores",
        "1",
        "results/pde/model.pt",
        "--set-resources",
        "train:runtime=5",
        "train:slurm_extra='--signal=USR1@600'",
        "--config",
        "domains=[pde]",
    )
    assert r.returncode != 0
    assert "rule train: runtime=5 min" in r.stdout + r.stderr
