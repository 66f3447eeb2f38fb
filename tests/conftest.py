"""Test-suite settings shared by every test module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread per test: pytest-xdist already runs one worker per core, and two
    threads per worker on a 2-core machine makes small tensor ops 10-50x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "diffsci.core.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="session")
def diffsci_cli():
    """``diffsci_cli(*args)``: the ``diffsci`` CLI in a subprocess (one thread), captured."""
    return _run_cli


@pytest.fixture(scope="session")
def cli_pipeline():
    """``cli_pipeline(domain, cfg, root) -> (config_path, workdir)``: writes the config mapping
    to ``root/tiny.yaml`` and runs every stage through the CLI in ``root/work``; a failing
    stage fails the test with its stderr."""

    def run(domain: str, cfg: dict, root: Path) -> tuple[Path, Path]:
        path, work = root / "tiny.yaml", root / "work"
        path.write_text(yaml.safe_dump(cfg))
        for stage in ("prepare", "train", "baselines", "infer", "evaluate", "report"):
            r = _run_cli(
                stage, "--domain", domain, "--config", str(path), "--workdir", str(work), "--quiet"
            )
            assert r.returncode == 0, f"{domain} {stage}: {r.stderr[-3000:]}"
        return path, work

    return run
