"""Model cards: reading, refusals that name the mismatch, out-of-range warnings."""

from __future__ import annotations

import json

import pytest

from diffsci.core.modelcard import (
    Incompatible,
    new_card,
    read_card,
    require,
    require_names,
    warn_outside,
)


def test_a_model_without_a_card_says_so(tmp_path):
    with pytest.raises(Incompatible, match="no model card .* retrain"):
        read_card(tmp_path / "model.pt", {"state_dict": {}})


def test_the_card_is_read_from_the_payload_or_beside_the_model(tmp_path):
    card = new_card("toy", config={"seed": 0}, data={"source": "simulate"}, serves={"dim": 2})
    assert read_card(tmp_path / "model.pt", {"card": card})["serves"] == {"dim": 2}
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    assert read_card(tmp_path / "model.pt")["domain"] == "toy"


def test_a_newer_card_asks_for_an_upgrade(tmp_path):
    with pytest.raises(Incompatible, match="upgrade diffsci"):
        read_card(tmp_path / "m.pt", {"card": {"card_version": 99}})


def test_require_names_the_value_and_the_fix():
    require("grid", 64, 64, source="f.h5", fix="resample")
    with pytest.raises(Incompatible, match=r"f.h5: grid is 128 but the model serves 64; resample"):
        require("grid", 128, 64, source="f.h5", fix="resample")


def test_require_names_lists_missing_and_extra_names():
    require_names("genes", ["A", "B"], ["A", "B"], source="x.h5ad", fix="select genes")
    with pytest.raises(Incompatible, match=r"\(missing 1: B; not served 1: C\); select genes"):
        require_names("genes", ["A", "C"], ["A", "B"], source="x.h5ad", fix="select genes")
    with pytest.raises(Incompatible, match="another order"):
        require_names("genes", ["B", "A"], ["A", "B"], source="x.h5ad", fix="reorder")


def test_warn_outside_says_by_how_much():
    assert not warn_outside("mean", 0.5, 0.0, 1.0, source="f.nc")
    with pytest.warns(UserWarning, match=r"mean 3 is outside the training range \[0, 1\] by 2.00"):
        assert warn_outside("mean", 3.0, 0.0, 1.0, source="f.nc")
