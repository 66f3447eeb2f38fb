"""Test-suite settings shared by every test module."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread per test: pytest-xdist already runs one worker per core, and two
    threads per worker on a 2-core machine makes small tensor ops 10-50x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
