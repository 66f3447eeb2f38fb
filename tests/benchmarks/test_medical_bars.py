"""The medical benchmark's bars from an evaluate-stage table (benchmarks/medical.py)."""

from __future__ import annotations

import pytest

from benchmarks.medical import PSNR_KEY, bar_margins


def _row(psnr: float, **extra: float) -> dict[str, float]:
    return {PSNR_KEY: psnr, **extra}


def test_bar_margins_against_the_stronger_fbp_and_the_2d_table():
    tables = {
        "MRI: 8x equispaced mask": {
            "diffusion (posterior mean)": _row(30.0, kspace_residual_max=2e-6),
            "zero-filled": _row(21.0),
            "POCS-TV": _row(29.5),
        },
        "CT: 8 views, parallel beam": {
            "diffusion (posterior mean)": _row(31.0),
            "FBP": _row(19.0),
            "FBP (clipped to [0, 1])": _row(20.5),
            "TV-iterative": _row(31.5),
        },
        "MRI 3-D volume (8 slices)": {"diffusion (posterior mean)": _row(0.0)},
    }
    got = bar_margins(tables)
    assert got["mri_ge_zero_filled_plus_8dB"] == {"margin_dB": 1.0, "met": True}
    assert got["mri_ge_pocs_tv_plus_1dB"]["margin_dB"] == pytest.approx(-0.5)
    assert not got["mri_ge_pocs_tv_plus_1dB"]["met"]
    assert got["ct_ge_fbp_plus_10dB"]["margin_dB"] == pytest.approx(0.5)  # clipped FBP counts
    assert not got["ct_ge_tv_iterative"]["met"]
    assert got["mri_kspace_residual_le_1e-5"]["met"]
