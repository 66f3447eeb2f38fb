"""The int8 benchmark's quality comparison: which metrics count and how a change is measured."""

from __future__ import annotations

import math

import pytest
from torch import nn

pytest.importorskip("diffusers")  # the benchmark imports fast_sampling_domains, which needs it

from benchmarks.quantization import headline, with_int8, worst_change  # noqa: E402

TABLES = {
    "case": {
        "diffusion (posterior mean)": {"PSNR median (dB)": 20.0, "SSIM": 0.7},
        "zero-filled": {"PSNR median (dB)": 17.0},
        "diffusion ensemble (13 members)": {"CRPS": 0.5, "MAE": 0.9},
        "bicubic": {"CRPS": 1.0},
        "diffusion (population samples)": {"E-distance (PCA)": 2.7, "R2 top-50 DE": 0.84},
        "mean-shift": {"E-distance (PCA)": 3.1},
    }
}


def test_headline_takes_psnr_entries_or_the_diffusion_rows_relative_metric():
    assert headline("medical", TABLES) == {
        "case | diffusion (posterior mean) | PSNR median (dB)": 20.0,
        "case | zero-filled | PSNR median (dB)": 17.0,
    }
    assert headline("precipitation", TABLES) == {
        "case | diffusion ensemble (13 members) | CRPS": 0.5
    }
    assert headline("singlecell", TABLES) == {
        "case | diffusion (population samples) | E-distance (PCA)": 2.7,
        "case | diffusion (population samples) | R2 top-50 DE": 0.84,
    }


def test_worst_change_is_in_db_for_psnr_and_relative_otherwise():
    psnr = worst_change("medical", {"a": 20.0, "b": 17.0}, {"a": 19.6, "b": 17.1})
    assert math.isclose(psnr["worst"], 0.4, abs_tol=1e-9) and not psnr["within"]
    rel = worst_change("precipitation", {"a": 0.5}, {"a": 0.505})
    assert math.isclose(rel["worst"], 0.01, abs_tol=1e-9) and rel["within"]
    assert not worst_change("pde", {"a": 1.0}, {"a": 1.03})["within"]


def test_with_int8_replaces_the_priors_and_leaves_the_model():
    model = nn.Module()
    model.tissue, model.haze, model.other = nn.Linear(1, 1), nn.Linear(1, 1), nn.Linear(1, 1)
    q = {"ultrasound tissue": nn.Identity(), "ultrasound haze": nn.Identity()}
    m = with_int8("ultrasound", model, q)
    assert m.tissue is q["ultrasound tissue"] and m.haze is q["ultrasound haze"]
    assert m.other is model.other and isinstance(model.tissue, nn.Linear)
    sc = nn.Module()
    sc.perturbation, sc.lineage = nn.Linear(1, 1), nn.Linear(1, 1)
    m = with_int8("singlecell", sc, {"singlecell": nn.Identity()})
    assert isinstance(m.perturbation, nn.Identity) and m.lineage is sc.lineage
    assert isinstance(sc.perturbation, nn.Linear)
