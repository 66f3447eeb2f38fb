"""Which classical rows the hyperspectral bars compare with (benchmarks/hyperspectral.py)."""

from __future__ import annotations

from benchmarks.hyperspectral import OURS, _best, _gaussian_bar
from diffsci.domains.hyperspectral.baselines import BASELINES, BM4D, PRIOR_RANK


def _rows(**mpsnr_sam):
    return {m: {"MPSNR": p, "SAM (rad)": s} for m, (p, s) in mpsnr_sam.items()}


def test_best_classical_counts_bm4d_only_where_the_run_had_it():
    base = {m: (20.0, 0.3) for m in BASELINES}
    rows = _rows(**base, **{PRIOR_RANK: (25.0, 0.15), OURS: (28.0, 0.14)})
    assert _best(rows) == PRIOR_RANK
    rows.update(_rows(**{BM4D: (25.5, 0.2)}))
    assert _best(rows) == BM4D
    bar = _gaussian_bar(rows)
    assert bar["best classical"] == BM4D and bar["met"] is True  # 2.5 dB, SAM 0.7x of BM4D's
    # the margin against every classical row is on record (here: SAM 0.93x the LRTV-like row's)
    assert (
        abs(bar["against each classical baseline"][PRIOR_RANK]["SAM ratio"] - 0.14 / 0.15) < 1e-12
    )


def test_a_skipped_bar_is_carried_over_stamped_with_its_record(tmp_path, monkeypatch):
    import json

    import benchmarks._common as common
    from benchmarks.hyperspectral import TRANSFER_KEY, _carried_over

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    assert _carried_over(TRANSFER_KEY, "--skip-transfer")["met"] is None  # no record
    rec = {
        "command": "python -m benchmarks.hyperspectral",
        "git_commit": "abc",
        "date": "d",
        "results": {"bar details": {TRANSFER_KEY: {"difference (dB)": -0.2, "met": True}}},
    }
    (tmp_path / "hyperspectral.json").write_text(json.dumps(rec))
    got = _carried_over(TRANSFER_KEY, "--skip-transfer")
    assert got["met"] is True and got["difference (dB)"] == -0.2
    assert got["carried over from"]["git_commit"] == "abc"
