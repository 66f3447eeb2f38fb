"""Fixtures of the PDE domain tests."""

from __future__ import annotations

import pytest

from diffsci.core.stages import validate_config
from diffsci.domains.pde.task import SCHEMA


def small_cfg(**model):
    """A validated config on a 8 x 32 grid; ``model`` keys override the defaults."""
    cfg = {
        "data": {
            "nu": 0.01,
            "t_end": 1.0,
            "nt": 8,
            "train_nx": [32],
            "eval_nx": [32],
            "n_train": 4,
            "n_test": 2,
        },
        "model": model,
        "train": {"steps": 1, "batch_size": 1},
        "sampling": {},
    }
    validate_config(cfg, SCHEMA)
    return cfg


@pytest.fixture
def make_cfg():
    """``make_cfg(**model)``: :func:`small_cfg`."""
    return small_cfg
