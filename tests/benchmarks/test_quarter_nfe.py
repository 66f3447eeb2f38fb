"""The 1/4-NFE sampling settings of benchmarks/quarter_nfe.py."""

from __future__ import annotations

import pytest

from benchmarks.quarter_nfe import nfe, quarter
from diffsci.core.samplers import DEFAULT_SAMPLER


def test_quarter_divides_the_steps_and_takes_the_default_solver():
    s = {"steps": 20, "sampler": "euler", "samples": 4, "lam": 1.0}
    q = quarter(s)
    assert q == {"steps": 5, "sampler": DEFAULT_SAMPLER, "samples": 4, "lam": 1.0}
    assert s["steps"] == 20  # the input is not modified
    assert quarter({"steps": 50, "sampler": "ddim"})["steps"] == 12  # at most a quarter
    q = quarter(s, by="samples")
    assert q["samples"] == 1 and q["steps"] == 20 and nfe(q) * 4 == nfe(s)
    with pytest.raises(ValueError, match="less than one"):
        quarter({"steps": 3, "sampler": "euler"})
