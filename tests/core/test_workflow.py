from __future__ import annotations

from types import SimpleNamespace

import pytest

from diffsci.core.workflow import signal_lead_check


def test_signal_before_runtime_is_fine_and_absent_signal_ignored():
    assert signal_lead_check(SimpleNamespace(runtime=120, slurm_extra="'--signal=USR1@600'")) == ""
    assert signal_lead_check(SimpleNamespace(runtime=5, slurm_extra="--qos=long")) == ""
    assert signal_lead_check(SimpleNamespace(runtime=5)) == ""


@pytest.mark.parametrize(
    "extra", ["'--signal=USR1@600'", "--signal=B:USR1@600", "--signal USR1@900 --qos=x"]
)
def test_signal_at_or_before_start_is_refused_naming_both(extra):
    with pytest.raises(ValueError, match=r"rule train: runtime=10 min .*--signal"):
        signal_lead_check(SimpleNamespace(runtime=10, slurm_extra=extra))


def test_default_signal_time_is_60_s():
    with pytest.raises(ValueError, match="60 s"):
        signal_lead_check(SimpleNamespace(runtime=1, slurm_extra="--signal=USR1"))
    assert signal_lead_check(SimpleNamespace(runtime=2, slurm_extra="--signal=USR1")) == ""
