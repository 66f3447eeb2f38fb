"""The precipitation benchmark's bar logic over seeds (issue 24): medians, "in at least 2 of
3 seeds", bootstrap intervals, every-seed bars."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.precipitation import paired_reduction, quality_bars, summarise


def _seed(p_red, e_red, p_ci=(0.1, 0.5), e_ci=(0.1, 0.5), crps=0.6, ss=1.0, psd=0.2):
    return {
        "crps_ratio": crps,
        "spread_skill": ss,
        "psd_dex": psd,
        # the difference on - off of a metric of off = 1: -reduction
        "p99.9_error": {"reduction": p_red, "ci95_difference_on_minus_off": [-p_ci[1], -p_ci[0]]},
        "emd": {"reduction": e_red, "ci95_difference_on_minus_off": [-e_ci[1], -e_ci[0]]},
    }


OK_CI = {"p99.9_error": [0.05, 0.4], "emd": [0.05, 0.4]}


def test_two_of_three_seeds_with_intervals_above_zero_pass():
    seeds = [_seed(0.3, 0.25), _seed(0.25, 0.3), _seed(-0.8, 0.1, p_ci=(-1.5, -0.2))]
    bars = quality_bars(seeds, OK_CI)
    assert bars["p99.9_error_ge_20pct_lower_with_sw"]
    assert bars["emd_ge_20pct_lower_with_sw"]
    assert all(bars.values())


def test_median_alone_is_not_enough():
    # median 0.3 but only one seed >= 20%: a median-only bar would pass
    seeds = [_seed(0.5, 0.3), _seed(0.3, 0.3), _seed(0.1, 0.3)]
    # this seed's gain is not resolved: its difference interval straddles zero
    seeds[1]["p99.9_error"]["ci95_difference_on_minus_off"] = [-0.6, 0.1]
    assert not quality_bars(seeds, OK_CI)["p99.9_error_ge_20pct_lower_with_sw"]
    assert quality_bars(seeds, OK_CI)["emd_ge_20pct_lower_with_sw"]


def test_median_below_bar_fails_even_with_two_seeds_passing():
    seeds = [_seed(0.25, 0.3), _seed(0.19, 0.3), _seed(0.21, 0.3)]
    assert quality_bars(seeds, OK_CI)["p99.9_error_ge_20pct_lower_with_sw"]
    seeds = [_seed(0.25, 0.3), _seed(0.1, 0.3), _seed(0.05, 0.3)]
    assert not quality_bars(seeds, OK_CI)["p99.9_error_ge_20pct_lower_with_sw"]


def test_median_interval_must_exclude_zero():
    seeds = [_seed(0.3, 0.3)] * 3
    ci = {"p99.9_error": [-0.02, 0.5], "emd": [0.1, 0.4]}
    bars = quality_bars(seeds, ci)
    assert not bars["p99.9_error_ge_20pct_lower_with_sw"]
    assert bars["emd_ge_20pct_lower_with_sw"]


@pytest.mark.parametrize(
    ("key", "kw"),
    [
        ("crps_le_0.8x_bicubic_mae_every_seed", {"crps": 0.81}),
        ("spread_skill_in_0.8_1.2_every_seed", {"ss": 1.25}),
        ("spread_skill_in_0.8_1.2_every_seed", {"ss": 0.79}),
        ("psd_high_k_within_0.3_dex_every_seed", {"psd": 0.31}),
    ],
)
def test_every_seed_bars_fail_on_one_seed(key, kw):
    seeds = [_seed(0.3, 0.3), _seed(0.3, 0.3, **kw), _seed(0.3, 0.3)]
    assert not quality_bars(seeds, OK_CI)[key]


def test_paired_reduction_and_median_interval():
    rng = np.random.default_rng(0)
    off = 2.0 + 0.1 * rng.standard_normal(500)
    on = 0.5 * off  # a 50% reduction in every resample
    r = paired_reduction(1.0, 2.0, on, off)
    assert r["reduction"] == pytest.approx(0.5)
    assert r["ci95_reduction"] == pytest.approx([0.5, 0.5])
    assert r["ci_excludes_zero"]
    lo, hi = r["ci95_difference_on_minus_off"]
    assert lo < hi < 0
    # an unresolved seed: the difference straddles zero
    u = paired_reduction(1.9, 2.0, off + 0.2 * rng.standard_normal(500), off)
    assert not u["ci_excludes_zero"]
    # the median's interval is taken over the per-resample medians of the seeds
    recs = []
    for red in (0.1, 0.3, 0.9):
        d = paired_reduction(1 - red, 1.0, (1 - red) * off, off)
        recs.append(
            {
                "crps_ratio": 0.6,
                "spread_skill": 1.0,
                "psd_dex": 0.1,
                "p99.9_error": d,
                "emd": d,
                "mass": {
                    "sw_on": {"mass_error_as_sampled": 1.0, "mass_error_with_mass_consistency": 0}
                },
            }
        )
    s = summarise(recs)
    assert s["medians"]["p99.9_error_reduction_with_sw"] == pytest.approx(0.3)
    assert s["medians"]["p99.9_error_reduction_ci95"] == pytest.approx([0.3, 0.3])
    assert s["bars"]["p99.9_error_ge_20pct_lower_with_sw"]


def test_only_evaluation_keys_are_ignored_when_reusing_a_model():
    from benchmarks.precipitation import _training_part

    cfg = {
        "seed": 1,
        "data": {"size": 64, "n_train": 512, "n_test": 32, "n_val": 64},
        "loss": {"sw_weight": 2.0},
        "train": {"steps": 500},
        "sampling": {"members": 13},
        "evaluate": {"split": "test"},
    }
    more_cases = {**cfg, "data": {**cfg["data"], "n_test": 64}, "evaluate": {"split": "x"}}
    assert _training_part(more_cases) == _training_part(cfg)
    for changed in (
        {**cfg, "seed": 2},
        {**cfg, "data": {**cfg["data"], "n_train": 256}},
        {**cfg, "loss": {"sw_weight": 0.0}},
        {**cfg, "train": {"steps": 400}},
    ):
        assert _training_part(changed) != _training_part(cfg)
    assert cfg["data"]["n_test"] == 32  # the caller's config is not modified
    off = {**cfg, "loss": {"sw_weight": 0.0, "sw_p": 1}}
    assert _training_part(off) == _training_part({**cfg, "loss": {"sw_weight": 0, "sw_p": 2}})
