"""The refactor-equivalence comparison finds any changed number and ignores only timings."""

from __future__ import annotations

from benchmarks.refactor_equivalence import compare


def _payload(results):
    return {"results": results, "git_commit": "abc", "command": "python -m benchmarks.x"}


def test_identical_numbers_and_other_timings_pass():
    a = {"table": {"model": {"nRMSE": 0.1, "seconds per case": 1.0}}, "seconds": {"train": 3}}
    b = {"table": {"model": {"nRMSE": 0.1, "seconds per case": 2.5}}, "seconds": {"train": 9}}
    out = compare(_payload(a), _payload(b))
    assert out["differences"] == {} and out["values_compared"] == 1


def test_a_changed_or_missing_value_is_reported():
    a = {"table": {"model": {"nRMSE": 0.1, "CRPS": 0.2}}, "hist": [1, 2]}
    b = {"table": {"model": {"nRMSE": 0.1000001}}, "hist": [1, 3]}
    out = compare(_payload(a), _payload(b))
    assert set(out["differences"]) == {"/table/model/nRMSE", "/table/model/CRPS", "/hist[1]"}
    assert out["differences"]["/table/model/CRPS"] == [0.2, "<missing>"]
