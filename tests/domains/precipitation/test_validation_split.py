"""The validation split (issue 24): its own random stream, the domain's orography, and the
held-out cases unchanged by it; infer/evaluate score it only when asked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffsci.domains.precipitation import simulate
from diffsci.domains.precipitation.task import _eval_path

KW = {"factor": 8, "slope": 3.0}


def test_validation_cases_are_apart_and_share_the_orography():
    train, test = simulate.make_split(6, 3, 32, seed=4, **KW)
    val = simulate.make_validation(3, 32, seed=4, **KW)
    # the held-out cases are what they were before the split existed
    ref = simulate.make_dataset(3, 32, seed=4 + simulate.TEST_SEED_OFFSET, oro_seed=4, **KW)
    np.testing.assert_array_equal(test["output"].values, ref["output"].values)
    np.testing.assert_array_equal(val["invariant"].values, test["invariant"].values)
    v = val["output"].values
    for other in (train["output"].values, test["output"].values):
        for case in v:
            assert not any(np.array_equal(case, o) for o in other)
    # a different seed gives different validation cases
    v5 = simulate.make_validation(3, 32, seed=5, **KW)["output"].values
    assert not np.array_equal(v, v5)


def test_prepare_writes_validation_and_evaluate_split_selects_it(tmp_path):
    from diffsci.core.stages import validate_config
    from diffsci.domains.precipitation.task import PrecipitationTask

    cfg = {
        "seed": 0,
        "data": {"size": 32, "factor": 8, "n_train": 2, "n_test": 1, "n_val": 2},
        "model": {"channels": [8, 16], "attention_levels": [False, False]},
        "train": {"steps": 1, "batch_size": 2},
    }
    t = PrecipitationTask()
    validate_config(cfg, t.schema_path)
    t.prepare(cfg, tmp_path)
    assert _eval_path(cfg, tmp_path) == tmp_path / "test.zarr"
    val_cfg = json.loads(json.dumps(cfg))
    val_cfg["evaluate"]["split"] = "validation"
    assert _eval_path(val_cfg, tmp_path) == tmp_path / "validation.nc"
    (tmp_path / "validation.nc").unlink()
    with pytest.raises(FileNotFoundError, match="no validation split"):
        _eval_path(val_cfg, tmp_path)
