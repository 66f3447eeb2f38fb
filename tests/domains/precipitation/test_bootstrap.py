"""Case bootstrap of the pooled pixel EMD and 99.9th-percentile error (issue 24): a resample
weights whole cases, and its scores equal the metrics recomputed on the repeated cases."""

from __future__ import annotations

import numpy as np
import pytest

from diffsci.domains.precipitation import metrics


def _fields(rng, shape, scale=1.0):
    # intermittent, heavy-tailed, with exact zeros (ties), like precipitation
    return np.maximum(scale * rng.lognormal(size=shape) - 1.5, 0).astype(np.float32)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    n = 6
    return (
        _fields(rng, (4, n, 16, 16)),
        _fields(rng, (3, n, 16, 16), 1.3),
        _fields(rng, (n, 16, 16)),
    )


def test_unit_weights_reproduce_the_metrics(data):
    ens, _, obs = data
    emd, pq, *_ = metrics._Pooled(ens, obs).scores(np.ones(obs.shape[0], np.int64), 99.9)
    assert emd == pytest.approx(metrics.pixel_emd(ens, obs), rel=1e-9)
    assert pq == pytest.approx(metrics.percentile_error(ens, obs, 99.9), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("idx", [[0, 0, 3, 5, 5, 5], [1, 2, 2, 4, 0, 3], [2, 2, 2, 2, 2, 2]])
def test_a_resample_equals_the_metrics_on_the_repeated_cases(data, idx):
    """A case drawn twice counts twice in the pooled pixels (not once: a set of distinct cases
    would fail this)."""
    ens, _, obs = data
    counts = np.bincount(idx, minlength=obs.shape[0]).astype(np.int64)
    emd, pq, *_ = metrics._Pooled(ens, obs).scores(counts, 99.9)
    assert emd == pytest.approx(metrics.pixel_emd(ens[:, idx], obs[idx]), rel=1e-9)
    want = metrics.percentile_error(ens[:, idx], obs[idx], 99.9)
    assert pq == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_resamples_are_paired_and_seeded(data):
    ens_a, ens_b, obs = data
    same = metrics.case_bootstrap(ens_a, ens_a, obs, n_boot=30, seed=1)
    # the same cases for both predictions: identical predictions differ by exactly 0
    np.testing.assert_array_equal(same["emd_a"], same["emd_b"])
    np.testing.assert_array_equal(same["pq_a"], same["pq_b"])
    r1 = metrics.case_bootstrap(ens_a, ens_b, obs, n_boot=30, seed=1)
    r2 = metrics.case_bootstrap(ens_a, ens_b, obs, n_boot=30, seed=1)
    np.testing.assert_array_equal(r1["emd_b"], r2["emd_b"])
    assert np.std(r1["emd_a"]) > 0  # resamples differ from each other
    # the bootstrap spreads around the full-sample value
    full = metrics.pixel_emd(ens_b, obs)
    assert np.percentile(r1["emd_b"], 2.5) < full < np.percentile(r1["emd_b"], 97.5)


def test_shape_mismatch_is_refused(data):
    ens, _, obs = data
    with pytest.raises(ValueError, match="do not match"):
        metrics.case_bootstrap(ens, ens, obs[:-1], n_boot=2)
