"""The core demo end to end (tiny) and the CLI's error handling."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py

from diffsci.core.demo import DemoConfig, run_demo


def test_demo_learns_the_mixture(tmp_path):
    cfg = DemoConfig(n_train=4000, n_eval=1000, steps=600, batch_size=256, hidden=64, depth=3)
    m = run_demo(tmp_path, cfg, progress=False)
    for name in (
        "samples.h5",
        "metrics.json",
        "demo.png",
        "provenance.json",
        "train_metrics.jsonl",
    ):
        assert (tmp_path / name).is_file(), name
    with h5py.File(tmp_path / "samples.h5") as f:
        assert f["learned"].shape == (1000, 2)
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["seed"] == 0 and "torch" in prov["versions"] and prov["config"]["steps"] == 600
    # An untrained (or broken) model's samples sit at energy distance ~1 from the ring; 600
    # steps bring it within a small multiple of the finite-sample floor.
    assert m["energy_distance_learned"] < 0.1, m
    assert m["energy_distance_exact_denoiser"] < 0.02, m


def test_cli_bad_argument_exits_nonzero(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffsci.core.cli",
            "demo",
            "--out",
            str(tmp_path),
            "--sampler",
            "nope",
            "--steps",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0
    assert "unknown sampler 'nope'" in r.stderr
    assert not (tmp_path / "metrics.json").exists()
