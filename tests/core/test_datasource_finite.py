"""require_finite: the one check where readers refuse NaN, inf and overflowing values, naming
the file, the variable, how many values of each kind, the first bad index and the way
forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsci.core.datasource import FLOAT32_SAFE_MAX, require_finite


def test_finite_values_pass_unchanged():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    before = a.copy()
    require_finite(a, source="f.h5", variable="u", max_abs=FLOAT32_SAFE_MAX)
    require_finite(np.arange(5), source="f.h5", variable="counts", max_abs=10)
    require_finite(np.zeros((0, 3)), source="f.h5", variable="empty", max_abs=1.0)
    np.testing.assert_array_equal(a, before)


def test_counts_each_kind_and_names_file_variable_and_first_index():
    a = np.zeros((3, 4))
    a[1, 2], a[2, 0], a[2, 3] = np.nan, np.inf, -np.inf
    a[0, 1] = np.nan
    with pytest.raises(ValueError) as e:
        require_finite(a, source="data/train.h5", variable="'tensor'", fix="refill the gaps")
    msg = str(e.value)
    assert msg.startswith("data/train.h5: 'tensor' has 2 NaN, 1 +inf, 1 -inf of 12 values")
    assert "(first at index [0, 1])" in msg and msg.endswith("refill the gaps")


def test_only_inf_is_reported_as_inf_with_a_default_way_forward():
    with pytest.raises(ValueError, match=r"x\.nc: tp has 1 -inf of 3 values .*\[2\]\); fill or"):
        require_finite([0.0, 1.0, -np.inf], source="x.nc", variable="tp")


def test_complex_values_and_torch_tensors():
    with pytest.raises(ValueError, match=r"k\.h5: kspace has 1 inf of 2 values"):
        require_finite(np.array([1 + 1j, complex(np.inf, 0)]), source="k.h5", variable="kspace")
    t = torch.tensor([[0.0, float("nan")]])
    with pytest.raises(ValueError, match=r"ct_test\.h5: y has 1 NaN of 2 values .*\[0, 1\]"):
        require_finite(t, source="ct_test.h5", variable="y")


def test_max_abs_refuses_fill_values_that_overflow_float32_later():
    a = np.ones((2, 3), dtype=np.float64)
    a[1, 1] = 1e30
    require_finite(a, source="f.h5", variable="u")  # finite: allowed without max_abs
    with pytest.raises(ValueError) as e:
        require_finite(a, source="f.h5", variable="u", max_abs=FLOAT32_SAFE_MAX)
    msg = str(e.value)
    assert msg.startswith("f.h5: u has 1 of 6 values of magnitude above 1e+18")
    assert "largest 1e+30, first at index [1, 1]" in msg and "overflow float32" in msg
    assert "mask fill values" in msg
    with pytest.raises(ValueError, match="above 100"):
        require_finite(np.array([-101]), source="f", variable="v", max_abs=100)
