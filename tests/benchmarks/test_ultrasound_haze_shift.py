"""The pure helpers of benchmarks/ultrasound_haze_shift.py: bootstrap CI, condition configs."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.ultrasound_haze_shift import CONDITIONS, bootstrap_mean_ci, condition_config


def test_bootstrap_ci_brackets_the_mean_and_shrinks_with_more_frames():
    rng = np.random.default_rng(0)
    few, many = rng.normal(0.5, 1.0, 4), rng.normal(0.5, 1.0, 400)
    lo, hi = bootstrap_mean_ci(few)
    assert lo <= few.mean() <= hi
    assert (lo, hi) == bootstrap_mean_ci(few)  # seeded
    lo2, hi2 = bootstrap_mean_ci(many)
    assert hi2 - lo2 < hi - lo
    assert lo2 < 0.5 < hi2  # covers the true mean here
    assert bootstrap_mean_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_mean_ci([])


def test_condition_config_changes_only_the_haze_and_copies():
    cfg = {"seed": 0, "haze": {"weight": 0.5, "orders": 6, "reflection": 0.6, "diffuse": 0.5}}
    out = condition_config(cfg, {"weight": 0.8})
    assert out["haze"]["weight"] == 0.8 and cfg["haze"]["weight"] == 0.5
    assert out["haze"]["orders"] == 6 and out["seed"] == 0
    for haze in CONDITIONS.values():
        condition_config(cfg, haze)  # every condition names real haze settings
    with pytest.raises(KeyError):
        condition_config(cfg, {"depth": 1.0})
