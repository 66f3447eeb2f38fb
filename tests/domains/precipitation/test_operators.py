"""The coarse-graining operator: the registry's operator passes the adjoint test and is the
block mean the pipeline applies to numpy arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsci.core.operators import check_adjoint
from diffsci.domains.precipitation.operators import (
    OPERATORS,
    block_mean,
    coarse_graining,
    upsample_nearest,
)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_registry_operators_pass_the_adjoint_test(name):
    case = OPERATORS[name]()
    assert check_adjoint(case.op, case.x_shape, dtype=case.dtype, rtol=case.rtol) <= case.rtol


def test_numpy_block_mean_is_the_operator():
    x = np.random.default_rng(0).random((2, 1, 16, 24))
    op = coarse_graining(8)
    np.testing.assert_allclose(block_mean(x, 8), op(torch.from_numpy(x)).numpy(), rtol=1e-12)
    c = np.random.default_rng(1).random((2, 1, 2, 3))
    np.testing.assert_allclose(
        upsample_nearest(c, 8), 64 * op.adjoint(torch.from_numpy(c)).numpy(), rtol=1e-12
    )
